import { S3Client } from "@aws-sdk/client-s3";
import { withAbortDeadline } from "../../util/deadline.ts";
import type { S3Credentials } from "../storage-config.ts";

/** Connecting to S3 takes longer than this only when it is down or unreachable. */
const CONNECT_TIMEOUT_MS = 5_000;
/**
 * A request whose answer has not started by then is given up (a GET's blob is then served from
 * upstream, a manifest is served uncached), and so is a connection on which nothing moves for
 * that long in the middle of a body or an upload part.
 */
export const ANSWER_TIMEOUT_MS = 15_000;

/** What the store uses of the SDK client; tests hand in an in-memory one. */
export type S3Api = Pick<S3Client, "send" | "destroy">;

export type S3ClientOptions = {
  /** Custom endpoint (Ceph RGW, MinIO...); null for AWS. */
  endpoint: string | null;
  region: string;
  /** Omitted: the SDK's default chain (AWS_ACCESS_KEY_ID etc., profiles, instance roles). */
  credentials?: S3Credentials;
};

export function createS3Client(opts: S3ClientOptions): S3Client {
  return new S3Client({
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
 * A small request on a client's path (manifest PUT, HEAD, readiness, the start of a GET),
 * bounded as a whole, retries included: a stalled S3 must cost a pull seconds, not hang it.
 */
export function answeredInTime<T>(what: string, send: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
  return withAbortDeadline(ANSWER_TIMEOUT_MS, send, (cause) => new Error(`S3 did not answer ${what} within ${ANSWER_TIMEOUT_MS / 1000} s`, { cause }));
}

/** The HTTP status of an S3 error, if the server answered at all. */
export function s3Status(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

/** A missing object (not a missing bucket, which is a configuration problem and must surface). */
export function isMissingObject(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const name = (err as { name?: string }).name;
  if (name === "NoSuchBucket") return false;
  return name === "NoSuchKey" || name === "NotFound" || s3Status(err) === 404;
}

/**
 * The object body as a web stream that reads from S3 only as fast as the
 * client takes it. Not the SDK's transformToWebStream: that is Readable.toWeb,
 * which on Node 20 counts each chunk as 1 against a high-water mark of 16384,
 * so a slow client made it buffer nearly a whole blob in memory.
 */
export function pulledStream(body: unknown): ReadableStream<Uint8Array> {
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
