import type { HasherFactory, Hasher } from "../digest/hasher.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { RegistryError } from "../registry/errors.ts";
import { digestAlgorithm, digestHex, type Digest } from "../registry/reference.ts";
import type { BlobStore, BlobUpload, PartialReader } from "../storage/blob-store.ts";
import type { UpstreamClient, UpstreamReply } from "../upstream/client.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import type { FetchLeases, HeldLease } from "./fetch-lease.ts";
import { BlobRecord, LinkRecord } from "./records.ts";
import { ChangeSignal, IdleTimer } from "./signal.ts";
import { unzeroedBytes } from "../bytes.ts";

/** Bytes a follower reads from the spool at a time. */
const FOLLOW_CHUNK = 1024 * 1024;
/** Written bytes kept in memory for followers near the live edge, per fetch. */
const WINDOW_BYTES = 4 * 1024 * 1024;

export type BlobFetchDeps = {
  store: BlobStore;
  metrics: StowageMetrics;
  hashers: HasherFactory;
  kv: TypedKv;
  /** Longest silence from the upstream in the middle of a body before the fetch is given up. */
  idleTimeoutMs: number;
  leases: FetchLeases;
  /** Largest blob downloaded (--max-blob-size); default DEFAULT_MAX_BLOB_BYTES. */
  maxBlobBytes?: number;
  /** Free disk space spooling leaves alone (--disk-reserve); default DEFAULT_DISK_RESERVE_BYTES. */
  diskReserveBytes?: number;
  /** Bytes spooled between two free-space checks; default DISK_CHECK_BYTES. */
  diskCheckBytes?: number;
};

export const DEFAULT_MAX_BLOB_BYTES = 32 * 1024 ** 3;
export const DEFAULT_DISK_RESERVE_BYTES = 512 * 1024 ** 2;
/** Free space is looked at again after this many bytes were spooled (a statfs call is cheap; a full disk is not). */
const DISK_CHECK_BYTES = 64 * 1024 ** 2;

/**
 * Downloads spooling to each store's disk right now: a new download counts
 * the bytes they announced and have not written yet as taken, so parallel
 * pulls that each fit alone cannot fill the disk together.
 */
const spooling = new WeakMap<BlobStore, Set<BlobFetch>>();

export type FetchSource = { client: UpstreamClient; repo: string };

export class DigestMismatchError extends Error {}
export class StoreError extends Error {}

/**
 * A blob above --max-blob-size. A RegistryError, so a client asking before any
 * byte was sent gets it as is (403 DENIED: a retry cannot succeed); once the
 * body has started (no Content-Length), the response breaks and this goes to the log.
 */
export class BlobTooLargeError extends RegistryError {
  constructor(message: string) {
    super("DENIED", message, { status: 403 });
  }
}

