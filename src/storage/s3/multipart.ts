import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
} from "@aws-sdk/client-s3";
import { BufferPool } from "../../util/buffers.ts";
import { sleep } from "../../util/deadline.ts";
import { s3Status, type S3Api } from "./client.ts";

/** Part size of multipart uploads: the S3 minimum is 5 MiB, and 8 MiB keeps 10,000 parts above 78 GiB. */
export const PART_SIZE = 8 * 1024 * 1024;
/** Parts uploaded at once per blob without a spool, while the download waits for a free slot. */
export const PARTS_IN_FLIGHT_IN_MEMORY = 2;
/**
 * Parts uploaded at once per blob from the spool (after the download: see spooled-upload.ts).
 * RGW here took 1 GiB in ~8 s with four, ~9 s with two; but each holds an 8 MiB buffer, and
 * four put the peak RSS of a cold 1 GiB GET at 164-177 MiB, past the 160 MiB target.
 */
export const PARTS_IN_FLIGHT_SPOOLED = 2;
/** Tries per part, counted here (the SDK's own retries are off for parts, so that tries do not multiply). */
const PART_ATTEMPTS = 3;
const RETRY_DELAY_MS = 200;

/**
 * Parts are sent with an unsigned payload: signing one means SHA-256 over the whole part on the
 * main thread (~1.5 s per GiB here) and the S3 server checking it (as much again, on the same
 * cores when it is local), which made the commit trail the download by ~10 s. The request itself
 * stays signed; the bytes are those whose digest was verified, and over https TLS guards them.
 * (A stream body would be unsigned as well, but streaming a part from the spool file cost ~4x
 * the CPU of reading it into a reused buffer.)
 */
function unsignedPayload(command: UploadPartCommand): void {
  command.middlewareStack.add(
    (next) => (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
      return next(args);
    },
    { step: "build", name: "stowageUnsignedPayload" },
  );
}

/** A 4xx other than a timeout or throttling will fail again: not worth a retry. */
function retryable(err: unknown): boolean {
  const status = s3Status(err);
  return status === undefined || status >= 500 || status === 408 || status === 429;
}

/**
 * One multipart upload to a blob's final key. Parts go up as they are handed
 * over, at most `inFlight` at a time. A failed part does not fail the
 * caller's writes (clients are still served from what was received): it
 * makes `complete()` throw, so the blob is simply not cached.
 */
export class Multipart {
  failure: unknown = null;
  private uploadId: Promise<string> | null = null;
  private readonly parts: Promise<CompletedPart>[] = [];
  private running = 0;
  private readonly slotFreed = new Set<() => void>();

  constructor(
    private readonly client: S3Api,
    private readonly bucket: string,
    readonly key: string,
    private readonly inFlight = PARTS_IN_FLIGHT_IN_MEMORY,
  ) {
    this.spare = new BufferPool(PART_SIZE, inFlight);
  }

  get partCount(): number {
    return this.parts.length;
  }

  /** Parts uploading now. */
  get uploading(): number {
    return this.running;
  }

  get busy(): boolean {
    return this.running >= this.inFlight;
  }

  /** Resolves when fewer than `inFlight` parts are uploading. */
  async untilSlot(): Promise<void> {
    while (this.busy) await new Promise<void>((resolve) => this.slotFreed.add(resolve));
  }

  /**
   * Part buffers whose upload succeeded, for the next parts: fresh 8 MiB buffers for every
   * part of a large blob kept V8 holding dead ones (measured: ~40 MiB more RSS while uploading).
   * Only after success: a failed request may still have had its body in a socket write.
   */
  private readonly spare: BufferPool;

  /** A PART_SIZE buffer to fill, recycled where possible. */
  partBuffer(): Uint8Array {
    return this.spare.take();
  }

  /** Uploads the next part; `body` is called only when the part starts. */
  add(body: () => Promise<Uint8Array>): void {
    const number = this.parts.length + 1;
    this.running++;
    let bytes: Uint8Array | null = null;
    const part = this.uploadPart(number, async () => (bytes = await body())).then((done) => {
      // The SDK is done with the body once the request succeeded.
      if (bytes) this.spare.give(bytes.buffer);
      return done;
    }).finally(() => {
      this.running--;
      for (const wake of this.slotFreed) wake();
      this.slotFreed.clear();
    });
    part.catch((err) => void (this.failure ??= err));
    this.parts.push(part);
  }

  private async uploadPart(number: number, body: () => Promise<Uint8Array>): Promise<CompletedPart> {
    if (this.failure !== null) throw this.failure; // one failure dooms the upload: send nothing more
    this.uploadId ??= this.client
      .send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: this.key }))
      .then((r) => r.UploadId ?? Promise.reject(new Error("S3 returned no UploadId")));
    const uploadId = await this.uploadId;
    const bytes = await body();
    for (let attempt = 1; ; attempt++) {
      const command = new UploadPartCommand({
        Bucket: this.bucket,
        Key: this.key,
        UploadId: uploadId,
        PartNumber: number,
        Body: bytes,
        ContentLength: bytes.byteLength,
      });
      command.middlewareStack.remove("retryMiddleware");
      unsignedPayload(command);
      try {
        const r = await this.client.send(command);
        if (!r.ETag) throw new Error(`S3 returned no ETag for part ${number} of ${this.key}`);
        return { PartNumber: number, ETag: r.ETag };
      } catch (err) {
        if (attempt >= PART_ATTEMPTS || !retryable(err) || this.failure !== null) throw err;
        await sleep(RETRY_DELAY_MS * attempt);
      }
    }
  }

  /** Waits for every part, then makes the object visible. */
  async complete(): Promise<void> {
    await Promise.allSettled(this.parts);
    if (this.failure !== null) throw this.failure;
    const parts = await Promise.all(this.parts);
    await this.client.send(
      new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: await this.uploadId!, MultipartUpload: { Parts: parts } }),
    );
  }

  /** Single-request alternative for blobs smaller than one part. */
  async put(bytes: Uint8Array): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key, Body: bytes, ContentLength: bytes.byteLength }));
  }

  private aborting: Promise<void> | null = null;

  /** Aborts the upload (once); parts in flight are awaited first, or they would land afterwards and be kept (and billed). */
  abort(): Promise<void> {
    this.aborting ??= (async () => {
      await Promise.allSettled(this.parts);
      const id = this.uploadId ? await this.uploadId.catch(() => null) : null;
      if (!id) return;
      await this.client
        .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: id }))
        .catch(() => {}); // the start-up sweep catches what this misses
    })();
    return this.aborting;
  }
}
