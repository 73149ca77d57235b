/**
 * Reads of a stored blob file shared by every client sending it at once. A CI burst pulls the
 * same base layer to many clients at nearly the same offsets; each MiB of the file is then read
 * once, into one buffer that every socket writes from, so memory grows with how far apart the
 * clients are rather than with how many there are. A buffer is written again only after every
 * sender it went to has handed it back (see DirectSource.recycle).
 */
import type { FileHandle } from "node:fs/promises";
import { BufferPool, unzeroedBytes } from "../../util/buffers.ts";
import type { DirectSource } from "../direct-body.ts";

/** One MiB of the file, aligned, as every reader of the file shares it. */
class Chunk {
  /**
   * The bytes while anyone holds the chunk. Let go at the last release, so that a chunk object
   * that outlived a young-generation collection does not keep its MiB until the next full one.
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

/** Every reader of one file path now; gone when the last one ends. */
class SharedFile {
  readonly chunks = new Map<number, Chunk>();
  readers = 0;
  /** Reads in flight: the handle stays open until they are done, even with no readers left. */
  private reading = 0;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
    readonly chunkBytes: number,
    private readonly spare: BufferPool,
  ) {}

  /** Chunk `index`, read now unless another reader has it already. */
  acquire(index: number): Chunk {
    let chunk = this.chunks.get(index);
    if (!chunk) {
      const made = new Chunk(this.read(index), this.spare);
      // A failed read is tried afresh by the next reader to ask.
      made.ready.catch(() => this.chunks.get(index) === made && this.chunks.delete(index));
      this.chunks.set(index, made);
      chunk = made;
    }
    chunk.users++;
    return chunk;
  }

  /** A reader is done with chunk `index`; `reusable` false when the chunk's bytes are still in someone's hands. */
  release(index: number, chunk: Chunk, reusable: boolean): void {
    if (!reusable) chunk.reusable = false;
    if (--chunk.users > 0) return;
    if (this.chunks.get(index) === chunk) this.chunks.delete(index);
    if (chunk.reusable && chunk.bytes) this.spare.give(chunk.bytes.buffer);
    chunk.bytes = null;
  }

  leave(): void {
    if (--this.readers > 0) return;
    if (open.get(this.path) === this) open.delete(this.path);
    this.closeWhenIdle();
  }

  private async read(index: number): Promise<Uint8Array> {
    const at = index * this.chunkBytes;
    const want = Math.min(this.chunkBytes, this.size - at);
    const buf = want === this.chunkBytes ? this.spare.take() : unzeroedBytes(want);
    this.reading++;
    try {
      let got = 0;
      while (got < want) {
        const { bytesRead } = await this.handle.read(buf, got, want - got, at + got);
        if (bytesRead === 0) throw new Error("blob file shorter than expected");
        got += bytesRead;
      }
      return buf;
    } finally {
      this.reading--;
      this.closeWhenIdle();
    }
  }

  private closeWhenIdle(): void {
    if (this.readers > 0 || this.reading > 0 || this.closed) return;
    this.closed = true;
    this.spare.clear();
    this.handle.close().catch(() => {});
  }
}

/** The files being read now, by path. */
const open = new Map<string, SharedFile>();

/** Spare chunk buffers a file keeps for reuse: its readers' read-ahead and one being sent, give or take. */
const SPARES_PER_FILE = 4;

/**
 * Bytes [start, end) of the file at `path` (`size` bytes long, open as `handle`), read in
 * `chunkBytes` chunks shared with every other reader of that path, `readAhead()` of them ahead of
 * the consumer. The reader joins at its first read: a body made and never read holds nothing but
 * its handle, closed on cancel. `onSending` is told when it starts and stops sending.
 */
export function sharedFileSource(
  path: string,
  handle: FileHandle,
  size: number,
  start: number,
  end: number,
  opts: { chunkBytes: number; readAhead: () => number; onSending: (delta: 1 | -1) => void },
): DirectSource {
  const { chunkBytes } = opts;
  let file: SharedFile | null = null;
  let closed = false;
  let next = Math.floor(start / chunkBytes);
  const last = Math.ceil(end / chunkBytes) - 1;
  /** Acquired and not yet handed out, in file order. */
  const ahead: Array<{ index: number; chunk: Chunk }> = [];
  /** Handed out and not yet given back, in the order given. */
  const given: Array<{ index: number; chunk: Chunk; view: Uint8Array }> = [];

  const join = (): SharedFile => {
    let shared = open.get(path);
    if (shared && shared.size === size) {
      handle.close().catch(() => {}); // the shared file's own handle reads for everyone
    } else {
      shared = new SharedFile(path, handle, size, chunkBytes, new BufferPool(chunkBytes, SPARES_PER_FILE));
      open.set(path, shared);
    }
    shared.readers++;
    opts.onSending(1);
    return shared;
  };
  const close = () => {
    if (closed) return;
    closed = true;
    if (!file) {
      handle.close().catch(() => {});
      return;
    }
    // Chunks handed out may still be in a socket write that failed or was dropped: never reused.
    for (const g of given.splice(0)) file.release(g.index, g.chunk, false);
    for (const a of ahead.splice(0)) file.release(a.index, a.chunk, true);
    opts.onSending(-1);
    file.leave();
  };
  const giveBack = (bytes: Uint8Array, reusable: boolean) => {
    if (!file) return;
    const at = given.findIndex((g) => g.view === bytes);
    if (at < 0) return;
    const [g] = given.splice(at, 1);
    file.release(g!.index, g!.chunk, reusable);
  };

  return {
    async read() {
      if (closed) throw new Error("blob file read after it was closed");
      file ??= join();
      if (next > last) {
        close();
        return null;
      }
      const index = next++;
      const { chunk } = ahead.shift() ?? { chunk: file.acquire(index) };
      try {
        await chunk.ready;
      } catch (err) {
        file.release(index, chunk, false);
        close();
        throw err;
      }
      // Reads ahead start once this one is done, as the consumer moves on: never more in flight than it can use.
      while (!closed && ahead.length < opts.readAhead() && next + ahead.length <= last) {
        const i = next + ahead.length;
        ahead.push({ index: i, chunk: file.acquire(i) });
      }
      if (closed) {
        file.release(index, chunk, true);
        throw new Error("blob file read after it was closed");
      }
      const bytes = chunk.bytes!; // set: this reader holds the chunk
      const from = Math.max(start - index * chunkBytes, 0);
      const to = Math.min(end - index * chunkBytes, bytes.byteLength);
      const view = from === 0 && to === bytes.byteLength ? bytes : bytes.subarray(from, to);
      given.push({ index, chunk, view });
      return view;
    },
    recycle: (bytes) => giveBack(bytes, true),
    forget: (bytes) => giveBack(bytes, false),
    cancel: close,
  };
}
