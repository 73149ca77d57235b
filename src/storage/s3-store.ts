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
import { freeBytes, systemStatFs } from "./disk-space.ts";
import { BufferFiller, BufferPool, unzeroedBytes } from "../util/buffers.ts";
import { withAbortDeadline } from "../util/deadline.ts";

/** Part size of multipart uploads: the S3 minimum is 5 MiB, and 8 MiB keeps 10,000 parts above 78 GiB. */
export const PART_SIZE = 8 * 1024 * 1024;
/** Parts uploaded at once per blob; each holds one part in memory, so this bounds memory per upload. */
const PARTS_IN_FLIGHT = 2;
/** Connecting to S3 takes longer than this only when it is down or unreachable. */
const CONNECT_TIMEOUT_MS = 5_000;
/**
 * A request whose answer has not started by then is given up (a GET's blob is then served from
 * upstream, a manifest is served uncached), and so is a connection on which nothing moves for
 * that long in the middle of a body or an upload part.
 */
const ANSWER_TIMEOUT_MS = 15_000;
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
  /** Local directory for upload spools (followers of an in-flight fetch read from here); null: no writable disk. */
  spoolDir: string | null;
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
      // A store that is down must be noticed in seconds, so pulls go on from upstream.
      requestHandler: {
        httpAgent: { keepAlive: true, maxSockets: 256 },
        httpsAgent: { keepAlive: true, maxSockets: 256 },
        connectionTimeout: CONNECT_TIMEOUT_MS,
        // Idle time on the socket: an S3 that accepts connections and then says nothing.
        requestTimeout: ANSWER_TIMEOUT_MS,
      },
    });
  }

  /**
   * Checks the bucket can be reached, clears the local spool, and (in the
   * background) aborts multipart uploads a crash left behind.
   */
  static async open(opts: S3StoreOptions, log?: Logger): Promise<S3BlobStore> {
    const store = new S3BlobStore(opts);
    if (opts.spoolDir !== null) {
      await rm(opts.spoolDir, { recursive: true, force: true });
      await mkdir(opts.spoolDir, { recursive: true });
    }
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
      const head = await this.bounded("a HEAD", (abortSignal) =>
        this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }), { abortSignal })
      );
      return { size: head.ContentLength ?? 0 };
    } catch (err) {
      if (isMissingObject(err)) return null;
      throw err;
    }
  }

  async open(digest: Digest, range?: ByteRange): Promise<ReadableStream<Uint8Array> | null> {
    try {
      // Bounded until the response starts (not after: a slow client may read the body slowly).
      const got = await this.bounded("a GET", (abortSignal) =>
        this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: this.keyOf(digest),
            ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
          }),
          { abortSignal },
        )
      );
      if (!got.Body) throw new Error(`S3 returned no body for ${digest}`);
      return pulledStream(got.Body);
    } catch (err) {
      if (isMissingObject(err)) return null;
      throw err;
    }
  }

  async put(digest: Digest, bytes: Uint8Array): Promise<void> {
    await this.bounded("a PUT", (abortSignal) =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest), Body: bytes, ContentLength: bytes.byteLength }), { abortSignal })
    );
  }

  /**
   * A small request on a client's path (manifest PUT, HEAD, readiness), bounded as a whole,
   * retries included: a stalled S3 must cost a pull seconds, not hang it.
   */
  private bounded<T>(what: string, send: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    return withAbortDeadline(ANSWER_TIMEOUT_MS, send, (cause) => new Error(`S3 did not answer ${what} within ${ANSWER_TIMEOUT_MS / 1000} s`, { cause }));
  }

  async begin(digest: Digest): Promise<BlobUpload> {
    const multipart = new Multipart(this.client, this.bucket, this.keyOf(digest));
    if (this.opts.spoolDir === null) return new MemoryUpload(multipart);
    const path = join(this.opts.spoolDir, `${digestHex(digest)}.${crypto.randomUUID()}`);
    const handle = await open(path, "w+");
    return new SpooledUpload(multipart, handle, path);
  }

  async delete(digest: Digest): Promise<void> {
    await this.bounded("a DELETE", (abortSignal) =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }), { abortSignal })
    );
  }

  /** The spool's disk; with no spool, uploads take no disk (parts are held in memory). */
  freeSpace(): Promise<number | null> {
    return this.opts.spoolDir === null ? Promise.resolve(null) : freeBytes(systemStatFs, this.opts.spoolDir);
  }

  async check(): Promise<void> {
    await this.bounded("a HEAD on the bucket", (abortSignal) => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal }));
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

