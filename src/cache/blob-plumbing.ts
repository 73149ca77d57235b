/**
 * The byte plumbing of a blob fetch (see blob-fetch.ts): upstream chunks are
 * gathered into batches (Batcher), handed to the store and the hasher with
 * completion reported in order (OrderedWriter), kept in memory for followers
 * near the live edge while recent (ByteWindow), and read back from the spool
 * by followers further behind (SharedReader). Batches are shared, never
 * copied or changed once passed on, and reused once every holder let go (see
 * batch-pool.ts): each stage here that keeps a batch holds it.
 */
import type { PartialReader } from "../storage/blob-store.ts";
import { BufferFiller } from "../util/buffers.ts";
import { batchPool, type BatchHold, type BatchPool, holdBatch } from "./batch-pool.ts";

/** A partly filled batch older than this is passed on anyway, so a slow upstream still reaches clients promptly. */
const BATCH_MAX_AGE_MS = 25;

/**
 * Gathers chunks into batches of the pool's size (the last one shorter). A batch is never changed
 * once passed on; `emit`'s receiver takes its own hold (holdBatch) if it keeps it after the call.
 */
export class Batcher {
  private readonly filler: BufferFiller;
  private startedAt = 0;
  /** The hold on the batch being filled (let go once emitted; kept, so never reused, if the download fails midway). */
  private filling: BatchHold | null = null;

  constructor(private readonly emit: (batch: Uint8Array) => void | Promise<void>, pool: BatchPool = batchPool) {
    this.filler = new BufferFiller(pool.size, () => {
      // Taken when the first byte of a batch arrives: its age counts from then.
      this.startedAt = Date.now();
      this.filling = pool.take();
      return this.filling.bytes;
    }, (batch) => this.pass(batch));
  }

  private pass(batch: Uint8Array): void | Promise<void> {
    const hold = this.filling!;
    this.filling = null;
    const paced = this.emit(batch);
    if (!paced) return hold.release();
    // The receiver took its hold at the call; this one goes once it has the batch either way.
    return paced.finally(() => hold.release());
  }

  /** Returns a promise only when the caller must wait before the next push (the batch's receiver is pacing). */
  push(chunk: Uint8Array): void | Promise<void> {
    const paced = this.filler.push(chunk);
    if (paced) return paced.then(() => this.flushIfOld());
    return this.flushIfOld();
  }

  async end(): Promise<void> {
    await this.flush();
  }

  private flushIfOld(): void | Promise<void> {
    if (this.filler.filled > 0 && Date.now() - this.startedAt >= BATCH_MAX_AGE_MS) return this.flush();
  }

  private flush(): void | Promise<void> {
    const partial = this.filler.takePartial();
    if (partial) return this.pass(partial);
  }
}

/** Unwritten bytes allowed in flight to the store before the upstream read waits (bounds memory when the store is slow). */
export const MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024;

/**
 * Passes batches on as they are (no copy): each is handed to `start`
 * at once (store write and hash take their place synchronously), and `done`
 * is called for each in order as they complete. When MAX_UNWRITTEN_BYTES are
 * in flight, `push` waits: the store paces the download. A pooled batch is
 * held from `push` until `done` returned: `start`'s store write and hash must
 * be finished with its bytes when their promise resolves. One that fails is
 * never let go (never reused).
 */