/** "1.5 GiB": sizes in messages an operator reads. */
export function formatBytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} bytes` : `${Number(value.toFixed(1))} ${units[unit]}`;
}

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
 *    ending cleanly, and nothing is committed;
 *  - a store that fails to keep the blob fails no client: the fetch ends
 *    "uncached", with every client served from upstream all the same; so
 *    does a disk that runs short of --disk-reserve, checked before spooling
 *    and every DISK_CHECK_BYTES while it goes on;
 *  - no blob above --max-blob-size is downloaded: a declared length above it
 *    is refused, and a body without one is cut off once it passes it;
 *  - instances sharing a KV take a lease first: while another instance
 *    fetches the blob, this one waits for it to be stored and serves it from
 *    the store ("committed" without a download).
 */
export class BlobFetch {
  state: "connecting" | "streaming" | "verified" | "committed" | "uncached" | "failed" = "connecting";
  /** Expected size from the upstream's Content-Length (null if it sent none); the real size once committed. */
  size: number | null = null;
  /** Bytes received from upstream and offered to followers (from memory while recent). */
  received = 0;
  /** Bytes through the store stage, in order: in the store upload, or passed over once spooling stopped. */
  written = 0;
  /** Where spooling stopped for lack of disk space (bytes from there on are not in the store); null while it goes on. */
  private spoolEnd: number | null = null;
  /** Why spooling stopped, for the log line at the end. */
  private noRoom: Record<string, unknown> | null = null;
  private spaceCheckedAt = 0;
  private checkingSpace = false;
  error: Error | null = null;
  /** Resolves once the upstream answered and followers can start; rejects if it did not. */
  readonly ready: Promise<void>;
  /** Resolves when the fetch has ended either way (see `state`). */
  readonly settled: Promise<void>;

  private readonly changed = new ChangeSignal();
  /**
   * The most recent upstream chunks, so followers at the live edge are fed
   * from memory without touching the disk. Holds every chunk not yet written
   * plus up to WINDOW_BYTES of written ones; followers further behind read the spool.
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
    /** The store failed to read the blob it holds: download it anyway rather than wait on the store. */
    private readonly opts: { evenIfStored: boolean } = { evenIfStored: false },
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
    if (this.state === "connecting") throw new Error("follow() before the fetch is ready");
    const reader = this.reader;
    reader?.acquire();
    let position = start;
    let released = false;
    // Where a follower continues when it fell behind the memory window and there is no spool.
    let rest: ReadableStreamDefaultReader<Uint8Array> | null = null;
    const release = () => {
      if (!released) {
        released = true;
        reader?.release();
      }
      rest?.cancel().catch(() => {});
    };
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          try {
            for (;;) {
              if (rest) {
                const next = await rest.read();
                if (next.done) {
                  release();
                  controller.close();
                } else controller.enqueue(next.value);
                return;
              }
              const stop = end ?? (this.complete ? this.received : Infinity);
              if (position >= stop) {
                release();
                controller.close();
                return;
              }
              if (this.state === "failed") throw this.error ?? new Error("upstream fetch failed");
              const limit = Math.min(stop, this.releasable());
              if (position < limit) {
                const spooled = this.spooled;
                const chunk = this.fromWindow(position, limit) ??
                  (reader && position < spooled ? await reader.read(position, Math.min(FOLLOW_CHUNK, limit - position, spooled - position)) : null);
                if (chunk) {
                  if (chunk.byteLength === 0) throw new Error("blob spool returned no bytes");
                  position += chunk.byteLength;
                  controller.enqueue(chunk);
                  return;
                }
                // Unwritten bytes are always in the window, so these were written and dropped from it:
                // with no spool, or past where spooling stopped, they come from elsewhere.
                if (!reader || position < this.written) {
                  rest = (await this.restFrom(position, end)).getReader();
                  continue;
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

  /** Bytes readable through the spool reader. */
  private get spooled(): number {
    return this.spoolEnd === null ? this.written : Math.min(this.written, this.spoolEnd);
  }

  /** Verified: every byte received is good and may be served. */
  private get complete(): boolean {
    return this.state === "verified" || this.state === "committed" || this.state === "uncached";
  }

  /**
   * Bytes [position, end) for a follower that fell behind the memory window
   * where there is no spool: from the store once the blob is committed, or,
   * if the store could not keep it, from upstream with a Range request.
   */
  private async restFrom(position: number, end: number | null): Promise<ReadableStream<Uint8Array>> {
    await this.settled;
    const last = (end ?? this.received) - 1;
    if (this.state === "committed") {
      const stored = await this.deps.store.open(this.digest, { start: position, end: last }).catch(() => null);
      if (stored) return stored;
    } else if (this.state !== "uncached") {
      throw this.error ?? new Error("upstream fetch failed");
    }
    const { client, repo } = this.source;
    this.deps.metrics.storeBypass.inc({ op: "read" });
    const reply = await client.blob(repo, this.digest, "GET", this.log, position);
    const from = resumedOffset(reply.response);
    if (from === null || !reply.response.body) {
      reply.abort(new Error("unusable answer"));
      throw new UpstreamError("bad-response", `upstream ${client.upstream.name} answered a Range request for ${this.digest} with status ${reply.response.status}`);
    }
    return sliceStream(reply.response.body, position - from, last + 1 - position);
  }

  /** Bytes a follower may have: all of them once verified, else all but the last. */
  private releasable(): number {
    if (this.complete) return this.received;
    if (this.size !== null) return Math.min(this.received, this.size - 1);
    return this.received - 1;
  }

  /** The bytes at `position` (up to `limit`) if they are still in memory; shared, never copied or mutated. */
  private fromWindow(position: number, limit: number): Uint8Array | null {
    // Entries are contiguous and ordered by offset: binary search.
    let lo = 0;
    let hi = this.window.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const { start, bytes } = this.window[mid]!;
      if (position < start) hi = mid - 1;
      else if (position >= start + bytes.byteLength) lo = mid + 1;
      else return bytes.subarray(position - start, Math.min(bytes.byteLength, limit - start));
    }
    return null;
  }

  private remember(chunk: Uint8Array): void {
    this.window.push({ start: this.received, bytes: chunk });
    this.windowBytes += chunk.byteLength;
    this.received += chunk.byteLength;
    this.trimWindow();
  }

  private trimWindow(): void {
    // Unwritten chunks (at most MAX_UNWRITTEN_BYTES) always stay: disk readers cannot have them yet.
    for (;;) {
      const oldest = this.window[0];
      if (!oldest || this.windowBytes - oldest.bytes.byteLength < WINDOW_BYTES) return;
      if (oldest.start + oldest.bytes.byteLength > this.written) return; // not on disk yet: keep
      this.window.shift();
      this.windowBytes -= oldest.bytes.byteLength;
    }
  }

  /** Feeds a response body to `onBytes`; a broken or stalled connection becomes ConnectionLost. */
  private async readBody(
    response: Response,
    idle: IdleTimer,
    stalled: () => UpstreamError | null,
    onBytes: (bytes: Uint8Array) => Promise<void>,
  ): Promise<void> {
    const name = this.source.client.upstream.name;
    if (!response.body) throw new UpstreamError("bad-response", `upstream ${name} sent no body for ${this.digest}`);
    const reader = response.body.getReader();
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (cause) {
        throw new ConnectionLost(
          stalled() ?? new UpstreamError("unreachable", `upstream ${name} broke the connection in the middle of ${this.digest}`, { cause }),
        );
      }
      if (chunk.done) return;
      idle.touch();
      await onBytes(chunk.value);
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
    let lease: HeldLease | null = null;
    const started = Date.now();
    try {
      const claim = await this.leaseOrStored();
      if (claim === "stored") {
        await this.linkStoredBlob();
        this.state = "committed";
        this.markReady();
        return;
      }
      lease = claim;
      reply = await client.blob(repo, this.digest, "GET", this.log);
      const length = reply.response.headers.get("content-length");
      this.size = length !== null && /^\d+$/.test(length) ? Number(length) : null;
      const maxBytes = this.deps.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
      if (this.size !== null && this.size > maxBytes) {
        // Refused before a byte is read (the abort in the catch below closes the connection).
        throw new BlobTooLargeError(
          `blob ${this.digest} of ${client.upstream.name}/${repo} is ${formatBytes(this.size)}, more than this Stowage's --max-blob-size of ${formatBytes(maxBytes)}; it was not downloaded`,
        );
      }
      const short = await this.shortOfSpace(this.size ?? 0, true);
      if (short) {
        // Served from upstream without a store upload at all.
        this.stopSpooling(short);
      } else {
        upload = await store.begin(this.digest);
        const spool = await upload.openReader();
        this.reader = spool ? new SharedReader(spool) : null;
        this.spoolers.add(this);
      }
      hasher = hashers.create(digestAlgorithm(this.digest));
      this.state = "streaming";
      this.markReady();

      const writer = new OrderedWriter((chunk) => {
        this.remember(chunk);
        this.changed.notify();
        // Both calls take their place synchronously (write position, hash order);
        // completion is awaited later, in order, by the writer. Once spooling
        // stopped, bytes only go to the hasher and the clients.
        const stored = this.spoolEnd !== null || !upload ? Promise.resolve() : upload.write(chunk).catch((cause) => {
          throw new StoreError(`the blob store failed to write ${this.digest}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
        });
        return Promise.all([stored, hasher!.update(chunk)]).then(() => {});
      }, (chunk) => {
        this.written += chunk.byteLength;
        this.trimWindow();
        this.changed.notify();
        this.watchSpace();
      });
      // Upstream chunks are ~64 KiB; gathering them into 1 MiB batches (one copy,
      // shared by every follower) makes far fewer socket writes, store writes and
      // hash messages, which is what costs most here.
      const sink = new Batcher((batch) => writer.push(batch));
      let current: UpstreamReply = reply;
      const seconds = this.deps.idleTimeoutMs / 1000;
      idle = new IdleTimer(this.deps.idleTimeoutMs, () => {
        stalled = new UpstreamError("timeout", `upstream ${client.upstream.name} sent nothing for ${seconds} s in the middle of ${this.digest}`);
        current.abort(stalled);
      });
      let fromUpstream = 0;
      let skip = 0; // bytes to drop when a resumed response starts from 0 (the upstream ignored Range)
      for (let resumes = 0; ; ) {
        try {
          await this.readBody(current.response, idle, () => stalled, async (bytes) => {
            if (skip > 0) {
              const dropped = Math.min(skip, bytes.byteLength);
              skip -= dropped;
              bytes = bytes.subarray(dropped);
              if (bytes.byteLength === 0) return;
            }
            fromUpstream += bytes.byteLength;
            this.deps.metrics.upstreamBytes.inc({ upstream: client.upstream.name }, bytes.byteLength);
            if (this.size !== null && fromUpstream > this.size) {
              throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent more than the ${this.size} bytes it announced for ${this.digest}`);
            }
            if (fromUpstream > maxBytes) {
              // Only without a Content-Length (a declared one was checked above): the clients' responses break, nothing is kept.
              throw new BlobTooLargeError(
                `upstream ${client.upstream.name} sent more than this Stowage's --max-blob-size of ${formatBytes(maxBytes)} for ${this.digest} of ${repo} without announcing a length; the download was cut off and nothing was cached`,
              );
            }
            await sink.push(bytes);
          });
          if (this.size === null || fromUpstream >= this.size) break;
          throw new ConnectionLost(
            new UpstreamError("unreachable", `upstream ${client.upstream.name} ended ${this.digest} after ${fromUpstream} of ${this.size} bytes`),
          );
        } catch (err) {
          // Only a broken or stalled connection is worth resuming; a store failure or a lying upstream is not.
          const resumable = err instanceof ConnectionLost && this.size !== null && resumes < MAX_RESUMES;
          const failure = err instanceof ConnectionLost ? err.failure : err;
          if (!resumable) throw failure;
          resumes++;
          stalled = null;
          this.deps.metrics.resumes.inc({ upstream: client.upstream.name });
          this.log.warn("upstream connection broke mid-blob; resuming with a Range request", {
            digest: this.digest,
            upstream: client.upstream.name,
            at: fromUpstream,
            of: this.size,
            attempt: resumes,
            error: failure,
          });
          idle.touch();
          await sleep(RESUME_BACKOFF_MS * 2 ** (resumes - 1));
          current = await client.blob(repo, this.digest, "GET", this.log, fromUpstream);
          reply = current;
          idle.touch();
          const resumedAt = resumedOffset(current.response);
          if (resumedAt === fromUpstream) skip = 0;
          else if (resumedAt === 0) skip = fromUpstream; // Range ignored: read again from the start, dropping what we have
          else throw new UpstreamError("bad-response", `upstream ${client.upstream.name} answered a resume at ${fromUpstream} with bytes from ${resumedAt}`);
        }
      }
      await sink.end();
      await writer.end();
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
      if (this.spoolEnd !== null || !upload) {
        // Out of disk space: like a store that cannot keep the blob, the clients were served all the same.
        await upload?.abort();
        upload = null;
        this.state = "uncached";
        this.deps.metrics.storeBypass.inc({ op: "write" });
        this.log.info("served a blob from upstream without caching it, for lack of disk space", {
          digest: this.digest,
          upstream: client.upstream.name,
          repo,
          bytes: this.size,
          ...this.noRoom,
        });
        return;
      }
      try {
        await upload.commit();
      } catch (cause) {
        upload = null; // a failed commit cleans up after itself
        this.state = "uncached";
        this.deps.metrics.storeErrors.inc({ op: "commit" });
        this.deps.metrics.storeBypass.inc({ op: "write" });
        this.log.warn("the blob store could not keep a verified blob; clients were served from upstream without caching it", {
          digest: this.digest,
          upstream: client.upstream.name,
          repo,
          bytes: this.size,
          error: cause,
        });
        return;
      }
      upload = null;
      const now = Date.now();
      // Link first: a request that sees the blob record must also see the link, or it would ask upstream again.
      await kv.write(kvKeys.link(client.upstream.name, repo, this.digest), { linkedAt: now });
      await kv.write(kvKeys.blob(this.digest), { size: this.size, storedAt: now });
      this.state = "committed";
      this.deps.metrics.blobsCommitted.inc();
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
      const reason = err instanceof DigestMismatchError
        ? "digest-mismatch"
        : err instanceof BlobTooLargeError
        ? "too-large"
        : err instanceof StoreError
        ? "store"
        : err instanceof UpstreamError
        ? err.failure
        : "other";
      this.deps.metrics.fetchFailures.inc({ reason });
      if (err instanceof StoreError) this.deps.metrics.storeErrors.inc({ op: "write" });
      const level = err instanceof UpstreamError && err.failure === "not-found" ? "debug" : "warn";
      this.log[level]("blob fetch failed", { digest: this.digest, upstream: client.upstream.name, repo, error: this.error, bytes: this.written });
    } finally {
      this.spoolers.delete(this);
      idle?.stop();
      this.changed.notify();
      this.reader?.release();
      await lease?.release();
    }
  }

  /** Downloads spooling to this fetch's store now (see `spooling`). */
  private get spoolers(): Set<BlobFetch> {
    const { store } = this.deps;
    let set = spooling.get(store);
    if (!set) spooling.set(store, (set = new Set()));
    return set;
  }

  /**
   * Whether spooling `needed` more bytes would leave less free disk space than
   * --disk-reserve: the details for the log if so, null if there is room or
   * the free space cannot be told. At the start (`admitting`), the bytes other
   * downloads announced and have not written yet count as taken.
   */
  private async shortOfSpace(needed: number, admitting: boolean): Promise<Record<string, unknown> | null> {
    const free = await this.deps.store.freeSpace().catch(() => null);
    if (free === null) return null;
    const reserve = this.deps.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES;
    let promised = 0;
    if (admitting) {
      for (const other of this.spoolers) if (other !== this && other.size !== null) promised += Math.max(0, other.size - other.written);
    }
    if (free - promised - needed >= reserve) return null;
    return {
      free: formatBytes(free),
      ...(needed > 0 ? { needed: formatBytes(needed) } : {}),
      ...(promised > 0 ? { promisedToOtherDownloads: formatBytes(promised) } : {}),
      reserve: formatBytes(reserve),
    };
  }

  /** Every DISK_CHECK_BYTES spooled: stops spooling once the disk runs short, before it is full. */
  private watchSpace(): void {
    if (this.spoolEnd !== null || this.checkingSpace) return;
    if (this.written - this.spaceCheckedAt < (this.deps.diskCheckBytes ?? DISK_CHECK_BYTES)) return;
    this.spaceCheckedAt = this.written;
    this.checkingSpace = true;
    const left = this.size === null ? 0 : Math.max(0, this.size - this.written);
    this.shortOfSpace(left, false)
      .then((short) => {
        if (short && this.spoolEnd === null && this.state === "streaming") this.stopSpooling(short);
      })
      .catch(() => {})
      .finally(() => {
        this.checkingSpace = false;
      });
  }

  /**
   * No more bytes go to the store: the download goes on for the clients
   * (the hash still guards them), and ends "uncached", as when the store
   * fails to keep a blob. Bytes already spooled stay readable until then.
   */
  private stopSpooling(short: Record<string, unknown>): void {
    this.spoolEnd = this.received;
    this.noRoom = short;
    this.spoolers.delete(this);
    const { client, repo } = this.source;
    this.log.warn(
      "not enough free disk space to cache this blob: serving it from upstream without caching it; free space under --data-dir, lower --disk-reserve, or move the data dir to a larger disk",
      { digest: this.digest, upstream: client.upstream.name, repo, spooled: this.written, ...short },
    );
  }

  /** Waits while another instance fetches this blob; "stored" once it is in the store, else our lease to fetch it. */
  private async leaseOrStored(): Promise<HeldLease | "stored"> {
    const { leases, kv, metrics } = this.deps;
    let waiting = false;
    for (;;) {
      const lease = await leases.tryAcquire(this.digest, this.log);
      // Checked after taking the lease: the instance we waited for may have just stored it.
      if (!this.opts.evenIfStored && (await kv.read(kvKeys.blob(this.digest), BlobRecord))) {
        await lease?.release();
        return "stored";
      }
      if (lease) return lease;
      if (!waiting) {
        waiting = true;
        metrics.leaseWaits.inc();
        this.log.info("another instance is fetching this blob; waiting to serve it from the store", { digest: this.digest });
      }
      await sleep(LEASE_POLL_MS);
    }
  }

  /** Another instance stored the blob: this repository may see it only once the upstream confirms it has it. */
  private async linkStoredBlob(): Promise<void> {
    const { client, repo } = this.source;
    const link = kvKeys.link(client.upstream.name, repo, this.digest);
    if (await this.deps.kv.read(link, LinkRecord)) return;
    const { response } = await client.blob(repo, this.digest, "HEAD", this.log);
    await response.body?.cancel();
    await this.deps.kv.write(link, { linkedAt: Date.now() });
  }
}

