/**
 * 1 MiB batch buffers that a blob download's upstream reader fills (runtime/node-http1.ts), used
 * again once nobody holds them instead of a fresh buffer per MiB: fresh ones are faulted in page
 * by page and count as external memory until a collection finds them dead, which drove V8 to
 * frequent full collections on the cold path.
 *
 * Reuse overwrites bytes, so a batch goes back only once every holder let go. Whoever keeps a
 * chunk of a batch beyond the call that handed it over takes a hold at once (holdBatch, while the
 * giver still holds the batch) and releases it exactly once when done with the bytes: a store
 * write once it settled, the memory window when it drops the chunk, a client's send once the
 * socket took it. A hold never released (a chunk given to a web stream, whose reader keeps it)
 * pins the batch: the pool never sees it again and the garbage collector has it. Pinning is
 * always safe; releasing early never is.
 */
import { BATCH_BYTES, BufferPool, markBatch, SPARES_IDLE_MS } from "./buffers.ts";

/** Spare batches kept at most: one download's working set (8 MiB unwritten, the 4 MiB window, sends). */
const SPARE_BATCHES = 16;

/** One batch buffer and the count of its holders. */
class Batch {
  holders = 0;
  constructor(
    readonly bytes: Uint8Array,
    readonly pool: BatchPool,
  ) {}
}

/** One holder's claim on a batch, released exactly once (a second release is a bug, and throws). */
export class BatchHold {
  private released = false;

  constructor(private readonly batch: Batch) {
    batch.holders++;
  }

  /** The whole batch buffer. */
  get bytes(): Uint8Array {
    return this.batch.bytes;
  }

  release(): void {
    if (this.released) throw new Error("a blob batch was released twice");
    this.released = true;
    if (--this.batch.holders === 0) this.batch.pool.give(this.batch);
  }
}

/** Which pooled batch a buffer is: chunks handed around are views of it. */
const batchOf = new WeakMap<ArrayBufferLike, Batch>();

/**
 * A hold on the pooled batch `chunk` is a view of, or null when it is not one (nothing to give
 * back then). Only while someone else holds it: a chunk whose batch is back in the pool was kept
 * by someone without a hold, and its bytes may already be another blob's.
 */
export function holdBatch(chunk: Uint8Array): BatchHold | null {
  const batch = batchOf.get(chunk.buffer);
  if (!batch) return null;
  if (batch.holders === 0) throw new Error("a blob batch was used after it went back to the pool");
  return new BatchHold(batch);
}

/** Holds `chunk`'s batch (if pooled) until `work` settles; returns `work`. */
export function holdUntil<T>(chunk: Uint8Array, work: Promise<T>): Promise<T> {
  const hold = holdBatch(chunk);
  if (hold) void work.then(() => hold.release(), () => hold.release());
  return work;
}

export class BatchPool {
  private readonly spare: BufferPool;
  /** Batches allocated fresh, and taken from the spares (for tests; the counts only grow). */
  allocated = 0;
  reused = 0;

  constructor(
    readonly size = BATCH_BYTES,
    max = SPARE_BATCHES,
    idleMs = SPARES_IDLE_MS,
  ) {
    this.spare = new BufferPool(size, max, idleMs);
  }

  /** A batch to fill, with the first hold on it (the taker's). Its buffer is marked (markBatch). */
  take(): BatchHold {
    const bytes = this.spare.take();
    let batch = batchOf.get(bytes.buffer);
    if (batch) {
      this.reused++;
    } else {
      batch = new Batch(markBatch(bytes), this);
      batchOf.set(bytes.buffer, batch);
      this.allocated++;
    }
    return new BatchHold(batch);
  }

  /** Spare batches now (for tests). */
  get spares(): number {
    return this.spare.spares;
  }

  /** The last holder let go (BatchHold.release); the spares are bounded. */
  give(batch: Batch): void {
    this.spare.give(batch.bytes.buffer);
  }
}

/** The process's pool, shared by every download. */
export const batchPool = new BatchPool();
