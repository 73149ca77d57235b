import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import type { Logger } from "../../log.ts";
import type { ByteRange } from "../../registry/range.ts";
import { digestAlgorithm, digestHex, parseDigest, type Digest } from "../../registry/reference.ts";
import type { BlobStore, BlobUpload, StoredObject } from "../blob-store.ts";
import { freeBytes, systemStatFs } from "../disk-space.ts";
import { sweepUploadDir, UploadFile } from "../local-file.ts";
import { answeredInTime, createS3Client, isMissingObject, pulledStream, type S3Api, type S3ClientOptions } from "./client.ts";
import { DisklessUpload } from "./diskless-upload.ts";
import { Multipart, PARTS_IN_FLIGHT_SPOOLED } from "./multipart.ts";
import { SpooledUpload } from "./spooled-upload.ts";

/** Multipart uploads older than this at start-up were left by a crash (no fetch lasts that long). */
const STALE_UPLOAD_MS = 60 * 60 * 1000;

export type S3StoreOptions = S3ClientOptions & {
  bucket: string;
  /** Key prefix without leading or trailing slash; "" for the bucket root. */
  prefix: string;
  /** Local directory for upload spools (followers of an in-flight fetch read from here); null: no writable disk. */
  spoolDir: string | null;
  /** The client to send requests with; by default one built from the options (tests hand in their own). */
  client?: S3Api;
};

/**
 * Blobs in an S3 bucket under `<prefix>/blobs/<alg>/<hex>`.
 *
 * An upload goes to a local spool file (so clients joining an in-flight fetch read
 * from disk, as with the filesystem store) and, part by part as the spool fills,
 * into a multipart upload of the final key. S3 shows nothing under a key until
 * CompleteMultipartUpload (or a PutObject) finishes, and that happens only in
 * `commit()`, so the store invariant holds without a temporary key and a copy
 * (a copy would double the writes and fails above 5 GiB). With no local disk,
 * parts are gathered in memory instead (DisklessUpload).
 */
export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly client: S3Api;
  private readonly bucket: string;
  private readonly root: string;

  private constructor(private readonly opts: S3StoreOptions) {
    this.bucket = opts.bucket;
    this.root = opts.prefix === "" ? "blobs/" : `${opts.prefix}/blobs/`;
    this.description = `S3 bucket ${opts.bucket}${opts.prefix ? ` under ${opts.prefix}/` : ""} at ${opts.endpoint ?? `AWS ${opts.region}`}`;
    this.client = opts.client ?? createS3Client(opts);
  }

  /**
   * Checks the bucket can be reached, clears what a crash left in the local spool, and (in the
   * background) aborts multipart uploads a crash left behind.
   */
  static async open(opts: S3StoreOptions, log?: Logger): Promise<S3BlobStore> {
    const store = new S3BlobStore(opts);
    if (opts.spoolDir !== null) {
      await sweepUploadDir(opts.spoolDir);
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
      const head = await answeredInTime("a HEAD", (abortSignal) =>
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
      const got = await answeredInTime("a GET", (abortSignal) =>
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
    await answeredInTime("a PUT", (abortSignal) =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest), Body: bytes, ContentLength: bytes.byteLength }), { abortSignal })
    );
  }

  async begin(digest: Digest): Promise<BlobUpload> {
    const key = this.keyOf(digest);
    if (this.opts.spoolDir === null) return new DisklessUpload(new Multipart(this.client, this.bucket, key));
    return new SpooledUpload(new Multipart(this.client, this.bucket, key, PARTS_IN_FLIGHT_SPOOLED), await UploadFile.create(this.opts.spoolDir, digest));
  }

  async delete(digest: Digest): Promise<void> {
    // S3 answers a delete of a missing key with success as well.
    await answeredInTime("a DELETE", (abortSignal) =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }), { abortSignal })
    );
  }

  async *list(): AsyncIterable<StoredObject> {
    let token: string | undefined;
    for (;;) {
      const page = await answeredInTime("a LIST", (abortSignal) =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root, ContinuationToken: token }), { abortSignal })
      );
      for (const o of page.Contents ?? []) {
        const name = o.Key?.slice(this.root.length) ?? "";
        const slash = name.indexOf("/");
        const digest = slash > 0 ? parseDigest(`${name.slice(0, slash)}:${name.slice(slash + 1)}`) : null;
        if (!digest) continue;
        yield { digest, size: o.Size ?? 0, modifiedAt: o.LastModified?.getTime() ?? 0 };
      }
      if (!page.IsTruncated || !page.NextContinuationToken) return;
      token = page.NextContinuationToken;
    }
  }

  /** The spool's disk; with no spool, uploads take no disk (parts are held in memory). */
  freeSpace(): Promise<number | null> {
    return this.opts.spoolDir === null ? Promise.resolve(null) : freeBytes(systemStatFs, this.opts.spoolDir);
  }

  async check(): Promise<void> {
    await answeredInTime("a HEAD on the bucket", (abortSignal) => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal }));
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