/** How often an instance waiting on another's lease looks for the stored blob. */
const LEASE_POLL_MS = 200;

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

/** Times a broken upstream connection is resumed with a Range request before the fetch fails. */
const MAX_RESUMES = 3;
const RESUME_BACKOFF_MS = 200;

/** A read from the upstream body failed: the connection broke or stalled. */
class ConnectionLost extends Error {
  constructor(readonly failure: UpstreamError) {
    super(failure.message);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Where a (possibly partial) response starts: the Content-Range start for 206, 0 for 200. */
function resumedOffset(response: Response): number | null {
  if (response.status === 200) return 0;
  const match = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(response.headers.get("content-range") ?? "");
  return response.status === 206 && match ? Number(match[1]) : null;
}

/** Bytes per batch handed to followers, the store and the hasher. */
const BATCH_BYTES = 1024 * 1024;
/** A partly filled batch older than this is passed on anyway, so a slow upstream still reaches clients promptly. */
const BATCH_MAX_AGE_MS = 25;

/** Gathers chunks into batches of BATCH_BYTES (the last one shorter). A batch is never changed once passed on. */
class Batcher {
  private batch = unzeroedBytes(BATCH_BYTES);
  private filled = 0;
  private startedAt = 0;

  constructor(private readonly emit: (batch: Uint8Array) => Promise<void>) {}

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
  }

  private async flush(): Promise<void> {
    if (this.filled === 0) return;
    const full = this.filled === BATCH_BYTES ? this.batch : this.batch.subarray(0, this.filled);
    this.batch = unzeroedBytes(BATCH_BYTES);
    this.filled = 0;
    await this.emit(full);
  }
}

/** Unwritten bytes allowed in flight to the store before the upstream read waits (bounds memory when the store is slow). */
const MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024;

/**
 * Passes batches on as they are (no copy): each is handed to `start`
 * at once (store write and hash take their place synchronously), and `done`
 * is called for each in order as they complete. When MAX_UNWRITTEN_BYTES are
 * in flight, `push` waits: the store paces the download.
 */
class OrderedWriter {
  private readonly inFlight: Array<{ bytes: number; settled: Promise<void> }> = [];
  private unwritten = 0;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly start: (chunk: Uint8Array) => Promise<void>,
    private readonly done: (chunk: Uint8Array) => void,
  ) {}

  async push(chunk: Uint8Array): Promise<void> {
    while (this.unwritten >= MAX_UNWRITTEN_BYTES && this.inFlight.length > 0) {
      const oldest = this.inFlight.shift()!;
      await oldest.settled;
      this.unwritten -= oldest.bytes;
    }
    const started = this.start(chunk);
    // Completion is reported in order even if the store finishes out of order.
    this.tail = Promise.all([this.tail, started]).then(() => this.done(chunk));
    // A failure surfaces through `tail` at the next wait or at end(), not as an unhandled rejection.
    this.tail.catch(() => {});
    this.inFlight.push({ bytes: chunk.byteLength, settled: this.tail });
    this.unwritten += chunk.byteLength;
  }

  async end(): Promise<void> {
    await this.tail;
  }
}
