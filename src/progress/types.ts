/** What progress reporting looks like to its callers and to its two displays. */
export interface Progress {
  /** Starts an item; `totalBytes` null when the size is not known yet. */
  item(label: string, totalBytes: number | null): ProgressItem;
  /** Stops redrawing and writes the summary. Items still running are reported as unfinished. */
  finish(): void;
}

export interface ProgressItem {
  add(bytes: number): void;
  setTotal(bytes: number): void;
  /** The item succeeded; `note` says anything worth knowing (e.g. "1.2 GB already cached"). */
  done(note?: string): void;
  /** The item failed; `reason` in the operator's words. */
  fail(reason: string): void;
}

export interface ProgressOptions {
  /** true when the writer is a terminal: live bars; false: JSON lines. */
  interactive: boolean;
  write: (text: string) => void;
  /** Terminal width; 80 when not given. */
  columns?: number;
  /** Clock in ms, for tests. */
  now?: () => number;
}

export type ItemStatus = "running" | "done" | "failed";

/** What one item came to, as the summary reports it. */
export interface ItemRecord {
  label: string;
  status: ItemStatus;
  bytes: number;
  total: number | null;
  startedAt: number;
  endedAt: number | null;
  /** done: the note; failed: the reason. */
  note: string | undefined;
}