/**
 * One multipart upload to a blob's final key. Parts go up as they are handed
 * over, at most PARTS_IN_FLIGHT at a time. A failed part does not fail the
 * caller's writes (clients are still served from what was received): it
 * makes `complete()` throw, so the blob is simply not cached.
 */
class Multipart {
  failure: unknown = null;
  private uploadId: Promise<string> | null = null;
  private readonly parts: Promise<CompletedPart>[] = [];
  private running = 0;
  private readonly slotFreed = new Set<() => void>();

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    readonly key: string,
  ) {}

  get partCount(): number {
    return this.parts.length;
  }

  get busy(): boolean {
    return this.running >= PARTS_IN_FLIGHT;
  }

  /** Resolves when fewer than PARTS_IN_FLIGHT parts are uploading. */
  async untilSlot(): Promise<void> {
    while (this.busy) await new Promise<void>((resolve) => this.slotFreed.add(resolve));
  }

  /**
   * Part buffers whose upload succeeded, for the next parts: fresh 8 MiB buffers for every
   * part of a large blob kept V8 holding dead ones (measured: ~40 MiB more RSS while uploading).
   * Only after success: a failed request may still have had its body in a socket write.
   */
  private readonly spare = new BufferPool(PART_SIZE, PARTS_IN_FLIGHT);

  /** A PART_SIZE buffer to fill, recycled where possible. */
  partBuffer(): Uint8Array {
    return this.spare.take();
  }

  /** Uploads the next part; `body` is read only when the part starts. */
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
    const r = await this.client.send(
      new UploadPartCommand({ Bucket: this.bucket, Key: this.key, UploadId: uploadId, PartNumber: number, Body: bytes, ContentLength: bytes.byteLength }),
    );
    if (!r.ETag) throw new Error(`S3 returned no ETag for part ${number} of ${this.key}`);
    return { PartNumber: number, ETag: r.ETag };
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

/**
 * Upload with a local spool: bytes go to a file (followers of the fetch read
 * it back), and each full part on disk is sent from there. S3 being slow or
 * down never slows the download or the clients; it only decides whether the
 * blob is cached in the end.
 */
class SpooledUpload implements BlobUpload {
  private offset = 0;
  /** Writes still in flight, by start offset: everything below the smallest is on disk. */
  private readonly pending = new Map<number, Promise<void>>();
  private nextPart = 0; // offset of the first byte not yet handed to a part upload
  private settled = false;
  private committed = false;

  constructor(
    private readonly multipart: Multipart,
    private readonly handle: FileHandle,
    private readonly path: string,
  ) {}

  /** Positional like the filesystem store: the offset is fixed at the call. */
  write(chunk: Uint8Array): Promise<void> {
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
    return done.finally(() => {
      this.pending.delete(at);
      this.pump(false);
    });
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
    while (!this.multipart.busy && this.multipart.failure === null) {
      const size = Math.min(PART_SIZE, limit - this.nextPart);
      if (size < PART_SIZE && !(final && size > 0)) return;
      const start = this.nextPart;
      this.nextPart += size;
      this.multipart.add(() => this.readSpool(start, size));
    }
  }

