/**
 * Reads of a stored blob file shared by every client sending it at once (see
 * storage/shared-chunks.ts): each MiB of the file is read once, into one buffer that every socket
 * writes from.
 */
import type { FileHandle } from "node:fs/promises";
import type { DirectSource } from "../direct-body.ts";
import { fillAt } from "../local-file.ts";
import { type Chunk, ChunkLeases, SharedChunks } from "../shared-chunks.ts";

/** Every reader of one file path now; gone when the last one ends. */
class SharedFile {
  readonly chunks: SharedChunks;
  readers = 0;
  /** Reads in flight: the handle stays open until they are done, even with no readers left. */
  private reading = 0;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
    readonly chunkBytes: number,
  ) {
    this.chunks = new SharedChunks(chunkBytes, (index, into) => this.read(index * chunkBytes, into));
  }

  /** Chunk `index` (the file's last one is shorter). */
  acquire(index: number): Chunk {
    return this.chunks.acquire(index, Math.min(this.chunkBytes, this.size - index * this.chunkBytes));
  }

  leave(): void {
    if (--this.readers > 0) return;
    if (open.get(this.path) === this) open.delete(this.path);
    this.closeWhenIdle();
  }

  private async read(at: number, into: Uint8Array): Promise<Uint8Array> {
    this.reading++;
    try {
      return await fillAt(this.handle, into, at, `blob file ${this.path}`);
    } finally {
      this.reading--;
      this.closeWhenIdle();
    }
  }

  private closeWhenIdle(): void {
    if (this.readers > 0 || this.reading > 0 || this.closed) return;
    this.closed = true;
    this.handle.close().catch(() => {});
  }
}

/** The files being read now, by path. */
const open = new Map<string, SharedFile>();

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
  let leases: ChunkLeases | null = null;
  let closed = false;
  let next = Math.floor(start / chunkBytes);
  const last = Math.ceil(end / chunkBytes) - 1;
  /** Acquired and not yet handed out, in file order. */
  const ahead: Array<{ index: number; chunk: Chunk }> = [];

  const join = (): SharedFile => {
    let shared = open.get(path);
    if (shared && shared.size === size) {
      handle.close().catch(() => {}); // the shared file's own handle reads for everyone
    } else {
      shared = new SharedFile(path, handle, size, chunkBytes);
      open.set(path, shared);
    }
    shared.readers++;
    leases = new ChunkLeases(shared.chunks);
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
    leases!.releaseAll();
    for (const a of ahead.splice(0)) file.chunks.release(a.index, a.chunk, true);
    opts.onSending(-1);
    file.leave();
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
      let view: Uint8Array;
      try {
        view = await leases!.hand(index, chunk, Math.max(start - index * chunkBytes, 0), end - index * chunkBytes);
      } catch (err) {
        close();
        throw err;
      }
      if (closed) {
        leases!.giveBack(view, true); // cancelled while it was read: never handed on
        throw new Error("blob file read after it was closed");
      }
      // Reads ahead start once this one is done, as the consumer moves on: never more in flight than it can use.
      while (ahead.length < opts.readAhead() && next + ahead.length <= last) {
        const i = next + ahead.length;
        ahead.push({ index: i, chunk: file.acquire(i) });
      }
      return view;
    },
    recycle: (bytes) => void leases?.giveBack(bytes, true),
    forget: (bytes) => void leases?.giveBack(bytes, false),
    cancel: close,
  };
}
