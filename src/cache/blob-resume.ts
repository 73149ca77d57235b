/**
 * Reading a blob's upstream body to the end (see blob-fetch.ts): a connection
 * that breaks or stalls in the middle is resumed with a Range request, a few
 * times, from where it broke; an upstream that ignores Range is read again
 * from the start, dropping what we already have. Also the Range request of a
 * follower that fell behind and has no spool to read from.
 */
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import type { Digest } from "../registry/reference.ts";
import type { UpstreamReply } from "../upstream/client.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { sleep } from "../util/deadline.ts";
import { takePushed } from "../util/streams.ts";
import type { FetchSource } from "./fetch-source.ts";
import { IdleTimer } from "./idle-timer.ts";

/** Times a broken upstream connection is resumed with a Range request before the fetch fails. */
const MAX_RESUMES = 3;
const RESUME_BACKOFF_MS = 200;
/** Received bytes are added to the upstream byte counter in steps of this many. */
const COUNT_BYTES = 4 * 1024 * 1024;

/** A read from the upstream body failed: the connection broke or stalled. */
class ConnectionLost extends Error {
  constructor(readonly failure: UpstreamError) {
    super(failure.message);
  }
}

/**
 * One blob's upstream body, read to the end across resumes. The idle timer
 * aborts a connection that sends nothing for `timeoutMs` (the upstream
 * timeout), which counts as a broken connection.
 */
export class ResumableBody {
  /** The reply being read (after a resume, the resumed one): the one to abort when the fetch fails. */
  current: UpstreamReply;
  /** Bytes of the blob received (not counting any read again and dropped). */
  received = 0;
  private readonly idle: IdleTimer;
  private stalled: UpstreamError | null = null;

  constructor(
    private readonly source: FetchSource,
    private readonly digest: Digest,
    /** The announced length; without one, a broken connection cannot be resumed (we could not tell it ended early). */
    private readonly size: number | null,
    first: UpstreamReply,
    private readonly opts: { timeoutMs: number; metrics: StowageMetrics; log: Logger },
  ) {
    this.current = first;
    const name = source.client.upstream.name;
    this.idle = new IdleTimer(opts.timeoutMs, () => {
      this.stalled = new UpstreamError("timeout", `upstream ${name} sent nothing for ${opts.timeoutMs / 1000} s in the middle of ${digest}`);
      this.current.abort(this.stalled);
    });
  }

  /** Feeds every byte of the blob, in order, to `onBytes`; throws what ended the download otherwise. */
  async read(onBytes: (bytes: Uint8Array) => void | Promise<void>): Promise<void> {
    const { client, repo } = this.source;
    const { metrics, log } = this.opts;
    const name = client.upstream.name;
    let skip = 0; // bytes to drop when a resumed response starts from 0 (the upstream ignored Range)
    // Received bytes are counted in the metrics a few MiB at a time, not per chunk.
    let uncounted = 0;
    const count = () => {
      if (uncounted > 0) metrics.upstreamBytes.inc({ upstream: name }, uncounted);
      uncounted = 0;
    };
    for (let resumes = 0; ; ) {
      try {
        await this.readBody(this.current.response, (chunk) => {
          let bytes = chunk;
          if (skip > 0) {
            const dropped = Math.min(skip, bytes.byteLength);
            skip -= dropped;
            bytes = bytes.subarray(dropped);
            if (bytes.byteLength === 0) return;
          }
          this.received += bytes.byteLength;
          uncounted += bytes.byteLength;
          if (uncounted >= COUNT_BYTES) count();
          return onBytes(bytes);
        });
        count();
        if (this.size === null || this.received >= this.size) return;
        throw new ConnectionLost(new UpstreamError("unreachable", `upstream ${name} ended ${this.digest} after ${this.received} of ${this.size} bytes`));
      } catch (err) {
        count();
        // Only a broken or stalled connection is worth resuming; a store failure or a lying upstream is not.
        const resumable = err instanceof ConnectionLost && this.size !== null && resumes < MAX_RESUMES;
        const failure = err instanceof ConnectionLost ? err.failure : err;
        if (!resumable) throw failure;
        resumes++;
        this.stalled = null;
        metrics.resumes.inc({ upstream: name });
        log.warn("upstream connection broke mid-blob; resuming with a Range request", {
          digest: this.digest,
          upstream: name,
          at: this.received,
          of: this.size,
          attempt: resumes,
          error: failure,
        });
        this.idle.touch();
        await sleep(RESUME_BACKOFF_MS * 2 ** (resumes - 1));
        this.current = await client.blob(repo, this.digest, "GET", log, this.received);
        this.idle.touch();
        const resumedAt = resumedOffset(this.current.response);
        if (resumedAt === this.received) skip = 0;
        else if (resumedAt === 0) skip = this.received; // Range ignored: read again from the start, dropping what we have
        else throw new UpstreamError("bad-response", `upstream ${name} answered a resume at ${this.received} with bytes from ${resumedAt}`);
      }
    }
  }

