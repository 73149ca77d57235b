import { mkdir, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import type { ByteRange } from "../../registry/range.ts";
import { digestAlgorithm, digestHex, parseDigest, type Digest } from "../../registry/reference.ts";
import { unzeroedBytes } from "../../util/buffers.ts";
import type { BlobStore, BlobUpload, PartialReader, StoredObject } from "../blob-store.ts";
import { freeBytes, type StatFs, systemStatFs } from "../disk-space.ts";
import { sweepUploadDir, UploadFile, uploadFilePath } from "../local-file.ts";
import { directStream, type DirectSource } from "../direct-body.ts";

/** Chunk size of reads from disk: large enough for throughput, small enough to keep memory flat. */
const READ_CHUNK = 1024 * 1024;

/**
 * Reads of a blob file kept in flight ahead of its socket, by how many blob files are being sent
 * at once. Few: two, so the disk is never what a socket waits on. Many: the CPU sets the pace and
 * a read ahead only holds 1 MiB per client; a hundred clients of one cached layer peaked at
 * 390 MiB with two ahead and at 210 MiB with none, in the same time.
 */
export function readAheadFor(senders: number): number {
  return senders > 32 ? 0 : senders > 8 ? 1 : 2;
}

/** Blob files being sent now, counted from their first read to their close. */
let sending = 0;
export const filesSending = (): number => sending;

/**
 * The embedded default store: one file per digest under `<root>/<alg>/<2 hex>/<hex>`.
 * Uploads go to `<root>/_uploads/` and are renamed into place on commit (atomic on
 * one filesystem), after an fsync so a crash cannot leave a torn file under a digest.
 */
export class FsBlobStore implements BlobStore {
  readonly description: string;
  private readonly uploads: string;

  private constructor(
    private readonly root: string,
    private readonly statfs: StatFs | null,
  ) {
    this.description = `filesystem at ${root}`;
    this.uploads = join(root, "_uploads");
  }

  /** Opens the store, removing uploads a crash left behind (not others' live ones). `statfs` is replaceable for tests. */
  static async open(root: string, opts: { statfs?: StatFs | null } = {}): Promise<FsBlobStore> {
    const store = new FsBlobStore(root, opts.statfs === undefined ? systemStatFs : opts.statfs);
    await sweepUploadDir(store.uploads);
    return store;
  }

  private pathOf(digest: Digest): string {
    const hex = digestHex(digest);
    return join(this.root, digestAlgorithm(digest), hex.slice(0, 2), hex);
  }

  async stat(digest: Digest): Promise<{ size: number } | null> {
    try {
      const s = await stat(this.pathOf(digest));
      return { size: s.size };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async open(digest: Digest, range?: ByteRange): Promise<ReadableStream<Uint8Array> | null> {
    let handle: FileHandle;
    try {
      handle = await open(this.pathOf(digest), "r");
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
    const start = range?.start ?? 0;
    const end = range ? range.end + 1 : (await handle.stat()).size;
    return directStream(fileSource(handle, start, end));
  }

  async put(digest: Digest, bytes: Uint8Array): Promise<void> {
    const tmp = uploadFilePath(this.uploads, digest);
    try {
      await writeFile(tmp, bytes, { flush: true });
      await this.place(tmp, digest);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async begin(digest: Digest): Promise<BlobUpload> {
    const file = await UploadFile.create(this.uploads, digest);
    return new FsUpload(file, () => this.place(file.path, digest));
  }

  async delete(digest: Digest): Promise<void> {
    // An open read keeps its file: unlinking only removes the name.
    await rm(this.pathOf(digest), { force: true });
  }

  async *list(): AsyncIterable<StoredObject> {
    for (const alg of await readdirOrEmpty(this.root)) {
      if (alg === "_uploads") continue;
      for (const prefix of await readdirOrEmpty(join(this.root, alg))) {
        for (const hex of await readdirOrEmpty(join(this.root, alg, prefix))) {
          const digest = parseDigest(`${alg}:${hex}`);
          if (!digest || !hex.startsWith(prefix)) continue;
          try {
            const s = await stat(join(this.root, alg, prefix, hex));
            if (s.isFile()) yield { digest, size: s.size, modifiedAt: s.mtimeMs };
          } catch (err) {
            if (!isNotFound(err)) throw err; // deleted meanwhile
          }
        }
      }
    }
  }

  async check(): Promise<void> {
    await readdir(this.uploads);
  }

  freeSpace(): Promise<number | null> {
    return freeBytes(this.statfs, this.uploads);
  }

  private async place(tmp: string, digest: Digest): Promise<void> {
    const final = this.pathOf(digest);
    await mkdir(join(final, ".."), { recursive: true });
    await rename(tmp, final);
  }
}

class FsUpload implements BlobUpload {
  private settled = false;

  constructor(
    private readonly file: UploadFile,
    private readonly place: () => Promise<void>,
  ) {}

  write(chunk: Uint8Array): Promise<void> {
    return this.file.write(chunk);
  }

  openReader(): Promise<PartialReader> {
    return this.file.openReader();
  }

  get spoolPath(): string {
    return this.file.path;
  }

  async commit(): Promise<void> {
    if (this.settled) throw new Error("upload already committed or aborted");
    this.settled = true;
    try {
      await this.file.handle.datasync();
      await this.file.handle.close();
      await this.place();
    } catch (err) {
      await this.file.remove();
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    await this.file.remove();
  }
}

/**
 * The file's bytes [start, end) in READ_CHUNK reads, readAheadFor() of them ahead of the consumer. A runtime
 * that sends the source itself hands its chunks back (recycle), so a long blob goes out
 * through the same few buffers; the web stream gets fresh ones. The handle is closed at the
 * end, on an error or on cancel.
 */
export function fileSource(handle: FileHandle, start: number, end: number, chunkBytes = READ_CHUNK): DirectSource {
  let position = start;
  let closed = false;
  const spare: Uint8Array[] = [];
  // Counted from the first read: a body made and never read (a HEAD, a request given up) is not sending.
  let counted = false;
  const close = () => {
    if (closed) return;
    closed = true;
    if (counted) sending--;
    // A read still in flight finishes first: FileHandle.close waits for it.
    handle.close().catch(() => {});
  };
  const readNext = async (): Promise<Uint8Array | null> => {
    if (!counted && !closed) {
      counted = true;
      sending++;
    }
    const want = Math.min(chunkBytes, end - position);
    if (want <= 0) {
      close();
      return null;
    }
    const at = position;
    position += want;
    const buf = spare.pop() ?? unzeroedBytes(want === end - start ? want : chunkBytes);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await handle.read(buf, got, want - got, at + got);
      if (bytesRead === 0) throw new Error("blob file shorter than expected");
      got += bytesRead;
    }
    return want === buf.byteLength ? buf : buf.subarray(0, want);
  };
  // Reads queued ahead of the consumer, in file order: the disk is never what a socket waits on.
  const ahead: Array<Promise<Uint8Array | null>> = [];
  const fill = () => {
    while (!closed && ahead.length < readAheadFor(sending) && position < end) {
      const next = readNext();
      next.catch(() => {}); // surfaces when the consumer gets to it
      ahead.push(next);
    }
  };
  return {
    async read() {
      if (closed) throw new Error("blob file read after it was closed");
      const next = ahead.shift() ?? readNext();
      try {
        const chunk = await next;
        fill();
        return chunk;
      } catch (err) {
        close();
        throw err;
      }
    },
    recycle(chunk) {
      // Whole read buffers only (not a short last chunk's smaller one), one more than read ahead kept.
      if (!closed && chunk.byteOffset === 0 && chunk.buffer.byteLength === chunkBytes && spare.length < readAheadFor(sending) + 1) {
        spare.push(new Uint8Array(chunk.buffer, 0, chunkBytes));
      }
    },
    cancel: close,
  };
}

/** A directory's entries; none when it is gone (or is not a directory). */
async function readdirOrEmpty(path: string): Promise<string[]> {
  try {
    return await readdir(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw err;
  }
}

function isNotFound(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: string }).code === "ENOENT";
}
