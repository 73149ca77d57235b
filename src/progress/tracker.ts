/** The bookkeeping both displays share: what each item came to, and its rate. */
import type { ItemRecord } from "./types.ts";

export interface ProgressSummary {
  items: ItemRecord[];
  done: number;
  failed: number;
  /** Items neither done nor failed when finish() was called (an interrupted run). */
  unfinished: number;
  bytes: number;
  ms: number;
}

/**
 * The bookkeeping both displays share: item records in start order, and a rate over the last
 * few seconds (a whole-run average would hide a stall).
 */
export class ItemTracker {
  readonly record: ItemRecord;
  private samples: Array<{ at: number; bytes: number }> = [];

  constructor(
    label: string,
    total: number | null,
    private readonly now: () => number,
  ) {
    const at = now();
    this.record = { label, status: "running", bytes: 0, total, startedAt: at, endedAt: null, note: undefined };
    this.samples.push({ at, bytes: 0 });
  }

  get running(): boolean {
    return this.record.status === "running";
  }

  add(bytes: number): void {
    if (!this.running || !(bytes > 0)) return;
    this.record.bytes += bytes;
    const at = this.now();
    const last = this.samples[this.samples.length - 1];
    // One sample per 250 ms is plenty for a rate and keeps the list short.
    if (last && at - last.at < 250) return;
    this.samples.push({ at, bytes: this.record.bytes });
    while (this.samples.length > 2 && at - (this.samples[1]?.at ?? at) >= RATE_WINDOW_MS) this.samples.shift();
  }

  setTotal(bytes: number): void {
    if (this.running && bytes >= 0) this.record.total = bytes;
  }

  end(status: "done" | "failed", note: string | undefined): boolean {
    if (!this.running) return false;
    this.record.status = status;
    this.record.endedAt = this.now();
    this.record.note = note;
    return true;
  }

  elapsedMs(): number {
    return (this.record.endedAt ?? this.now()) - this.record.startedAt;
  }

  /** Bytes a second over the last few seconds; null before there is anything to go on. */
  rate(): number | null {
    if (!this.running) {
      const ms = this.elapsedMs();
      return ms > 0 ? (this.record.bytes * 1000) / ms : null;
    }
    const first = this.samples[0];
    const at = this.now();
    if (!first || at - first.at < 200) return null;
    return ((this.record.bytes - first.bytes) * 1000) / (at - first.at);
  }

  /** Milliseconds left at the current rate; null when the total or the rate is unknown. */
  etaMs(): number | null {
    const { total, bytes } = this.record;
    const rate = this.rate();
    if (total === null || rate === null || rate <= 0) return null;
    return (Math.max(0, total - bytes) * 1000) / rate;
  }
}

const RATE_WINDOW_MS = 5_000;

export function summarize(items: ItemRecord[], startedAt: number, now: number): ProgressSummary {
  return {
    items,
    done: items.filter((i) => i.status === "done").length,
    failed: items.filter((i) => i.status === "failed").length,
    unfinished: items.filter((i) => i.status === "running").length,
    bytes: items.reduce((n, i) => n + i.bytes, 0),
    ms: now - startedAt,
  };
}
