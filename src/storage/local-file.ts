import { mkdir, open, readdir, rm, stat, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { digestHex, type Digest } from "../registry/reference.ts";
import { unzeroedBytes } from "../util/buffers.ts";
import type { PartialReader } from "./blob-store.ts";

/**
 * How old (since its last write) an upload file must be to count as left by a crash. A live
 * upload writes every few seconds at worst: a stalled upstream is given up after
 * --upstream-timeout.
 */
export const STALE_UPLOAD_FILE_MS = 60 * 60 * 1000;

/**
 * Makes `dir` and removes the upload files in it that a crash left behind, but not the ones
 * being written now: another process on the same data dir (a `stowage gc` or `import` next to
 * the server, a second server) may be downloading into it at this moment.
 */
export async function sweepUploadDir(dir: string, now = Date.now()): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const name of await readdir(dir)) {
    const path = join(dir, name);
    const s = await stat(path).catch(() => null);
    if (s && now - s.mtimeMs > STALE_UPLOAD_FILE_MS) await rm(path, { recursive: true, force: true });
  }
}

/**
 * The local file an upload writes (the filesystem store's temporary file, the S3 store's
 * spool). Writes are positional: the offset is fixed at the call, so several writes may be
 * in flight at once and still land in call order.
 */
export class UploadFile {
  private written = 0;

  private constructor(
    readonly handle: FileHandle,
    readonly path: string,
  ) {}

  /** A new file in `dir` for one upload of `digest`; uploads of one digest at once never share a file. */
  static async create(dir: string, digest: Digest): Promise<UploadFile> {
    const path = uploadFilePath(dir, digest);
    return new UploadFile(await open(path, "w+"), path);
  }

  /** Bytes handed to `write` so far (not all of them necessarily on disk yet). */
  get size(): number {
    return this.written;
  }

  write(chunk: Uint8Array): Promise<void> {
    const at = this.written;
    this.written += chunk.byteLength;
    return writeAt(this.handle, chunk, at);
  }

  /** Fills `buf` from `position`; the bytes must have been written. */
  readInto(buf: Uint8Array, position: number): Promise<Uint8Array> {
    return fillAt(this.handle, buf, position, `upload spool ${this.path}`);
  }

  /** A reader of what was written, with its own descriptor (see openFileReader). */
  openReader(): Promise<PartialReader> {
    return openFileReader(this.path);
  }

  /** Closes and removes the file; failures are ignored (start-up clears the directory). */
  async remove(): Promise<void> {
    await this.handle.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }
}

/** A fresh path in `dir` for one upload of `digest`. */
export function uploadFilePath(dir: string, digest: Digest): string {
  return join(dir, `${digestHex(digest)}.${crypto.randomUUID()}`);
}

/** Fills all of `buf` from `position` of `file` (one read may give less than asked); `file` names it in the error when it ends first. */
export async function fillAt(handle: FileHandle, buf: Uint8Array, position: number, file: string): Promise<Uint8Array> {
  let got = 0;
  while (got < buf.byteLength) {
    const { bytesRead } = await handle.read(buf, got, buf.byteLength - got, position + got);
    if (bytesRead === 0) throw new Error(`${file} is shorter than expected`);
    got += bytesRead;
  }
  return buf;
}

/** Writes all of `chunk` at `position` (one positional write may write less than asked). */
async function writeAt(handle: FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Reads the bytes written so far to an upload's local file. It holds its own
 * descriptor, so it keeps reading the same inode after commit renames or
 * abort unlinks the file, until it is closed.
 */
async function openFileReader(path: string): Promise<PartialReader> {
  const reader = await open(path, "r");
  return {
    async read(offset, length, into) {
      const buf = into ?? unzeroedBytes(length); // filled by the read; only what it read is passed on
      const { bytesRead } = await reader.read(buf, 0, length, offset);
      return bytesRead === buf.byteLength ? buf : buf.subarray(0, bytesRead);
    },
    close: () => reader.close(),
  };
}
