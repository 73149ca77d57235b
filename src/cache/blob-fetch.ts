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
const FOLLOW_CHUNK = 1024 * 1024;
/** Written bytes kept in memory for followers near the live edge, per fetch. */
const WINDOW_BYTES = 4 * 1024 * 1024;

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
 * it arrives, in 1 MiB batches. Clients follow it: near the live edge from the
 * last few batches kept in memory, further behind from the upload's bytes on
 * disk (the spool), and they wait when they catch up. So:
 *  - memory is bounded: a small window of recent batches per fetch, whatever
 *    the number of clients (they share the same buffers, never copies);
 *  - a slow or vanished client holds up nobody: it falls behind the window
 *    and reads the spool later;
 *  - the store is the pacer: if it is slow, the upstream read slows with it
 *    (TCP backpressure) and so do the clients, and nothing piles up in memory;
 *  - the last byte is held back until the digest is verified, so on a
 *    mismatch or a broken upstream every client's response fails instead of
 *    ending cleanly, and nothing is committed.
 */
export class BlobFetch {
  state: "connecting" | "streaming" | "verified" | "committed" | "failed" = "connecting";
  /** Expected size from the upstream's Content-Length (null if it sent none); the real size once committed. */
  size: number | null = null;
  /** Bytes received from upstream and offered to followers (from memory while recent). */
  received = 0;
  /** Bytes durably in the store upload (readable through the spool reader). */
  written = 0;
  error: Error | null = null;
  /** Resolves once the upstream answered and followers can start; rejects if it did not. */
  readonly ready: Promise<void>;
  /** Resolves when the fetch has ended either way (see `state`). */
  readonly settled: Promise<void>;

  private readonly changed = new ChangeSignal();
  /**
   * The most recent batches, so followers at the live edge are fed from
   * memory without touching the disk. Holds every batch not yet written plus
   * up to WINDOW_BYTES of written ones; followers further behind read the spool.
   */
  private window: Array<{ start: number; bytes: Uint8Array }> = [];
  private windowBytes = 0;
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
              const stop = end ?? (this.state === "committed" || this.state === "verified" ? this.received : Infinity);
              if (position >= stop) {
                release();
                controller.close();
                return;
              }
              if (this.state === "failed") throw this.error ?? new Error("upstream fetch failed");
              const limit = Math.min(stop, this.releasable());
              if (position < limit) {
                const chunk = this.fromWindow(position, limit) ??
                  (position < this.written ? await reader.read(position, Math.min(FOLLOW_CHUNK, limit - position, this.written - position)) : null);
                if (chunk) {
                  if (chunk.byteLength === 0) throw new Error("blob spool returned no bytes");
                  position += chunk.byteLength;
                  controller.enqueue(chunk);
                  return;
                }
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
    if (this.state === "committed" || this.state === "verified") return this.received;
    if (this.size !== null) return Math.min(this.received, this.size - 1);
    return this.received - 1;
  }

  /** The bytes at `position` (up to `limit`) if they are still in memory; shared, never copied or mutated. */
  private fromWindow(position: number, limit: number): Uint8Array | null {
    for (const { start, bytes } of this.window) {
      if (position >= start && position < start + bytes.byteLength) {
        return bytes.subarray(position - start, Math.min(bytes.byteLength, limit - start));
      }
    }
    return null;
  }

  private remember(batch: Uint8Array): void {
    this.window.push({ start: this.received, bytes: batch });
    this.windowBytes += batch.byteLength;
    this.received += batch.byteLength;
    this.trimWindow();
  }

