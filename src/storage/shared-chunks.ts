/**
 * Aligned, fixed-size chunks of one blob's bytes, each read once and handed to every reader that
 * asks for it while anyone still holds it. Clients of one layer in a CI burst read it at nearly
 * the same offsets: sharing the reads makes memory grow with how far apart the clients are, not
 * with how many there are. A chunk's buffer is written again (reused for another chunk) only after
 * every reader it went to has handed it back; one a reader kept for good never is.
 */
import { BATCH_BYTES, BufferPool, SPARES_IDLE_MS, unzeroedBytes } from "../util/buffers.ts";

/**
 * Spare chunk buffers, one pool for every blob being read (stored files and download spools). A
 * burst of clients on a layer releases chunks in waves, as the sockets take them: a handful of
 * spares per blob dropped most of them, and each dropped 1 MiB buffer stayed resident as garbage
 * while a fresh one was read into. 32 MiB covers twenty clients a chunk apart, read ahead included.
 */
export const chunkSpares = new BufferPool(BATCH_BYTES, 32, SPARES_IDLE_MS);

/** One chunk, as every reader of it shares it. */
export class Chunk {
  /**
   * The bytes while anyone holds the chunk. Let go at the last release, so that a chunk object
   * that outlived a young-generation collection does not keep its buffer until the next full one.
   */
  bytes: Uint8Array | null = null;
  /** Readers holding it: read ahead, or handed out and not yet given back. */
  users = 0;
  /** False once a holder kept it for good (a web stream consumer): its memory is never reused. */
  reusable = true;
  /** Settles when the read is done: `bytes` is then set, or it rejects with why the read failed. */
  readonly ready: Promise<void>;

  constructor(read: Promise<Uint8Array>, spare: BufferPool) {
    this.ready = read.then((b) => {
      if (this.users > 0) this.bytes = b;
      else if (this.reusable) spare.give(b.buffer); // every reader left while it was being read
    });
  }
}

export class SharedChunks {
  private readonly chunks = new Map<number, Chunk>();

  /**
   * `readInto` gives chunk `index`'s bytes, all of them (or rejects), read into `into` where it
   * can. Whole chunks are read into `spare`'s buffers when they are of its size.
   */
  constructor(
    readonly chunkBytes: number,
    private readonly readInto: (index: number, into: Uint8Array) => Promise<Uint8Array>,
    private readonly spare: BufferPool = chunkSpares,
  ) {}

  /** Chunk `index` (`length` bytes: less for a body's last one), read now unless someone holds it already. */
  acquire(index: number, length = this.chunkBytes): Chunk {
    let chunk = this.chunks.get(index);
    if (!chunk) {
      const into = length === this.spare.size ? this.spare.take() : unzeroedBytes(length);
      const read = this.readInto(index, into).then((bytes) => {
        if (bytes.buffer !== into.buffer) made.reusable = false; // someone else's memory: never ours to write
        return bytes;
      });
      const made = new Chunk(read, this.spare);
      // A failed read is tried afresh by the next reader to ask.
      made.ready.catch(() => this.chunks.get(index) === made && this.chunks.delete(index));
      this.chunks.set(index, made);
      chunk = made;
    }
    chunk.users++;
    return chunk;
  }

  /** A reader is done with chunk `index`; `reusable` false when its bytes may still be in someone's hands. */
  release(index: number, chunk: Chunk, reusable: boolean): void {
    if (!reusable) chunk.reusable = false;
    if (--chunk.users > 0) return;
    if (this.chunks.get(index) === chunk) this.chunks.delete(index);
    if (chunk.reusable && chunk.bytes) this.spare.give(chunk.bytes.buffer);
    chunk.bytes = null;
  }
}

/** One reader's chunks: those it handed out and has not had back yet. */
export class ChunkLeases {
  private readonly given: Array<{ index: number; chunk: Chunk; view: Uint8Array }> = [];

  constructor(private readonly chunks: SharedChunks) {}

  /**
   * Chunk `index`'s bytes [from, to) once read (a chunk this reader acquired), recorded as handed
   * out. A failed read releases the chunk and rejects.
   */
  async hand(index: number, chunk: Chunk, from = 0, to?: number): Promise<Uint8Array> {
    try {
      await chunk.ready;
    } catch (err) {
      this.chunks.release(index, chunk, false);
      throw err;
    }
    const bytes = chunk.bytes!; // set: this reader holds the chunk
    const end = Math.min(to ?? bytes.byteLength, bytes.byteLength);
    const view = from === 0 && end === bytes.byteLength ? bytes : bytes.subarray(from, end);
    this.given.push({ index, chunk, view });
    return view;
  }

  /** `view` comes back (sent: reusable; kept for good: not). False when it was not one of these. */
  giveBack(view: Uint8Array, reusable: boolean): boolean {
    const at = this.given.findIndex((g) => g.view === view);
    if (at < 0) return false;
    const [g] = this.given.splice(at, 1);
    this.chunks.release(g!.index, g!.chunk, reusable);
    return true;
  }

  /** The reader ends: chunks still out may be in a socket write that failed or was dropped, so none is reused. */
  releaseAll(): void {
    for (const g of this.given.splice(0)) this.chunks.release(g.index, g.chunk, false);
  }
}
