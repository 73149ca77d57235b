/**
 * Progress as JSON lines for a log collector: `progress` at most every 2 s per item while
 * bytes flow, then `done` or `failed` once per item, and `summary` at the end.
 */
import type { Progress, ProgressItem, ProgressOptions } from "./types.ts";
import { ItemTracker, summarize } from "./tracker.ts";

const PROGRESS_EVERY_MS = 2_000;

export function createJsonLinesProgress(options: ProgressOptions): Progress {
  const now = options.now ?? Date.now;
  const startedAt = now();
  const trackers: ItemTracker[] = [];
  let finished = false;
  const emit = (event: string, fields: Record<string, unknown>) => {
    options.write(JSON.stringify({ time: new Date(now()).toISOString(), event, ...fields }) + "\n");
  };

  return {
    item(label: string, totalBytes: number | null): ProgressItem {
      const tracker = new ItemTracker(label, totalBytes, now);
      trackers.push(tracker);
      let lastEmit = tracker.record.startedAt;
      const figures = () => {
        const r = tracker.record;
        const rate = tracker.rate();
        return {
          item: r.label,
          bytes: r.bytes,
          total: r.total,
          ms: tracker.elapsedMs(),
          ...(rate === null ? {} : { bytesPerSecond: Math.round(rate) }),
        };
      };
      return {
        add(bytes) {
          tracker.add(bytes);
          const at = now();
          if (tracker.running && !finished && at - lastEmit >= PROGRESS_EVERY_MS) {
            lastEmit = at;
            const eta = tracker.etaMs();
            emit("progress", { ...figures(), ...(eta === null ? {} : { etaMs: Math.round(eta) }) });
          }
        },
        setTotal: (bytes) => tracker.setTotal(bytes),
        done(note) {
          if (tracker.end("done", note)) emit("done", { ...figures(), ...(note ? { note } : {}) });
        },
        fail(reason) {
          if (tracker.end("failed", reason)) emit("failed", { ...figures(), reason });
        },
      };
    },

    finish() {
      if (finished) return;
      finished = true;
      const s = summarize(
        trackers.map((t) => t.record),
        startedAt,
        now(),
      );
      emit("summary", {
        items: s.items.length,
        done: s.done,
        failed: s.failed,
        unfinished: s.unfinished,
        bytes: s.bytes,
        ms: s.ms,
        failures: s.items.filter((i) => i.status === "failed").map((i) => ({ item: i.label, reason: i.note })),
      });
    },
  };
}
