// An in-memory S3 for store tests: just the commands the S3 blob store sends, with S3's
// rules where the store relies on them (nothing visible before CompleteMultipartUpload,
// parts of at least 5 MiB but the last, ETags checked, 404 error names as the SDK gives them).
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import type { S3Api } from "../../src/storage/s3/client.ts";

const MIN_PART_BYTES = 5 * 1024 * 1024;

/** Keys per ListObjectsV2 page: small, so that paging is exercised (S3's own is 1000). */
const LIST_PAGE = 3;

type Upload = { key: string; initiated: Date; parts: Map<number, { etag: string; bytes: Uint8Array }> };

function s3Error(name: string, status: number, message = name): Error {
  return Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status } });
}

export class FakeS3 {
  readonly objects = new Map<string, Uint8Array>();
  /** When each object was written. */
  readonly written = new Map<string, Date>();
  readonly uploads = new Map<string, Upload>();
  /** Command names in the order received, e.g. "PutObjectCommand". */
  readonly sent: string[] = [];
  /** Command names that fail (with a 503) while listed here. */
  readonly failing = new Set<string>();
  /** Once false, every request answers as for a bucket that does not exist. */
  bucketExists = true;

  constructor(readonly bucket: string) {}

  /** The fake as the store's client type. */
  get client(): S3Api {
    return this as unknown as S3Api;
  }

  destroy(): void {}

  async send(command: { input: Record<string, unknown> }, options?: { abortSignal?: AbortSignal }): Promise<unknown> {
    const name = command.constructor.name;
    this.sent.push(name);
    // Answer on a later turn, as a network round trip does.
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (options?.abortSignal?.aborted) throw Object.assign(new Error("Request aborted"), { name: "AbortError" });
    if (this.failing.has(name)) throw s3Error("ServiceUnavailable", 503, `${name} failed (injected)`);
    const input = command.input;
    if (input.Bucket !== this.bucket || !this.bucketExists) throw s3Error(command instanceof HeadBucketCommand ? "NotFound" : "NoSuchBucket", 404);
    const key = String(input.Key ?? "");

    if (command instanceof HeadBucketCommand) return {};
    if (command instanceof HeadObjectCommand) {
      const bytes = this.objects.get(key);
      if (!bytes) throw s3Error("NotFound", 404);
      return { ContentLength: bytes.byteLength };
    }
    if (command instanceof GetObjectCommand) {
      const bytes = this.objects.get(key);
      if (!bytes) throw s3Error("NoSuchKey", 404);
      const range = /^bytes=(\d+)-(\d+)$/.exec(String(input.Range ?? ""));
      const body = range ? bytes.subarray(Number(range[1]), Number(range[2]) + 1) : bytes;
      // A Node stream in 64 KiB chunks, like the SDK's body on Node.
      const chunks: Uint8Array[] = [];
      for (let o = 0; o < body.byteLength; o += 65_536) chunks.push(body.slice(o, o + 65_536));
      return { Body: Readable.from(chunks), ContentLength: body.byteLength };
    }
    if (command instanceof PutObjectCommand) {
      this.objects.set(key, new Uint8Array(input.Body as Uint8Array));
      this.written.set(key, new Date());
      return { ETag: `"${randomUUID()}"` };
    }
    if (command instanceof DeleteObjectCommand) {
      this.objects.delete(key);
      this.written.delete(key);
      return {};
    }
    if (command instanceof ListObjectsV2Command) {
      // Keys in order, a page at a time, the continuation token being the last key given.
      const prefix = String(input.Prefix ?? "");
      const after = String(input.ContinuationToken ?? "");
      const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix) && k > after).sort();
      const page = keys.slice(0, LIST_PAGE);
      const Contents = page.map((Key) => ({ Key, Size: this.objects.get(Key)!.byteLength, LastModified: this.written.get(Key) }));
      const truncated = keys.length > LIST_PAGE;
      return { Contents, KeyCount: page.length, IsTruncated: truncated, ...(truncated ? { NextContinuationToken: page.at(-1) } : {}) };
    }
    if (command instanceof CreateMultipartUploadCommand) {
      const id = randomUUID();
      this.uploads.set(id, { key, initiated: new Date(), parts: new Map() });
      return { UploadId: id };
    }
    const upload = this.uploads.get(String(input.UploadId ?? ""));
    if (command instanceof UploadPartCommand) {
      if (!upload || upload.key !== key) throw s3Error("NoSuchUpload", 404);
      const etag = `"${randomUUID()}"`;
      upload.parts.set(Number(input.PartNumber), { etag, bytes: new Uint8Array(input.Body as Uint8Array) });
      return { ETag: etag };
    }
    if (command instanceof CompleteMultipartUploadCommand) {
      if (!upload || upload.key !== key) throw s3Error("NoSuchUpload", 404);
      const listed = (input.MultipartUpload as { Parts: Array<{ PartNumber: number; ETag: string }> }).Parts;
      const parts = listed.map((p, i) => {
        const part = upload.parts.get(p.PartNumber);
        if (!part || part.etag !== p.ETag || (i > 0 && listed[i - 1]!.PartNumber >= p.PartNumber)) throw s3Error("InvalidPart", 400);
        if (i < listed.length - 1 && part.bytes.byteLength < MIN_PART_BYTES) throw s3Error("EntityTooSmall", 400);
        return part.bytes;
      });
      const whole = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
      let at = 0;
      for (const p of parts) {
        whole.set(p, at);
        at += p.byteLength;
      }
      this.uploads.delete(String(input.UploadId));
      this.objects.set(key, whole);
      this.written.set(key, new Date());
      return {};
    }
    if (command instanceof AbortMultipartUploadCommand) {
      if (!upload) throw s3Error("NoSuchUpload", 404);
      this.uploads.delete(String(input.UploadId));
      return {};
    }
    if (command instanceof ListMultipartUploadsCommand) {
      const prefix = String(input.Prefix ?? "");
      const Uploads = [...this.uploads].filter(([, u]) => u.key.startsWith(prefix)).map(([UploadId, u]) => ({ Key: u.key, UploadId, Initiated: u.initiated }));
      return { Uploads, IsTruncated: false };
    }
    throw new Error(`the fake S3 does not know ${name}`);
  }
}
