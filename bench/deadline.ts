// Deadlines for the benchmark, so that it never hangs: every scenario runs in a Scope with an
// overall deadline. Whatever the scenario starts (peers, counters, proxies, RGW) registers its
// stop with the scope; when the deadline passes the scope is aborted, everything registered is
// stopped (each stop with a deadline of its own), and the scenario is reported as timed out while
// the rest of the bench goes on. The scope's signal also ends the bench's own HTTP and S3 calls.

/** Per-call deadlines for the bench's own requests (the scenario deadline covers the rest). */
export const CALL_TIMEOUT_MS = { small: 30_000, s3: 20_000 };

export class TimeoutError extends Error {}

const STOP_TIMEOUT_MS = 20_000;

export class Scope {
  private readonly controller = new AbortController();
  private readonly stops: Array<{ what: string; stop: () => Promise<void> }> = [];
  private closed = false;

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** A signal that fires at `ms` or when the scope is aborted, whichever comes first. */
  deadline(ms: number): AbortSignal {
    return AbortSignal.any([this.signal, AbortSignal.timeout(ms)]);
  }

  /** Registers a stop to run when the scope ends (normally or by its deadline); run once at most. */
  defer(what: string, stop: () => Promise<void>): () => Promise<void> {
    let done: Promise<void> | undefined;
    const once = () => (done ??= stop());
    // Started after the deadline by work still unwinding: stopped at once, never left running.
    if (this.closed) void once().catch(() => {});
    else this.stops.push({ what, stop: once });
    return once;
  }

  /** Throws if the scope has ended: nothing new may start after the deadline. */
  check(): void {
    if (this.signal.aborted || this.closed) throw this.signal.reason ?? new TimeoutError("the scenario has ended");
  }

  abort(reason: string): void {
    if (!this.signal.aborted) this.controller.abort(new TimeoutError(reason));
  }

  /** Runs every registered stop, newest first; a stop that fails or hangs is noted, not thrown. */
  async close(): Promise<string[]> {
    this.closed = true;
    const problems: string[] = [];
    for (const { what, stop } of this.stops.reverse()) {
      const err = await withTimeout(stop(), STOP_TIMEOUT_MS, `stopping ${what}`).then(() => null, (e: unknown) => e);
      if (err) problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.stops.length = 0;
    return problems;
  }
}

/** `p`, or a TimeoutError after `ms` (p keeps running; its late failure is swallowed). */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no result after ${(ms / 1000).toFixed(0)} s`)), ms);
  });
  p.catch(() => {});
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

export type Outcome<T> = { status: "ok"; value: T; seconds: number } | { status: "failed" | "timed out"; error: string; seconds: number };

const message = (err: unknown) => (err instanceof Error ? err.message : String(err)).split("\n").slice(0, 6).join(" / ");

/**
 * Runs one scenario with an overall deadline. On the deadline the scope is aborted and closed
 * (peers and other processes stopped) before this returns; a failure is a result, never a throw.
 */
export async function runScenario<T>(what: string, ms: number, fn: (scope: Scope) => Promise<T>): Promise<Outcome<T>> {
  const scope = new Scope();
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  try {
    const value = await withTimeout(fn(scope), ms, "the scenario");
    return { status: "ok", value, seconds: seconds() };
  } catch (err) {
    const timedOut = err instanceof TimeoutError;
    if (timedOut) scope.abort(`${what}: deadline of ${(ms / 1000).toFixed(0)} s passed`);
    return { status: timedOut ? "timed out" : "failed", error: message(err), seconds: seconds() };
  } finally {
    const problems = await scope.close();
    for (const p of problems) console.error(`[bench] while stopping after "${what}": ${p}`);
  }
}
