import { createHash } from "node:crypto";
import type { WorkerName, WorkerPort } from "../runtime/runtime.ts";
import type { DigestAlgorithm } from "../registry/reference.ts";
import { InlineHasherFactory, type Hasher, type HasherFactory } from "./hasher.ts";
import { BATCH_BYTES, BufferFiller, BufferPool } from "../util/buffers.ts";
import { rejectAfter } from "../util/deadline.ts";

/**
 * Bytes one hasher may have posted but not yet hashed before `update` waits. Four batches keep a
 * worker busy (it hashes one in about a millisecond) while capping what sits in its queue.
 */
const BACKLOG_BYTES = 4 * 1024 * 1024;

/**
 * A hasher reading a file tells its worker how far the file is written once this much more is
 * (and at the end): a message per step rather than per write, and the worker reads big pieces.
 */
const FILE_NOTICE_BYTES = 4 * 1024 * 1024;

/**
 * A worker thread with no blob to hash for this long is stopped: each costs ~7 MiB of memory,
 * and starting one again for the next blob takes a few tens of milliseconds.
 */
const IDLE_STOP_MS = 10_000;

type Outbound = { op: "ack"; id: number; bytes: number; buffer?: ArrayBuffer } | { op: "digest"; id: number; hex: string | null; error?: string };

/**
 * Batch buffers handed back by the workers, reused instead of allocating (and faulting in) fresh
 * ones: enough for about two blobs hashed at once, no more. Dropped whenever a thread stops for
 * want of work, so that an idle process holds none (up to 8 MiB otherwise).
 */
const spareBatches = new BufferPool(BATCH_BYTES, 8);

type Job = {
  backlog: number;
  /** Everyone waiting for the backlog to shrink (several updates may wait at once). */
  drained: Array<() => void>;
  result: { resolve(hex: string): void; reject(err: Error): void } | null;
  failed: Error | null;
};

type PoolOptions = {
  /** How long a thread with nothing to hash is kept; default IDLE_STOP_MS. */
  idleStopMs?: number;
};

/** One worker thread's place in the pool: the thread runs while it has blobs to hash, and a while after. */
class DigestWorker {
  readonly jobs = new Map<number, Job>();
  private port: WorkerPort | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  constructor(
    private readonly spawn: () => WorkerPort,
    private readonly idleStopMs: number,
  ) {}

  get load(): number {
    let bytes = 0;
    for (const job of this.jobs.values()) bytes += job.backlog;
    return bytes + this.jobs.size;
  }

  /** Whether a thread runs now (the operator page and the tests; idle ones are stopped). */
  get running(): boolean {
    return this.port !== null;
  }

  post(message: unknown, transfer?: ArrayBuffer[]): void {
    if (this.closed) throw new Error("the digest workers are closed");
    this.live().post(message, transfer);
  }

  /** The running thread, started if there is none (messages wait in the port until it is up). */
  private live(): WorkerPort {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.port) return this.port;
    const port = this.spawn();
    // A stopped thread's exit, or a late message from it, concerns no job of the next one.
    port.onMessage((msg) => this.port === port && this.onMessage(msg as Outbound));
    port.onFailure((err) => this.port === port && this.fail(new Error(`digest worker failed: ${err.message}`)));
    this.port = port;
    return port;
  }

  /** A job is over (done, failed or discarded): once none is left, stop the thread after a while. */
  drop(id: number): boolean {
    const had = this.jobs.delete(id);
    if (this.jobs.size === 0 && this.port && !this.idleTimer && !this.closed) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = null;
        if (this.jobs.size > 0 || !this.port) return;
        const port = this.port;
        this.port = null;
        void port.terminate();
        spareBatches.clear();
      }, this.idleStopMs);
      // An idle pool never keeps the process alive.
      (this.idleTimer as { unref?: () => void }).unref?.();
    }
    return had;
  }

  private onMessage(msg: Outbound): void {
    const job = this.jobs.get(msg.id);
    if (!job) return;
    if (msg.op === "ack") {
      if (msg.buffer) spareBatches.give(msg.buffer);
      job.backlog -= msg.bytes;
      if (job.backlog <= BACKLOG_BYTES && job.drained.length > 0) {
        const waiting = job.drained;
        job.drained = [];
        for (const wake of waiting) wake();
      }
    } else {
      this.drop(msg.id);
      if (msg.hex) job.result?.resolve(msg.hex);
      else job.result?.reject(new Error(msg.error ? `digest worker could not hash the blob: ${msg.error}` : "digest worker lost the job"));
    }
  }

  /** The thread died: its jobs fail; the next blob starts a new thread. */
  private fail(err: Error): void {
    this.port = null;
    for (const job of this.jobs.values()) {
      job.failed = err;
      for (const wake of job.drained) wake();
      job.drained = [];
      job.result?.reject(err);
    }
    this.jobs.clear();
  }

  async terminate(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const port = this.port;
    this.port = null;
    await port?.terminate();
  }
}

