import type { HasherFactory, Hasher } from "../digest/hasher.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import { digestAlgorithm, digestHex, type Digest } from "../registry/reference.ts";
import type { BlobStore, BlobUpload, PartialReader } from "../storage/blob-store.ts";
import type { UpstreamClient, UpstreamReply } from "../upstream/client.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { keys } from "./records.ts";
import { ChangeSignal, IdleTimer } from "./signal.ts";

/** Bytes a follower reads from the spool at a time. */
const FOLLOW_CHUNK = 256 * 1024;

export type BlobFetchDeps = {
  store: BlobStore;
  hashers: HasherFactory;
  kv: TypedKv;
  /** Longest silence from the upstream in the middle of a body before the fetch is given up. */
  idleTimeoutMs: number;
};

export type FetchSource = { client: UpstreamClient; repo: string };

export class DigestMismatchError extends Error {}

/**
 * One upstream download of one blob, shared by every client that wants it
 * while it runs.
 *
 * The upstream body is written to a store upload and hashed (in a worker) as
 * it arrives; clients follow the upload, reading what has been written so far
 * and waiting for more. So:
 *  - memory is bounded: nothing but the chunk in hand is held per client;
 *  - a slow or vanished client holds up nobody: it just reads later;
 *  - the store is the pacer: if it is slow, the upstream read slows with it
 *    (TCP backpressure) and so do the clients, and nothing piles up in memory;
 *  - the last byte is held back until the digest is verified, so on a
 *    mismatch or a broken upstream every client's response fails instead of
 *    ending cleanly, and nothing is committed.
 */
export class BlobFetch {
  state: "connecting" | "streaming" | "committed" | "failed" = "connecting";
  /** Expected size from the upstream's Content-Length (null if it sent none); the real size once committed. */
  size: number | null = null;
  written = 0;
  error: Error | null = null;
  /** Resolves once the upstream answered and followers can start; rejects if it did not. */
  readonly ready: Promise<void>;
  /** Resolves when the fetch has ended either way (see `state`). */
  readonly settled: Promise<void>;

  private readonly changed = new ChangeSignal();
  private reader: SharedReader | null = null;
  private markReady!: () => void;
  private failReady!: (err: Error) => void;

  constructor(
    readonly digest: Digest,
    readonly source: FetchSource,
    private readonly deps: BlobFetchDeps,
    private readonly log: Logger,
  ) {
    this.ready = new Promise<void>((resolve, reject) => {
      this.markReady = resolve;
      this.failReady = reject;
    });
    this.ready.catch(() => {}); // the error is also kept in `error`; nobody may be listening
    this.settled = this.run();
  }

  get committed(): boolean {
    return this.state === "committed";
  }