  private async readSpool(start: number, size: number): Promise<Uint8Array> {
    const buf = size === PART_SIZE ? this.multipart.partBuffer() : unzeroedBytes(size);
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
      if (this.multipart.partCount === 0 && this.offset < PART_SIZE) {
        // One part's worth or less: a single PutObject is as atomic and saves three requests.
        await this.multipart.put(await this.readSpool(0, this.offset));
      } else {
        // Parts not yet started go up as earlier ones finish.
        while (this.nextPart < this.offset && this.multipart.failure === null) {
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
    await this.closeSpool();
  }

  async abort(): Promise<void> {
    if (this.committed) return;
    this.settled = true;
    await this.discard();
  }

  private async discard(): Promise<void> {
    await this.multipart.abort();
    await this.closeSpool();
  }

  private async closeSpool(): Promise<void> {
    await this.handle.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }
}

/**
 * Upload with no local disk (Deno Deploy): bytes are gathered into one part in
 * memory and each full part is sent. Memory per upload is bounded at
 * (PARTS_IN_FLIGHT + 1) parts: a write that fills a part waits for a free
 * upload slot, which paces the download to S3. After a part failed, bytes are
 * dropped: the blob will not be cached, and the clients are served anyway.
 * There is no reader: the fetch serves followers from its memory window, and
 * those further behind from the store once committed.
 */
class MemoryUpload implements BlobUpload {
  /** Gathers bytes into PART_SIZE buffers; a full one waits for a free slot, then goes up. */
  private readonly part: BufferFiller;
  private tail: Promise<void> = Promise.resolve();
  private settled = false;
  private committed = false;

  constructor(private readonly multipart: Multipart) {
    this.part = new BufferFiller(PART_SIZE, () => multipart.partBuffer(), (full) => this.sendPart(full));
  }

  write(chunk: Uint8Array): Promise<void> {
    // Chained, so bytes land in call order even while a full part waits for a slot.
    this.tail = this.tail.then(() => this.append(chunk));
    return this.tail;
  }

  private async append(chunk: Uint8Array): Promise<void> {
    if (this.multipart.failure !== null) return;
    await this.part.push(chunk);
  }

  private async sendPart(bytes: Uint8Array): Promise<void> {
    await this.multipart.untilSlot();
    this.multipart.add(async () => bytes);
  }

  openReader(): Promise<PartialReader | null> {
    return Promise.resolve(null);
  }

  async commit(): Promise<void> {
    if (this.settled) throw new Error("upload already committed or aborted");
    this.settled = true;
    try {
      await this.tail;
      if (this.multipart.failure !== null) throw this.multipart.failure;
      const last = this.part.takePartial();
      if (this.multipart.partCount === 0) {
        await this.multipart.put(last ?? new Uint8Array(0));
      } else {
        if (last) await this.sendPart(last);
        await this.multipart.complete();
      }
    } catch (err) {
      await this.multipart.abort();
      throw err;
    } finally {
      this.part.release();
    }
    this.committed = true;
  }

  async abort(): Promise<void> {
    if (this.committed) return;
    this.settled = true;
    this.part.release();
    await this.multipart.abort();
  }
}

/**
 * The object body as a web stream that reads from S3 only as fast as the
 * client takes it. Not the SDK's transformToWebStream: that is Readable.toWeb,
 * which on Node 20 counts each chunk as 1 against a high-water mark of 16384,
 * so a slow client made it buffer nearly a whole blob in memory.
 */
function pulledStream(body: unknown): ReadableStream<Uint8Array> {
  if (body instanceof ReadableStream) return body as ReadableStream<Uint8Array>;
  const readable = body as AsyncIterable<Uint8Array> & { destroy(error?: Error): void };
  const chunks = readable[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const { done, value } = await chunks.next();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel(reason) {
        readable.destroy(reason instanceof Error ? reason : undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

/** A missing object (not a missing bucket, which is a configuration problem and must surface). */
function isMissingObject(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  if (e.name === "NoSuchBucket") return false;
  return e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404;
}
