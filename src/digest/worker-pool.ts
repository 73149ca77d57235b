import { createHash } from "node:crypto";
import type { WorkerName, WorkerPort } from "../runtime/runtime.ts";
import type { DigestAlgorithm } from "../registry/reference.ts";
import type { Hasher, HasherFactory } from "./hasher.ts";
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

type Outbound = { op: "ack"; id: number; bytes: number; buffer?: ArrayBuffer } | { op: "digest"; id: number; hex: string | null; error?: string };

/**
 * Batch buffers handed back by the workers, reused instead of allocating (and faulting in) fresh
 * ones. They stay resident for good: enough for about two blobs hashed at once, no more.
 */
const spareBatches = new BufferPool(BATCH_BYTES, 8);

type Job = {
  backlog: number;
  /** Everyone waiting for the backlog to shrink (several updates may wait at once). */
  drained: Array<() => void>;
  result: { resolve(hex: string): void; reject(err: Error): void } | null;
  failed: Error | null;
};

class DigestWorker {
  readonly jobs = new Map<number, Job>();
  private broken: Error | null = null;

  constructor(private readonly worker: WorkerPort) {
    worker.onMessage((msg) => this.onMessage(msg as Outbound));
    worker.onFailure((err) => this.fail(new Error(`digest worker failed: ${err.message}`)));
  }

  get load(): number {
    let bytes = 0;
    for (const job of this.jobs.values()) bytes += job.backlog;
    return bytes + this.jobs.size;
  }

  get healthy(): boolean {
    return this.broken === null;
  }

  post(message: unknown, transfer?: ArrayBuffer[]): void {
    if (this.broken) throw this.broken;
    this.worker.post(message, transfer);
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
      this.jobs.delete(msg.id);
      if (msg.hex) job.result?.resolve(msg.hex);
      else job.result?.reject(new Error(msg.error ? `digest worker could not hash the blob: ${msg.error}` : "digest worker lost the job"));
    }
  }

  private fail(err: Error): void {
    this.broken = err;
    for (const job of this.jobs.values()) {
      job.failed = err;
      for (const wake of job.drained) wake();
      job.drained = [];
      job.result?.reject(err);
    }
    this.jobs.clear();
  }

  terminate(): Promise<void> {
    return this.worker.terminate();
  }
}

/**
 * sha256/sha512 in worker threads (workers/digest-worker.ts). Each blob's
 * hash runs on one worker; blobs are spread over the least loaded worker.
 */
export class WorkerHasherFactory implements HasherFactory {
  readonly mode = "worker" as const;
  readonly readsFiles = true;
  private nextId = 1;

  private constructor(private readonly workers: DigestWorker[]) {}

  /** Starts `count` workers and checks that one answers; throws if workers cannot run here. */
  static async start(count: number, spawn: (name: WorkerName) => WorkerPort): Promise<WorkerHasherFactory> {
    const workers = Array.from({ length: count }, () => new DigestWorker(spawn("digest-worker")));
    const factory = new WorkerHasherFactory(workers);
    // Prove the worker actually loads (its TypeScript is type-stripped when the runtime spawns it).
    const probe = factory.create("sha256");
    await probe.update(new TextEncoder().encode("stowage"));
    const hex = await rejectAfter(probe.finish(), 10_000, () => new Error("digest worker did not answer within 10 s"));
    const expected = createHash("sha256").update("stowage").digest("hex");
    if (hex !== expected) throw new Error("digest worker computed a wrong sha256 in its self-test");
    return factory;
  }

  create(algorithm: DigestAlgorithm, file?: string): Hasher {
    const healthy = this.workers.filter((w) => w.healthy);
    const worker = healthy.sort((a, b) => a.load - b.load)[0];
    if (!worker) throw new Error("no digest worker is running");
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
      if (fileUpTo === filePosted || job.failed || !worker.healthy) return;
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
        if (worker.jobs.delete(id) && worker.healthy) worker.post({ op: "discard", id });
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