  /**
   * A stream of bytes [start, end) of the blob (end null: to the end), fed
   * as they arrive. Call after `ready` resolved.
   */
  follow(start: number, end: number | null): ReadableStream<Uint8Array> {
    const reader = this.reader;
    if (!reader) throw new Error("follow() before the fetch is ready");
    reader.acquire();
    let position = start;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        reader.release();
      }
    };
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          try {
            for (;;) {
              const stop = end ?? (this.state === "committed" ? this.written : Infinity);
              if (position >= stop) {
                release();
                controller.close();
                return;
              }
              if (this.state === "failed") throw this.error ?? new Error("upstream fetch failed");
              const limit = Math.min(stop, this.releasable());
              if (position < limit) {
                const chunk = await reader.read(position, Math.min(FOLLOW_CHUNK, limit - position));
                if (chunk.byteLength === 0) throw new Error("blob spool returned no bytes");
                position += chunk.byteLength;
                controller.enqueue(chunk);
                return;
              }
              await this.changed.wait();
            }
          } catch (err) {
            release();
            controller.error(err);
          }
        },
        cancel: release,
      },
      { highWaterMark: 1 },
    );
  }

  /** Bytes a follower may have: all of them once verified, else all but the last. */
  private releasable(): number {
    if (this.state === "committed") return this.written;
    if (this.size !== null) return Math.min(this.written, this.size - 1);
    return this.written - 1;
  }

  private async run(): Promise<void> {
    const { store, hashers, kv } = this.deps;
    const { client, repo } = this.source;
    let reply: UpstreamReply | null = null;
    let upload: BlobUpload | null = null;
    let hasher: Hasher | null = null;
    let idle: IdleTimer | null = null;
    let stalled: UpstreamError | null = null;
    const started = Date.now();
    try {
      reply = await client.blob(repo, this.digest, "GET", this.log);
      const length = reply.response.headers.get("content-length");
      this.size = length !== null && /^\d+$/.test(length) ? Number(length) : null;
      const body = reply.response.body;
      if (!body) throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent no body for ${this.digest}`);
      upload = await store.begin(this.digest);
      this.reader = new SharedReader(await upload.openReader());
      hasher = hashers.create(digestAlgorithm(this.digest));
      this.state = "streaming";
      this.markReady();

      const activeReply = reply;
      const seconds = this.deps.idleTimeoutMs / 1000;
      idle = new IdleTimer(this.deps.idleTimeoutMs, () => {
        stalled = new UpstreamError("timeout", `upstream ${client.upstream.name} sent nothing for ${seconds} s in the middle of ${this.digest}`);
        activeReply.abort(stalled);
      });
      const bodyReader = body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await bodyReader.read();
        } catch (cause) {
          throw stalled ??
            new UpstreamError("unreachable", `upstream ${client.upstream.name} broke the connection after ${this.written} bytes of ${this.digest}`, { cause });
        }
        if (chunk.done) break;
        const bytes = chunk.value;
        idle.touch();
        if (this.size !== null && this.written + bytes.byteLength > this.size) {
          throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent more than the ${this.size} bytes it announced for ${this.digest}`);
        }
        await Promise.all([upload.write(bytes), hasher.update(bytes)]);
        this.written += bytes.byteLength;
        this.changed.notify();
      }
      idle.stop();
      if (this.size !== null && this.written !== this.size) {
        throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent ${this.written} of the ${this.size} bytes it announced for ${this.digest}`);
      }
      const hex = await hasher.finish();
      hasher = null;
      if (hex !== digestHex(this.digest)) {
        throw new DigestMismatchError(`upstream ${client.upstream.name} sent bytes for ${this.digest} that hash to ${digestAlgorithm(this.digest)}:${hex}; nothing was cached`);
      }
      this.size = this.written;
      await upload.commit();
      upload = null;
      const now = Date.now();
      await kv.write(keys.blob(this.digest), { size: this.size, storedAt: now });
      await kv.write(keys.link(client.upstream.name, repo, this.digest), { linkedAt: now });
      this.state = "committed";
      this.log.info("blob cached", {
        digest: this.digest,
        upstream: client.upstream.name,
        repo,
        bytes: this.size,
        ms: Date.now() - started,
      });
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err));
      this.state = "failed";
      this.failReady(this.error);
      reply?.abort(this.error);
      hasher?.discard();
      await upload?.abort();
      const level = err instanceof UpstreamError && err.failure === "not-found" ? "debug" : "warn";
      this.log[level]("blob fetch failed", { digest: this.digest, upstream: client.upstream.name, repo, error: this.error, bytes: this.written });
    } finally {
      idle?.stop();
      this.changed.notify();
      this.reader?.release();
    }
  }
}

/** The spool reader, closed when the fetch and its last follower are done with it. */
class SharedReader {
  private refs = 1;
  constructor(private readonly reader: PartialReader) {}
  acquire(): void {
    if (this.refs === 0) throw new Error("blob spool already closed: serve the committed blob from the store");
    this.refs++;
  }
  release(): void {
    if (--this.refs === 0) this.reader.close().catch(() => {});
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.reader.read(offset, length);
  }
}
