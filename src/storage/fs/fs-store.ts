import { mkdir, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import type { ByteRange } from "../../registry/range.ts";
import { digestAlgorithm, digestHex, parseDigest, type Digest } from "../../registry/reference.ts";
import type { BlobStore, BlobUpload, PartialReader, StoredObject } from "../blob-store.ts";
import { freeBytes, type StatFs, systemStatFs } from "../disk-space.ts";
import { sweepUploadDir, UploadFile, uploadFilePath } from "../local-file.ts";
import { directStream, type DirectSource } from "../direct-body.ts";
import { sharedFileSource } from "./shared-file.ts";

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

/** Blob files being sent now, counted from their first read to their end. */
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
    const path = this.pathOf(digest);
    let handle: FileHandle;
    try {
      handle = await open(path, "r");
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
    let size: number;
    try {
      size = (await handle.stat()).size;
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
    return directStream(fileSource(path, handle, size, range?.start ?? 0, range ? range.end + 1 : size));
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
 * The bytes [start, end) of the blob file at `path` (`size` bytes, open as `handle`), in READ_CHUNK
 * reads shared with every other client sending that file now (see shared-file.ts),
 * readAheadFor() of them ahead of the consumer. The handle is closed at the end, on an error or
 * on cancel.
 */
export function fileSource(path: string, handle: FileHandle, size: number, start: number, end: number): DirectSource {
  return sharedFileSource(path, handle, size, start, end, {
    chunkBytes: READ_CHUNK,
    readAhead: () => readAheadFor(sending),
    onSending: (delta) => (sending += delta),
  });
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