/**
 * sha256/sha512 in worker threads (workers/digest-worker.ts). Each blob's
 * hash runs on one worker; blobs are spread over the least loaded worker.
 * Threads run only while there are blobs to hash (and IDLE_STOP_MS after),
 * so an idle server holds none.
 */
export class WorkerHasherFactory implements HasherFactory {
  private nextId = 1;
  /** Set when the self-test failed: workers cannot run here, and blobs are hashed inline instead. */
  private fallback: InlineHasherFactory | null = null;

  private constructor(private readonly workers: DigestWorker[]) {}

  get mode(): "worker" | "inline" {
    return this.fallback ? "inline" : "worker";
  }

  /** Read at each create (blob-fetch.ts), so a fallback to inline hashing also stops reading files. */
  get readsFiles(): boolean {
    return this.fallback === null;
  }

  /** Threads running now (idle ones are stopped). */
  get running(): number {
    return this.workers.filter((w) => w.running).length;
  }

  /** Up to `count` threads, after a self-test proving one runs; throws if workers cannot run here. */
  static async start(count: number, spawn: (name: WorkerName) => WorkerPort, opts: PoolOptions = {}): Promise<WorkerHasherFactory> {
    const factory = WorkerHasherFactory.open(count, spawn, undefined, opts);
    await factory.selfTest();
    return factory;
  }

  /**
   * Up to `count` threads, answering at once: the self-test runs meanwhile (start-up need not
   * wait for a thread), and should it fail, `onUnavailable` hears why and blobs are hashed inline.
   */
  static open(count: number, spawn: (name: WorkerName) => WorkerPort, onUnavailable?: (err: Error) => void, opts: PoolOptions = {}): WorkerHasherFactory {
    const idleStopMs = opts.idleStopMs ?? IDLE_STOP_MS;
    const factory = new WorkerHasherFactory(Array.from({ length: count }, () => new DigestWorker(() => spawn("digest-worker"), idleStopMs)));
    if (onUnavailable) {
      factory.selfTest().catch((err: unknown) => {
        factory.fallback = new InlineHasherFactory();
        onUnavailable(err instanceof Error ? err : new Error(String(err)));
      });
    }
    return factory;
  }

  /** Proves a worker actually loads and hashes right. */
  private async selfTest(): Promise<void> {
    const probe = this.create("sha256");
    await probe.update(new TextEncoder().encode("stowage"));
    const hex = await rejectAfter(probe.finish(), 10_000, () => new Error("digest worker did not answer within 10 s"));
    const expected = createHash("sha256").update("stowage").digest("hex");
    if (hex !== expected) throw new Error("digest worker computed a wrong sha256 in its self-test");
  }

  create(algorithm: DigestAlgorithm, file?: string): Hasher {
    if (this.fallback) return this.fallback.create(algorithm);
    // The least loaded; between equals, one whose thread already runs rather than start another.
    const worker = [...this.workers].sort((a, b) => a.load - b.load || Number(b.running) - Number(a.running))[0];
    if (!worker) throw new Error("no digest worker is configured");
    const id = this.nextId++;
    const job: Job = { backlog: 0, drained: [], result: null, failed: null };
    worker.jobs.set(id, job);
    worker.post({ op: "start", id, algorithm, ...(file === undefined ? {} : { file }) });

    const post = (data: Uint8Array) => {
      job.backlog += data.byteLength;
      worker.post({ op: "update", id, data }, [data.buffer as ArrayBuffer]);
    };
    // With a file: how far it is written, and how far the worker was told (it is told in steps).
    let fileUpTo = 0;
    let filePosted = 0;
    const postFile = () => {
      if (fileUpTo === filePosted || job.failed) return;
      filePosted = fileUpTo;
      worker.post({ op: "file", id, upTo: fileUpTo });
    };
    // A full batch goes to the worker itself (no copy); the last, short one as a copy of its bytes.
    const batches = new BufferFiller(BATCH_BYTES, () => spareBatches.take(), post);

    return {
      // The worker reads these bytes from the file itself: a few bytes of message instead of the data.
      fileWritten(upTo) {
        if (file === undefined) return;
        fileUpTo = upTo;
        if (fileUpTo - filePosted >= FILE_NOTICE_BYTES) postFile();
      },
      async update(chunk) {
        if (job.failed) throw job.failed;
        postFile(); // the file's bytes come first
        await batches.push(chunk);
        if (job.backlog > BACKLOG_BYTES) {
          await new Promise<void>((resolve) => job.drained.push(resolve));
          if (job.failed) throw job.failed;
        }
      },
      finish() {
        if (job.failed) return Promise.reject(job.failed);
        postFile();
        const last = batches.takePartial(true);
        if (last) post(last);
        return new Promise<string>((resolve, reject) => {
          job.result = { resolve, reject };
          worker.post({ op: "finish", id });
        });
      },
      discard() {
        batches.release();
        // Posted before the job is dropped: dropping the last job starts the idle countdown, which a post would cancel.
        if (!worker.jobs.has(id)) return;
        worker.post({ op: "discard", id });
        worker.drop(id);
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
