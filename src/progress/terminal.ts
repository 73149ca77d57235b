/**
 * Progress on a terminal: a live bar per running item (cli-progress redraws them at most 10
 * times a second), a line above the bars as each item ends, and a summary table at finish.
 */
import cliProgress from "cli-progress";
import { fitLeft, formatBytes, formatDuration, textTable } from "./format.ts";
import type { Progress, ProgressItem, ProgressOptions } from "./types.ts";
import { ItemTracker, summarize } from "./tracker.ts";

export function createTerminalProgress(options: ProgressOptions): Progress {
  const now = options.now ?? Date.now;
  const columns = Math.max(40, options.columns ?? 80);
  const startedAt = now();
  const trackers: ItemTracker[] = [];
  let finished = false;

  // cli-progress writes to a stream; this one hands every write to the writer we were given
  // (and says it is a terminal, so cursor movement is used).
  const stream = {
    isTTY: true,
    columns,
    write(text: string) {
      options.write(text);
      return true;
    },
  };
  const bars = new cliProgress.MultiBar({
    stream: stream as unknown as NodeJS.WritableStream,
    fps: 10,
    clearOnComplete: true,
    // Neither hides the cursor nor turns off line wrapping: an interrupted run must not leave the
    // terminal changed (our lines are cut to the width instead).
    hideCursor: false,
    linewrap: true,
    gracefulExit: false,
    format: (_opts: unknown, _params: unknown, payload: { tracker: ItemTracker }) => barLine(payload.tracker, columns),
  });

  // The redraw timer must not keep the process alive if a caller fails before finish().
  bars.on("update-post", () => {
    const timer = (bars as unknown as { timer?: unknown }).timer;
    if (timer && typeof timer === "object" && "unref" in timer && typeof timer.unref === "function") timer.unref();
  });

  return {
    item(label: string, totalBytes: number | null): ProgressItem {
      const tracker = new ItemTracker(label, totalBytes, now);
      trackers.push(tracker);
      const bar = finished ? null : bars.create(totalBytes ?? 0, 0, { tracker });
      const end = (line: string) => {
        if (!bar || finished) return;
        bars.log(line);
        bars.remove(bar);
      };
      return {
        add: (bytes) => tracker.add(bytes),
        setTotal: (bytes) => tracker.setTotal(bytes),
        done(note) {
          if (!tracker.end("done", note)) return;
          const r = tracker.record;
          end(`✓ ${label}  ${formatBytes(r.bytes)} in ${formatDuration(tracker.elapsedMs())}${note ? `  ${note}` : ""}\n`);
        },
        fail(reason) {
          if (tracker.end("failed", reason)) end(`✗ ${label}  ${reason}\n`);
        },
      };
    },

    finish() {
      if (finished) return;
      finished = true;
      bars.stop();
      const s = summarize(
        trackers.map((t) => t.record),
        startedAt,
        now(),
      );
      if (s.items.length === 0) return;
      const rows = trackers.map((t) => {
        const r = t.record;
        const status = r.status === "running" ? "unfinished" : r.status;
        const size = r.total !== null && r.status !== "done" ? `${formatBytes(r.bytes)}/${formatBytes(r.total)}` : formatBytes(r.bytes);
        return [r.label, status, size, formatDuration(t.elapsedMs()), r.note ?? ""];
      });
      const counts = [`${s.done} done`, `${s.failed} failed`, ...(s.unfinished > 0 ? [`${s.unfinished} unfinished`] : [])];
      options.write(
        "\n" +
          textTable(["ITEM", "STATUS", "SIZE", "TIME", "NOTE"], rows) +
          `\n${counts.join(", ")}; ${formatBytes(s.bytes)} in ${formatDuration(s.ms)}\n`,
      );
    },
  };
}

/** label [=====-----] 12.1 MB/40.0 MB  3.2 MB/s  ETA 9s */
function barLine(tracker: ItemTracker, columns: number): string {
  const r = tracker.record;
  const rate = tracker.rate();
  const eta = tracker.etaMs();
  const size = r.total !== null ? `${formatBytes(r.bytes)}/${formatBytes(r.total)}` : formatBytes(r.bytes);
  const tail = `  ${size.padStart(17)}  ${(rate === null ? "" : `${formatBytes(rate)}/s`).padStart(10)}  ETA ${eta === null ? "?" : formatDuration(eta)}`;
  const labelWidth = Math.min(40, Math.floor(columns / 3));
  const barWidth = Math.max(0, columns - labelWidth - tail.length - 4);
  let bar = "";
  if (barWidth >= 5) {
    const filled = r.total ? Math.min(barWidth, Math.floor((r.bytes / r.total) * barWidth)) : 0;
    bar = r.total === null ? ` [${"·".repeat(barWidth)}]` : ` [${"=".repeat(filled)}${"-".repeat(barWidth - filled)}]`;
  }
  return `${fitLeft(r.label, labelWidth)}${bar}${tail}`.slice(0, columns - 1);
}
