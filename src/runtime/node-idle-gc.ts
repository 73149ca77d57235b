import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/**
 * How long the server must have had no request open before it collects garbage. V8 sizes the
 * heap for throughput (bin/stowage.js starts it with a 64 MiB initial old space), so what a burst
 * of pulls left behind would otherwise stay resident while the process sits idle: 20-30 MiB
 * after a few dozen blobs. One full collection of a heap this size takes ~10 ms.
 */
export const IDLE_GC_MS = 5_000;

let collect: (() => void) | null | undefined;

/** V8's full collection, or null where it cannot be had (V8 refused the flag). */
function fullGc(): (() => void) | null {
  if (collect !== undefined) return collect;
  try {
    // Without --expose-gc on the command line: the flag set now exposes gc() to contexts made after it.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as unknown;
    collect = typeof gc === "function" ? (gc as () => void) : null;
  } catch {
    collect = null;
  }
  return collect;
}

/**
 * Counts the requests in progress; once none has been open for `quietMs`, collects garbage,
 * once per quiet spell. The timer never keeps the process alive.
 */
export class IdleCollector {
  private open = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Collections done (the tests read it). */
  collections = 0;

  constructor(private readonly quietMs = IDLE_GC_MS, private readonly gc: (() => void) | null = fullGc()) {}

  begin(): void {
    this.open++;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  end(): void {
    this.open = Math.max(0, this.open - 1);
    if (this.open > 0 || this.timer || !this.gc) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.open > 0) return;
      this.gc?.();
      this.collections++;
    }, this.quietMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