  /** Stops watching for silence (the body was read, or the fetch ended). */
  stop(): void {
    this.idle.stop();
  }

  /** Feeds a response body to `onBytes`; a broken or stalled connection becomes ConnectionLost. */
  private async readBody(response: Response, onBytes: (bytes: Uint8Array) => void | Promise<void>): Promise<void> {
    const name = this.source.client.upstream.name;
    if (!response.body) throw new UpstreamError("bad-response", `upstream ${name} sent no body for ${this.digest}`);
    const pushed = takePushed(response.body);
    if (pushed) {
      // Chunks straight from the runtime's HTTP client (Node): no stream layers per chunk.
      let refused: { err: unknown } | null = null; // onBytes threw: that, not a lost connection
      try {
        await pushed.pipe((chunk) => {
          this.idle.touch();
          let paced: void | Promise<void>;
          try {
            paced = onBytes(chunk);
          } catch (err) {
            refused = { err };
            throw err;
          }
          return paced?.catch((err: unknown) => {
            refused = { err };
            throw err;
          });
        });
      } catch (cause) {
        if (refused) throw (refused as { err: unknown }).err;
        throw new ConnectionLost(
          this.stalled ?? new UpstreamError("unreachable", `upstream ${name} broke the connection in the middle of ${this.digest}`, { cause }),
        );
      }
      return;
    }
    const reader = response.body.getReader();
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (cause) {
        throw new ConnectionLost(
          this.stalled ?? new UpstreamError("unreachable", `upstream ${name} broke the connection in the middle of ${this.digest}`, { cause }),
        );
      }
      if (chunk.done) return;
      this.idle.touch();
      await onBytes(chunk.value);
    }
  }
}

/** Bytes [position, last] of a blob straight from upstream, with a Range request. */
export async function rangeFromUpstream(
  source: FetchSource,
  digest: Digest,
  position: number,
  last: number,
  log: Logger,
): Promise<ReadableStream<Uint8Array>> {
  const { client, repo } = source;
  const reply = await client.blob(repo, digest, "GET", log, position);
  const from = resumedOffset(reply.response);
  if (from === null || !reply.response.body) {
    reply.abort(new Error("unusable answer"));
    throw new UpstreamError("bad-response", `upstream ${client.upstream.name} answered a Range request for ${digest} with status ${reply.response.status}`);
  }
  return sliceStream(reply.response.body, position - from, last + 1 - position);
}

/** Where a (possibly partial) response starts: the Content-Range start for 206, 0 for 200. */
function resumedOffset(response: Response): number | null {
  if (response.status === 200) return 0;
  const match = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(response.headers.get("content-range") ?? "");
  return response.status === 206 && match ? Number(match[1]) : null;
}

/** `length` bytes of `body` after skipping `skip` (an upstream that ignored Range sends from 0). */
function sliceStream(body: ReadableStream<Uint8Array>, skip: number, length: number): ReadableStream<Uint8Array> {
  let toSkip = skip;
  let left = length;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (toSkip >= chunk.byteLength) {
          toSkip -= chunk.byteLength;
          return;
        }
        const part = chunk.subarray(toSkip, toSkip + left);
        toSkip = 0;
        left -= part.byteLength;
        if (part.byteLength > 0) controller.enqueue(part);
        if (left === 0) controller.terminate();
      },
      flush() {
        if (left > 0) throw new Error(`upstream ended ${left} bytes short of the requested range`);
      },
    }),
  );
}
