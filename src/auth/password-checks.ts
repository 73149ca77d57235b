/**
 * bcrypt comparisons, bounded: a few at once (in a worker thread where the runtime has them), a
 * short queue behind them, and an immediate refusal when the queue is full. bcrypt costs tens of
 * milliseconds by design; on the event loop, a burst of failed logins held up every request.
 */
import bcrypt from "bcryptjs";
import type { Logger } from "../log.ts";
import type { WorkerName, WorkerPort } from "../runtime/runtime.ts";
import { rejectAfter, sleep } from "../util/deadline.ts";

export type SpawnWorker = (name: WorkerName) => WorkerPort;

/** The queue of password checks is full: answer 429 now rather than wait without end. */
export class PasswordChecksBusy extends Error {
  override name = "PasswordChecksBusy";
}

type Compare = (secret: string, hash: string) => Promise<boolean>;

/**
 * One worker: a second one would let an attack take both cores of a small machine, leaving none
 * for serving. With bcrypt cost 10 that is still ~15 fresh checks a second, and successful checks
 * are remembered (IdentityStore), so clients signing in on every request do not pay again.
 */
export const PASSWORD_WORKERS = 1;
/** Checks waiting for a worker; beyond this, 429 at once (a full queue waits ~2 s at cost 10). */
export const PASSWORD_QUEUE = 32;

// A bcrypt hash of "stowage" at the lowest cost, for the worker's self-test.
const PROBE_HASH = "$2b$04$8oHxhFV6IQmG9MAVhtoMzupwcX.iSS2cJsnLStb7hJKcIerXXwH0e";

/** What a bcrypt check at cost 10 takes here, until real checks have been timed. */
const FIRST_ESTIMATE_MS = 60;

export class PasswordChecks {
  #running = 0;
  readonly #waiting: Array<() => void> = [];
  /** How long a real check takes (moving average), so that a pretended one takes as long. */
  #typicalMs = FIRST_ESTIMATE_MS;

  constructor(
    private readonly run: Compare,
    readonly mode: "worker" | "inline",
    readonly concurrency: number,
    readonly maxQueue: number,
    private readonly stop: () => Promise<void> = async () => {},
  ) {}

  /** On the main thread, one at a time: for in-process use and platforms without threads (Deno Deploy). */
  static inline(maxQueue = PASSWORD_QUEUE): PasswordChecks {
    // bcryptjs's async compare yields every 100 ms; one at a time keeps every other request's wait
    // to one such slice instead of one per concurrent login.
    return new PasswordChecks((secret, hash) => bcrypt.compare(secret, hash), "inline", 1, maxQueue);
  }

  /** Checks in worker threads; throws if a worker does not start and pass its self-test. */
  static async workers(spawn: SpawnWorker, count = PASSWORD_WORKERS, maxQueue = PASSWORD_QUEUE): Promise<PasswordChecks> {
    const workers = await Promise.all(Array.from({ length: count }, () => PasswordWorker.start(spawn)));
    let next = 0;
    const run: Compare = async (secret, hash) => {
      const i = next++ % workers.length;
      let worker = workers[i]!;
      if (worker.broken) {
        // A worker that died (out of memory, killed) is replaced; until one runs, check inline.
        try {
          worker = workers[i] = await PasswordWorker.start(spawn);
        } catch {
          return bcrypt.compare(secret, hash);
        }
      }
      return worker.compare(secret, hash);
    };
    return new PasswordChecks(run, "worker", count, maxQueue, async () => {
      await Promise.all(workers.map((w) => w.terminate()));
    });
  }

  /** Checks started or waiting. */
  get pending(): number {
    return this.#running + this.#waiting.length;
  }

