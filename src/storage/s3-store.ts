import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
} from "@aws-sdk/client-s3";
import { mkdir, open, rm, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../log.ts";
import type { ByteRange } from "../registry/range.ts";
import { digestAlgorithm, digestHex, type Digest } from "../registry/reference.ts";
import type { BlobStore, BlobUpload, PartialReader } from "./blob-store.ts";
import { openSpoolReader } from "./spool-reader.ts";

/** Part size of multipart uploads: the S3 minimum is 5 MiB, and 8 MiB keeps 10,000 parts above 78 GiB. */
export const PART_SIZE = 8 * 1024 * 1024;
/** Parts uploaded at once per blob; each holds one part in memory, so this bounds memory per upload. */
const PARTS_IN_FLIGHT = 2;
/** Multipart uploads older than this at start-up were left by a crash (no fetch lasts that long). */
const STALE_UPLOAD_MS = 60 * 60 * 1000;

export type S3StoreOptions = {
  bucket: string;
  /** Key prefix without leading or trailing slash; "" for the bucket root. */
  prefix: string;
  /** Custom endpoint (Ceph RGW, MinIO...); null for AWS. */
  endpoint: string | null;
  region: string;
  /** Omitted: the SDK's default chain (AWS_ACCESS_KEY_ID etc., profiles, instance roles). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Local directory for upload spools (followers of an in-flight fetch read from here). */
  spoolDir: string;
};

/**
 * Blobs in an S3 bucket under `<prefix>/blobs/<alg>/<hex>`.
 *
 * An upload goes to a local spool file (so clients joining an in-flight fetch read
 * from disk, as with the filesystem store) and, part by part as the spool fills,
 * into a multipart upload of the final key. S3 shows nothing under a key until
 * CompleteMultipartUpload (or a PutObject) finishes, and that happens only in
 * `commit()`, so the store invariant holds without a temporary key and a copy
 * (a copy would double the writes and fails above 5 GiB).
 */
export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly root: string;

  private constructor(private readonly opts: S3StoreOptions) {
    this.bucket = opts.bucket;
    this.root = opts.prefix === "" ? "blobs/" : `${opts.prefix}/blobs/`;
    this.description = `S3 bucket ${opts.bucket}${opts.prefix ? ` under ${opts.prefix}/` : ""} at ${opts.endpoint ?? `AWS ${opts.region}`}`;
    this.client = new S3Client({
      region: opts.region,
      ...(opts.endpoint ? { endpoint: opts.endpoint, forcePathStyle: true } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      // Other S3 implementations reject or mangle the newer default checksums.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      // Each blob served streams over its own connection; the default 50 would queue clients.
      requestHandler: { httpAgent: { keepAlive: true, maxSockets: 256 }, httpsAgent: { keepAlive: true, maxSockets: 256 } },
    });
  }

  /**
   * Checks the bucket can be reached, clears the local spool, and (in the
   * background) aborts multipart uploads a crash left behind.
   */
  static async open(opts: S3StoreOptions, log?: Logger): Promise<S3BlobStore> {
    const store = new S3BlobStore(opts);
    await rm(opts.spoolDir, { recursive: true, force: true });
    await mkdir(opts.spoolDir, { recursive: true });
    await store.check();
    void store.abortStaleUploads(Date.now() - STALE_UPLOAD_MS).then(
      (n) => n > 0 && log?.info("aborted multipart uploads left by an earlier run", { count: n }),
      (err) => log?.warn("could not list or abort stale multipart uploads", { error: err }),
    );
    return store;
  }

  /** The object key of a digest (exported for tests and operators). */
  keyOf(digest: Digest): string {
    return `${this.root}${digestAlgorithm(digest)}/${digestHex(digest)}`;
  }

  async stat(digest: Digest): Promise<{ size: number } | null> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }));
      return { size: head.ContentLength ?? 0 };
    } catch (err) {
      if (isMissingObject(err)) return null;
      throw err;
    }
  }

  async open(digest: Digest, range?: ByteRange): Promise<ReadableStream<Uint8Array> | null> {
    try {
      const got = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.keyOf(digest),
          ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
        }),
      );
      if (!got.Body) throw new Error(`S3 returned no body for ${digest}`);
      return got.Body.transformToWebStream() as ReadableStream<Uint8Array>;
    } catch (err) {
      if (isMissingObject(err)) return null;
      throw err;
    }
  }

  async put(digest: Digest, bytes: Uint8Array): Promise<void> {
    await this.client.send(
      new PutObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest), Body: bytes, ContentLength: bytes.byteLength }),
    );
  }

  async begin(digest: Digest): Promise<BlobUpload> {
    const path = join(this.opts.spoolDir, `${digestHex(digest)}.${crypto.randomUUID()}`);
    const handle = await open(path, "w+");
    return new S3Upload(this.client, this.bucket, this.keyOf(digest), handle, path);
  }

  async delete(digest: Digest): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }));
  }

  async check(): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  /** Aborts this store's multipart uploads started before `before` (epoch ms); returns how many. */
  async abortStaleUploads(before: number): Promise<number> {
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.client.send(
        new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.root, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
      );
      for (const u of page.Uploads ?? []) {
        if (!u.Key || !u.UploadId || (u.Initiated && u.Initiated.getTime() >= before)) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
        aborted++;
      }
      if (!page.IsTruncated) return aborted;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  /** Stops the client's keep-alive connections. */
  close(): void {
    this.client.destroy();
  }
}