export class OrderedWriter {
  private readonly inFlight: Array<{ bytes: number; settled: Promise<void> }> = [];
  private unwritten = 0;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly start: (chunk: Uint8Array) => Promise<void>,
    private readonly done: (chunk: Uint8Array) => void,
  ) {}

  /** Returns a promise only when the caller must wait (MAX_UNWRITTEN_BYTES in flight); a failure surfaces there or at `end`. */
  push(chunk: Uint8Array): void | Promise<void> {
    const hold = holdBatch(chunk);
    if (this.unwritten >= MAX_UNWRITTEN_BYTES && this.inFlight.length > 0) return this.drainThenPush(chunk, hold);
    this.startNow(chunk, hold);
  }

  private async drainThenPush(chunk: Uint8Array, hold: BatchHold | null): Promise<void> {
    while (this.unwritten >= MAX_UNWRITTEN_BYTES && this.inFlight.length > 0) {
      const oldest = this.inFlight.shift()!;
      await oldest.settled;
      this.unwritten -= oldest.bytes;
    }
    this.startNow(chunk, hold);
  }

  private startNow(chunk: Uint8Array, hold: BatchHold | null): void {
    const started = this.start(chunk);
    // Completion is reported in order even if the store finishes out of order.
    this.tail = Promise.all([this.tail, started]).then(() => {
      this.done(chunk);
      hold?.release();
    });
    // A failure surfaces through `tail` at the next wait or at end(), not as an unhandled rejection.
    this.tail.catch(() => {});
    this.inFlight.push({ bytes: chunk.byteLength, settled: this.tail });
    this.unwritten += chunk.byteLength;
  }

  /** Settles once every chunk pushed so far is done (read inside `start`: every chunk before this one). */
  get previous(): Promise<void> {
    return this.tail;
  }

  async end(): Promise<void> {
    await this.tail;
  }
}

/**
 * The most recent chunks of a blob, so followers at the live edge are fed
 * from memory without touching the disk. Holds every chunk not yet written
 * plus up to `keepBytes` of written ones; followers further behind read the spool.
 */
export class ByteWindow {
  /** Contiguous and ordered by offset. */
  private chunks: Array<{ start: number; bytes: Uint8Array; hold: BatchHold | null }> = [];
  private bytes = 0;

  constructor(private readonly keepBytes: number) {}

  /** Adds the chunk at offset `start` (the end of the previous one). */
  append(start: number, chunk: Uint8Array): void {
    this.chunks.push({ start, bytes: chunk, hold: holdBatch(chunk) });
    this.bytes += chunk.byteLength;
  }

  /** Drops the oldest chunks beyond `keepBytes`, but only those wholly before `written`. */
  trim(written: number): void {
    // Unwritten chunks (at most MAX_UNWRITTEN_BYTES) always stay: disk readers cannot have them yet.
    for (;;) {
      const oldest = this.chunks[0];
      if (!oldest || this.bytes - oldest.bytes.byteLength < this.keepBytes) return;
      if (oldest.start + oldest.bytes.byteLength > written) return; // not on disk yet: keep
      this.chunks.shift();
      this.bytes -= oldest.bytes.byteLength;
      oldest.hold?.release();
    }
  }

  /**
   * The bytes at `position` (up to `limit`) if they are still in memory; shared, never copied or
   * mutated. A caller that keeps them past this call takes a hold on them (holdBatch) first.
   */
  slice(position: number, limit: number): Uint8Array | null {
    // Entries are contiguous and ordered by offset: binary search.
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const { start, bytes } = this.chunks[mid]!;
      if (position < start) hi = mid - 1;
      else if (position >= start + bytes.byteLength) lo = mid + 1;
      else return bytes.subarray(position - start, Math.min(bytes.byteLength, limit - start));
    }
    return null;
  }

  clear(): void {
    for (const { hold } of this.chunks) hold?.release();
    this.chunks = [];
    this.bytes = 0;
  }
}

/** The spool reader, closed when the fetch and its last follower are done with it. */
export class SharedReader {
  private refs = 1;
  constructor(
    private readonly reader: PartialReader,
    private readonly pool: BatchPool = batchPool,
  ) {}
  acquire(): void {
    if (this.refs === 0) throw new Error("blob spool already closed: serve the committed blob from the store");
    this.refs++;
  }
  release(): void {
    if (--this.refs === 0) this.reader.close().catch(() => {});
  }
  /**
   * Up to `length` bytes at `offset`, with the hold on the pooled batch they were read into
   * (null: a buffer of their own), for the caller to release once done with them.
   */
  async read(offset: number, length: number): Promise<{ bytes: Uint8Array; hold: BatchHold | null }> {
    if (!this.reader.readInto || length > this.pool.size) return { bytes: await this.reader.read(offset, length), hold: null };
    const hold = this.pool.take();
    // A failed read keeps its hold: the batch is never reused, as a read may still be filling it.
    const got = await this.reader.readInto(hold.bytes.subarray(0, length), offset);
    // A view of its own for each read: a caller tells the chunks it lent apart by identity.
    return { bytes: hold.bytes.subarray(0, got), hold };
  }
}