  /** Whether `secret` matches the bcrypt `hash`; throws PasswordChecksBusy when the queue is full. */
  compare(secret: string, hash: string): Promise<boolean> {
    return this.#inSlot(async () => {
      const started = performance.now();
      const ok = await this.run(secret, hash);
      this.#typicalMs = 0.8 * this.#typicalMs + 0.2 * (performance.now() - started);
      return ok;
    });
  }

  /**
   * A failed check for a name nobody has: it waits in the same queue and holds a slot as long as
   * a real check takes, so neither timing nor the queue tells unknown names from known ones, but
   * it costs no CPU. A flood of made-up names (the usual guessing) then cannot load the machine.
   */
  pretend(): Promise<false> {
    return this.#inSlot(async () => {
      await sleep(this.#typicalMs);
      return false as const;
    });
  }

  async #inSlot<T>(work: () => Promise<T>): Promise<T> {
    if (this.#running < this.concurrency) this.#running++;
    else {
      if (this.#waiting.length >= this.maxQueue) throw new PasswordChecksBusy("too many password checks are waiting");
      // The slot is handed over by the check that finishes (#running stays the same).
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }

  close(): Promise<void> {
    return this.stop();
  }
}

type Outbound = { op: "ready" } | { op: "init-failed"; message: string } | { op: "result"; id: number; ok: boolean } | { op: "error"; id: number; message: string };

class PasswordWorker {
  #nextId = 1;
  readonly #pending = new Map<number, { resolve(ok: boolean): void; reject(err: Error): void }>();
  broken: Error | null = null;

  private constructor(private readonly port: WorkerPort) {}

  static async start(spawn: SpawnWorker): Promise<PasswordWorker> {
    const port = spawn("password-worker");
    const worker = new PasswordWorker(port);
    try {
      await rejectAfter(
        new Promise<void>((resolve, reject) => {
          port.onMessage((data) => {
            const msg = data as Outbound;
            if (msg.op === "ready") resolve();
            else if (msg.op === "init-failed") reject(new Error(`the password worker cannot load bcryptjs: ${msg.message}`));
            else worker.#settle(msg);
          });
          port.onFailure((err) => {
            worker.#fail(err);
            reject(err);
          });
          // Resolved here, where the package resolution of this process applies (see the worker).
          port.post({ op: "init", bcrypt: import.meta.resolve("bcryptjs") });
        }),
        10_000,
        () => new Error("the password worker did not start within 10 s"),
      );
      if (!(await worker.compare("stowage", PROBE_HASH))) throw new Error("the password worker failed its self-test");
      return worker;
    } catch (err) {
      await port.terminate();
      throw err;
    }
  }

  compare(secret: string, hash: string): Promise<boolean> {
    if (this.broken) return Promise.reject(this.broken);
    const id = this.#nextId++;
    return new Promise<boolean>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.port.post({ op: "compare", id, secret, hash });
    });
  }

  #settle(msg: Outbound): void {
    if (msg.op !== "result" && msg.op !== "error") return;
    const waiter = this.#pending.get(msg.id);
    if (!waiter) return;
    this.#pending.delete(msg.id);
    if (msg.op === "result") waiter.resolve(msg.ok);
    else waiter.reject(new Error(`password check failed: ${msg.message}`));
  }

  #fail(err: Error): void {
    this.broken = new Error(`the password worker failed: ${err.message}`);
    for (const waiter of this.#pending.values()) waiter.reject(this.broken);
    this.#pending.clear();
  }

  terminate(): Promise<void> {
    this.broken ??= new Error("the password worker was stopped");
    return this.port.terminate();
  }
}

/** Worker threads where the runtime has them, else inline; says which in the log. */
export async function startPasswordChecks(spawn: SpawnWorker | null, log: Logger): Promise<PasswordChecks> {
  if (!spawn) {
    log.info("worker threads are not available on this platform (as on Deno Deploy); password checks run on the main thread, one at a time");
    return PasswordChecks.inline();
  }
  try {
    return await PasswordChecks.workers(spawn);
  } catch (err) {
    log.warn("could not start the password worker thread; password checks run on the main thread, one at a time", { error: err });
    return PasswordChecks.inline();
  }
}