class S3Upload implements BlobUpload {
  private offset = 0;
  /** Writes still in flight, by start offset: everything below the smallest is on disk. */
  private readonly pending = new Map<number, Promise<void>>();
  private uploadId: Promise<string> | null = null;
  private nextPart = 0; // offset of the first byte not yet handed to a part upload
  private readonly parts: Promise<CompletedPart>[] = [];
  private running = 0;
  private failure: unknown = null;
  private settled = false;
  private committed = false;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly key: string,
    private readonly handle: FileHandle,
    private readonly path: string,
  ) {}

  /** Positional like the filesystem store: the offset is fixed at the call. */
  write(chunk: Uint8Array): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failure);
    const at = this.offset;
    this.offset += chunk.byteLength;
    const done = (async () => {
      let written = 0;
      while (written < chunk.byteLength) {
        const { bytesWritten } = await this.handle.write(chunk, written, chunk.byteLength - written, at + written);
        written += bytesWritten;
      }
    })();
    this.pending.set(at, done);
    return done.then(
      () => {
        this.pending.delete(at);
        this.pump(false);
        // A failed part ends the fetch now rather than at commit.
        if (this.failure !== null) throw this.failure;
      },
      (err) => {
        this.pending.delete(at);
        throw err;
      },
    );
  }

  openReader(): Promise<PartialReader> {
    return openSpoolReader(this.path);
  }

  /** Bytes [0, n) are on disk. */
  private get onDisk(): number {
    let n = this.offset;
    for (const at of this.pending.keys()) n = Math.min(n, at);
    return n;
  }

  /** Starts part uploads for every full part on disk (and, at the end, the last short one). */
  private pump(final: boolean): void {
    if (this.settled && !final) return;
    const limit = this.onDisk;
    while (this.running < PARTS_IN_FLIGHT && this.failure === null) {
      const size = Math.min(PART_SIZE, limit - this.nextPart);
      if (size < PART_SIZE && !(final && size > 0)) return;
      const start = this.nextPart;
      this.nextPart += size;
      const number = this.parts.length + 1;
      this.running++;
      const part = this.uploadPart(number, start, size).finally(() => {
        this.running--;
        this.pump(final);
      });
      part.catch((err) => void (this.failure ??= err));
      this.parts.push(part);
    }
  }

  private async uploadPart(number: number, start: number, size: number): Promise<CompletedPart> {
    this.uploadId ??= this.client
      .send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: this.key }))
      .then((r) => r.UploadId ?? Promise.reject(new Error("S3 returned no UploadId")));
    const uploadId = await this.uploadId;
    const body = await this.readSpool(start, size);
    const r = await this.client.send(
      new UploadPartCommand({ Bucket: this.bucket, Key: this.key, UploadId: uploadId, PartNumber: number, Body: body, ContentLength: size }),
    );
    if (!r.ETag) throw new Error(`S3 returned no ETag for part ${number} of ${this.key}`);
    return { PartNumber: number, ETag: r.ETag };
  }

  private async readSpool(start: number, size: number): Promise<Uint8Array> {
    const buf = new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const { bytesRead } = await this.handle.read(buf, got, size - got, start + got);
      if (bytesRead === 0) throw new Error(`upload spool ${this.path} is shorter than expected`);
      got += bytesRead;
    }
    return buf;
  }

  async commit(): Promise<void> {
    if (this.settled) throw new Error("upload already committed or aborted");
    this.settled = true;
    try {
      await Promise.all(this.pending.values());
      if (this.failure !== null) throw this.failure;
      if (this.parts.length === 0 && this.offset < PART_SIZE) {
        // One part's worth or less: a single PutObject is as atomic and saves three requests.
        const body = await this.readSpool(0, this.offset);
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key, Body: body, ContentLength: body.byteLength }));
      } else {
        // Parts still pending are started as earlier ones finish; wait until all are.
        while (this.nextPart < this.offset || this.running > 0) {
          this.pump(true);
          await Promise.all(this.parts);
        }
        const parts = await Promise.all(this.parts);
        await this.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.bucket,
            Key: this.key,
            UploadId: await this.uploadId!,
            MultipartUpload: { Parts: parts },
          }),
        );
      }
    } catch (err) {
      await this.discard();
      throw err;
    }
    this.committed = true;
    await this.closeSpool();
  }

  async abort(): Promise<void> {
    if (this.committed) return;
    this.settled = true;
    await this.discard();
  }

  private discarding: Promise<void> | null = null;

  /** Removes the spool and the multipart upload; runs once. */
  private discard(): Promise<void> {
    this.discarding ??= (async () => {
      // Parts in flight would otherwise land after the abort and be kept (and billed).
      await Promise.allSettled(this.parts);
      const id = this.uploadId ? await this.uploadId.catch(() => null) : null;
      if (id) {
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: id }))
          .catch(() => {}); // the start-up sweep catches what this misses
      }
      await this.closeSpool();
    })();
    return this.discarding;
  }

  private async closeSpool(): Promise<void> {
    await this.handle.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }
}

/** A missing object (not a missing bucket, which is a configuration problem and must surface). */
function isMissingObject(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  if (e.name === "NoSuchBucket") return false;
  return e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404;
}