  private trimWindow(): void {
    // Unwritten batches (at most MAX_BATCHES_IN_FLIGHT + 1) always stay: disk readers cannot have them yet.
    for (;;) {
      const oldest = this.window[0];
      if (!oldest || this.windowBytes - oldest.bytes.byteLength < WINDOW_BYTES) return;
      if (oldest.start + oldest.bytes.byteLength > this.written) return; // not on disk yet: keep
      this.window.shift();
      this.windowBytes -= oldest.bytes.byteLength;
    }
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
      // Upstream chunks are small (~64 KiB); store writes and hash messages are
      // far cheaper in 1 MiB batches. One batch is written while the next fills.
      const sink = new BatchingSink((batch) => {
        this.remember(batch);
        this.changed.notify();
        // Both calls take their place synchronously (write position, hash order);
        // completion is awaited later, in order, by the sink.
        return Promise.all([upload!.write(batch), hasher!.update(batch)]).then(() => {});
      }, (batch) => {
        this.written += batch.byteLength;
        this.trimWindow();
        this.changed.notify();
      });
      let fromUpstream = 0;
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await bodyReader.read();
        } catch (cause) {
          throw stalled ??
            new UpstreamError("unreachable", `upstream ${client.upstream.name} broke the connection after ${fromUpstream} bytes of ${this.digest}`, { cause });
        }
        if (chunk.done) break;
        const bytes = chunk.value;
        idle.touch();
        fromUpstream += bytes.byteLength;
        if (this.size !== null && fromUpstream > this.size) {
          throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent more than the ${this.size} bytes it announced for ${this.digest}`);
        }
        await sink.push(bytes);
      }
      await sink.end();
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
      // Clients may have the last byte now; the fsync and rename of the commit need not delay them.
      this.state = "verified";
      this.changed.notify();
      await upload.commit();
      upload = null;
      const now = Date.now();
      await kv.write(keys.blob(this.digest), { size: this.size, storedAt: now });
      await kv.write(keys.link(client.upstream.name, repo, this.digest), { linkedAt: now });
      this.state = "committed";
      this.window = [];
      this.windowBytes = 0;
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
      this.window = [];
      this.windowBytes = 0;
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

/** Bytes per store write and hash message. */
const BATCH_BYTES = 1024 * 1024;
/** Batches written to the store concurrently; bounds the unwritten bytes held in memory. */
const MAX_BATCHES_IN_FLIGHT = 4;
/** A partly filled batch older than this is written anyway, so a slow upstream still reaches clients promptly. */
const BATCH_MAX_AGE_MS = 25;

/**
 * Batches live in shared memory where the platform has it, so the digest
 * worker reads them in place instead of receiving a copy. A batch is never
 * changed once flushed (followers, the store and the worker all read it).
 */
function newBatch(): Uint8Array {
  return typeof SharedArrayBuffer === "function" ? new Uint8Array(new SharedArrayBuffer(BATCH_BYTES)) : new Uint8Array(BATCH_BYTES);
}

/**
 * Gathers chunks into batches and hands each to `start`, keeping up to
 * MAX_BATCHES_IN_FLIGHT of them in flight so that store latency does not stall
 * the upstream read; `done` is called for each batch in order as they complete.
 */
class BatchingSink {
  private batch = newBatch();
  private filled = 0;
  private startedAt = 0;
  private readonly inFlight: Array<Promise<void>> = [];
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly start: (batch: Uint8Array) => Promise<void>,
    private readonly done: (batch: Uint8Array) => void,
  ) {}

  async push(chunk: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < chunk.byteLength) {
      if (this.filled === 0) this.startedAt = Date.now();
      const n = Math.min(BATCH_BYTES - this.filled, chunk.byteLength - offset);
      this.batch.set(chunk.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === BATCH_BYTES) await this.flush();
    }
    if (this.filled > 0 && Date.now() - this.startedAt >= BATCH_MAX_AGE_MS) await this.flush();
  }

  async end(): Promise<void> {
    await this.flush();
    await this.tail;
  }

  private async flush(): Promise<void> {
    if (this.filled === 0) return;
    const full = this.batch.subarray(0, this.filled);
    this.batch = newBatch();
    this.filled = 0;
    while (this.inFlight.length >= MAX_BATCHES_IN_FLIGHT) await this.inFlight.shift();
    const started = this.start(full);
    // Completion is reported in order even if the store finishes out of order.
    const previous = this.tail;
    this.tail = Promise.all([previous, started]).then(() => this.done(full));
    this.inFlight.push(this.tail);
    // A failure surfaces through `tail` at the next flush or at end(), not as an unhandled rejection.
    this.tail.catch(() => {});
  }
}
