import { unzeroedBytes } from "../../util/buffers.ts";
import type { BlobUpload, PartialReader } from "../blob-store.ts";
import type { UploadFile } from "../local-file.ts";
import { type Multipart, PART_SIZE } from "./multipart.ts";

/**
 * Parts uploading at once while the blob is still being received: none. Taking parts costs S3
 * CPU, and a local S3 (RGW beside Stowage) takes it from the cores the download needs: in the
 * bench on 2 cores a cold 1 GiB GET ran at ~0.55x the filesystem store's speed with parts going
 * up alongside (0.6x with one at a time), and at 0.85-1.0x with none, while the blob was stored
 * no later in the end (RGW takes ~135 MB/s either way). Clients are not kept waiting meanwhile:
 * the fetch serves them from the spool until the commit.
 */
const PARTS_WHILE_RECEIVING = 0;

/**
 * Upload with a local spool: bytes go to a file (followers of the fetch read
 * it back), and once the blob is received its parts are read from there and sent,
 * several at once. S3 being slow or
 * down never slows the download or the clients; it only decides whether the
 * blob is cached in the end.
 */
export class SpooledUpload implements BlobUpload {
  /** Writes still in flight, by start offset: everything below the smallest is on disk. */
  private readonly pending = new Map<number, Promise<void>>();
  private nextPart = 0; // offset of the first byte not yet handed to a part upload
  private settled = false;
  private committed = false;

  constructor(
    private readonly multipart: Multipart,
    private readonly spool: UploadFile,
  ) {}

  /** Positional like the filesystem store: the offset is fixed at the call. */
  write(chunk: Uint8Array): Promise<void> {
    const at = this.spool.size;
    const done = this.spool.write(chunk);
    this.pending.set(at, done);
    return done.finally(() => {
      this.pending.delete(at);
      this.pump(false);
    });
  }

  openReader(): Promise<PartialReader> {
    return this.spool.openReader();
  }

  get spoolPath(): string {
    return this.spool.path;
  }

  /** Bytes [0, n) are on disk. */
  private get onDisk(): number {
    let n = this.spool.size;
    for (const at of this.pending.keys()) n = Math.min(n, at);
    return n;
  }

  /** Starts part uploads for every full part on disk (and, at the end, the last short one). */
  private pump(final: boolean): void {
    if (this.settled && !final) return;
    const limit = this.onDisk;
    const most = final ? Infinity : PARTS_WHILE_RECEIVING;
    while (!this.multipart.busy && this.multipart.uploading < most && this.multipart.failure === null) {
      const size = Math.min(PART_SIZE, limit - this.nextPart);
      if (size < PART_SIZE && !(final && size > 0)) return;
      const start = this.nextPart;
      this.nextPart += size;
      this.multipart.add(() => this.readSpool(start, size));
    }
  }

  private readSpool(start: number, size: number): Promise<Uint8Array> {
    return this.spool.readInto(size === PART_SIZE ? this.multipart.partBuffer() : unzeroedBytes(size), start);
  }

  async commit(): Promise<void> {
    if (this.settled) throw new Error("upload already committed or aborted");
    this.settled = true;
    try {
      await Promise.all(this.pending.values());
      const size = this.spool.size;
      if (this.multipart.partCount === 0 && size < PART_SIZE) {
        // One part's worth or less: a single PutObject is as atomic and saves three requests.
        await this.multipart.put(await this.readSpool(0, size));
      } else {
        // Parts not yet started go up as earlier ones finish.
        while (this.nextPart < size && this.multipart.failure === null) {
          this.pump(true);
          await this.multipart.untilSlot();
        }
        await this.multipart.complete();
      }
    } catch (err) {
      await this.discard();
      throw err;
    }
    this.committed = true;
    await this.spool.remove();
  }

  async abort(): Promise<void> {
    if (this.committed) return;
    this.settled = true;
    await this.discard();
  }

  private async discard(): Promise<void> {
    await this.multipart.abort();
    await this.spool.remove();
  }
}
