import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/**
 * How long the server must have had no request open before it collects garbage. V8 sizes the
 * heap for throughput (bin/stowage.js starts it with a 32 MiB initial old space), so what a burst
 * of pulls left behind would otherwise stay resident while the process sits idle: 20-30 MiB
 * after a few dozen blobs. One full collection of a heap this size takes ~10 ms.
 */
export const IDLE_GC_MS = 5_000;

let collect: (() => void) | null | undefined;

/**
 * V8's full collection, or null where it cannot be had (V8 refused the flag). Its memory-reducing
 * form (`flavor: "last-resort"`) was tried: no lower at rest, and the cold 1 GiB GET after it
 * peaked ~15 MiB higher (bench pairs).
 */
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
 * How soon after a worker thread stopped the server collects, if no request is open then. A thread
 * stops after its pool had nothing for it for a while, so the server is quiet already; what the
 * main thread held for it (its ports, their buffers) is garbage from the moment it is gone.
 */
export const AFTER_THREAD_MS = 500;

/**
 * Counts the requests in progress; once none has been open for `quietMs`, collects garbage,
 * once per quiet spell. The timer never keeps the process alive.
 */
export class IdleCollector {
  private open = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Collections done (the tests read it). */
  collections = 0;

  constructor(
    private readonly quietMs = IDLE_GC_MS,
    private readonly gc: (() => void) | null = fullGc(),
    private readonly afterThreadMs = AFTER_THREAD_MS,
  ) {}

  begin(): void {
    this.open++;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  end(): void {
    this.open = Math.max(0, this.open - 1);
    if (this.open === 0 && !this.timer) this.schedule(this.quietMs);
  }

  /** A worker thread stopped: collect soon if no request is open (else the last one's end() will). */
  threadStopped(): void {
    if (this.open > 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.schedule(this.afterThreadMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(ms: number): void {
    if (!this.gc) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.open > 0) return;
      this.gc?.();
      this.collections++;
    }, ms);
    this.timer.unref();
  }
}

/** The one collector for every listener and worker of this process (a metrics scrape must not count as quiet for blobs). */
let processIdle: IdleCollector | undefined;
export const processIdleCollector = (): IdleCollector => (processIdle ??= new IdleCollector());
