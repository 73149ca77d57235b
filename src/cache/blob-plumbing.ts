/**
 * The byte plumbing of a blob fetch (see blob-fetch.ts): upstream chunks are
 * gathered into batches (Batcher), handed to the store and the hasher with
 * completion reported in order (OrderedWriter), kept in memory for followers
 * near the live edge while recent (ByteWindow), and read back from the spool
 * by followers further behind (SharedReader). Batches are shared, never
 * copied or changed once passed on.
 */
import type { PartialReader } from "../storage/blob-store.ts";
import { SharedChunks } from "../storage/shared-chunks.ts";
import { type BatchHold, holdBatch } from "../util/batch-pool.ts";
import { BATCH_BYTES, BATCH_MAX_AGE_MS, BufferFiller, isBatch, unzeroedBytes } from "../util/buffers.ts";

/**
 * Gathers chunks into batches of BATCH_BYTES (the last one shorter). A batch is never changed once
 * passed on. Chunks that are batches already (read in place by Node's upstream client, see
 * util/buffers.ts markBatch) are passed on as they are, after any bytes gathered before them.
 */
export class Batcher {
  private readonly filler: BufferFiller;
  private startedAt = 0;

  constructor(private readonly emit: (batch: Uint8Array) => void | Promise<void>) {
    this.filler = new BufferFiller(BATCH_BYTES, () => {
      // Taken when the first byte of a batch arrives: its age counts from then.
      this.startedAt = Date.now();
      return unzeroedBytes(BATCH_BYTES);
    }, emit);
  }

  /** Returns a promise only when the caller must wait before the next push (the batch's receiver is pacing). */
  push(chunk: Uint8Array): void | Promise<void> {
    if (isBatch(chunk)) {
      const partial = this.filler.takePartial();
      if (!partial) return this.emit(chunk);
      const before = this.emit(partial);
      if (!before) return this.emit(chunk);
      // Kept past this call: held until handed on (see util/batch-pool.ts).
      const hold = holdBatch(chunk);
      return before.then(() => this.emitHeld(chunk, hold));
    }
    const paced = this.filler.push(chunk);
    if (paced) return paced.then(() => this.flushIfOld());
    return this.flushIfOld();
  }

  async end(): Promise<void> {
    await this.flush();
  }

  private emitHeld(chunk: Uint8Array, hold: BatchHold | null): void | Promise<void> {
    try {
      return this.emit(chunk);
    } finally {
      hold?.release();
    }
  }

  private flushIfOld(): void | Promise<void> {
    if (this.filler.filled > 0 && Date.now() - this.startedAt >= BATCH_MAX_AGE_MS) return this.flush();
  }

  private flush(): void | Promise<void> {
    const partial = this.filler.takePartial();
    if (partial) return this.emit(partial);
  }
}

/** Unwritten bytes allowed in flight to the store before the upstream read waits (bounds memory when the store is slow). */
export const MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024;

/**
 * Passes batches on as they are (no copy): each is handed to `start`
 * at once (store write and hash take their place synchronously), and `done`
 * is called for each in order as they complete. When MAX_UNWRITTEN_BYTES are
 * in flight, `push` waits: the store paces the download.
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
    if (this.unwritten >= MAX_UNWRITTEN_BYTES && this.inFlight.length > 0) return this.drainThenPush(chunk, holdBatch(chunk));
    this.startNow(chunk);
  }

  /** Waits for room, then starts `chunk`; `hold` keeps its batch meanwhile (`start` takes holds of its own). */
  private async drainThenPush(chunk: Uint8Array, hold: BatchHold | null): Promise<void> {
    try {
      while (this.unwritten >= MAX_UNWRITTEN_BYTES && this.inFlight.length > 0) {
        const oldest = this.inFlight.shift()!;
        await oldest.settled;
        this.unwritten -= oldest.bytes;
      }
      this.startNow(chunk);
    } finally {
      hold?.release();
    }
  }

  private startNow(chunk: Uint8Array): void {
    const started = this.start(chunk);
    // Completion is reported in order even if the store finishes out of order.
    this.tail = Promise.all([this.tail, started]).then(() => this.done(chunk));
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

  /** The bytes at `position` (up to `limit`) if they are still in memory; shared, never copied or mutated. */
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
    for (const c of this.chunks) c.hold?.release();
    this.chunks = [];
    this.bytes = 0;
  }
}

/** Bytes a follower reads from the spool at a time: a batch, so chunks line up with the memory window's. */
export const SPOOL_CHUNK = BATCH_BYTES;

/** The spool reader, closed when the fetch and its last follower are done with it. */
export class SharedReader {
  private refs = 1;
  /**
   * Whole, aligned SPOOL_CHUNK chunks of the spool, each read once for every follower behind the
   * memory window (see storage/shared-chunks.ts): twenty followers of a cold layer send from one
   * read instead of twenty.
   */
  readonly chunks: SharedChunks;

  constructor(private readonly reader: PartialReader) {
    this.chunks = new SharedChunks(SPOOL_CHUNK, async (index, into) => {
      const got = await reader.read(index * SPOOL_CHUNK, SPOOL_CHUNK, into);
      if (got.byteLength !== SPOOL_CHUNK) throw new Error("blob spool returned fewer bytes than were written");
      return got;
    });
  }
  acquire(): void {
    if (this.refs === 0) throw new Error("blob spool already closed: serve the committed blob from the store");
    this.refs++;
  }
  release(): void {
    if (--this.refs > 0) return;
    this.reader.close().catch(() => {});
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.reader.read(offset, length);
  }
}
