import type { Hasher, HasherFactory } from "../digest/hasher.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { digestAlgorithm, digestHex, type Digest } from "../registry/reference.ts";
import type { BlobStore, BlobUpload } from "../storage/blob-store.ts";
import type { UpstreamReply } from "../upstream/client.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { holdUntil } from "../util/batch-pool.ts";
import { contentLength } from "../util/http-headers.ts";
import { checkReceivedBytes, DEFAULT_MAX_BLOB_BYTES, refuseDeclaredSize, type Shortage, SpoolRoom } from "./blob-bounds.ts";
import { followFetch } from "./blob-follow.ts";
import { isLinked, linkAfterHead } from "./blob-links.ts";
import { Batcher, ByteWindow, OrderedWriter, SharedReader } from "./blob-plumbing.ts";
import { rangeFromUpstream, ResumableBody } from "./blob-resume.ts";
import { ChangeSignal } from "./change-signal.ts";
import type { FetchLeases, HeldLease } from "./fetch-lease.ts";
import { DigestMismatchError, failureReason, StoreError } from "./fetch-errors.ts";
import type { FetchSource } from "./fetch-source.ts";
import { BlobRecord } from "./records.ts";
import { storeFailed } from "./store-failure.ts";

/** Written bytes kept in memory for followers near the live edge, per fetch. */
const WINDOW_BYTES = 4 * 1024 * 1024;

export type FetchState = "connecting" | "streaming" | "verified" | "committed" | "uncached" | "failed";

export type BlobFetchDeps = {
  store: BlobStore;
  metrics: StowageMetrics;
  hashers: HasherFactory;
  kv: TypedKv;
  /** The upstream timeout (--upstream-timeout): the longest silence in the middle of a body before the connection is given up (and resumed while it may be). */
  upstreamTimeoutMs: number;
  leases: FetchLeases;
  /** Largest blob downloaded (--max-blob-size); default DEFAULT_MAX_BLOB_BYTES. */
  maxBlobBytes?: number;
  /** Free disk space spooling leaves alone (--disk-reserve); default DEFAULT_DISK_RESERVE_BYTES. */
  diskReserveBytes?: number;
  /** Bytes spooled between two free-space checks; default DISK_CHECK_BYTES. */
  diskCheckBytes?: number;
  /**
   * Called when a download is served uncached for lack of disk space, with the bytes it
   * needed: the server makes room then (a collector pass), so the next pull caches again.
   */
  onDiskShort?: (neededBytes: number) => void;
};

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
 *  - a connection that breaks or stalls mid-body is resumed with a Range
 *    request, a few times, when the upstream announced the length;
 *  - a store that fails to keep the blob fails no client: the fetch ends
 *    "uncached", with every client served from upstream all the same; so
 *    does a disk that runs short of --disk-reserve, checked before spooling
 *    and every DISK_CHECK_BYTES while it goes on;
 *  - no blob above --max-blob-size is downloaded: a declared length above it
 *    is refused, and a body without one is cut off once it passes it;
 *  - instances sharing a KV take a lease first: while another instance
 *    fetches the blob, this one waits for it to be stored and serves it from
 *    the store ("committed" without a download).
 *
 * States: connecting -> streaming -> verified -> committed | uncached, or
 * failed from any of the first three (and "committed" straight from
 * connecting when another instance stored the blob).
 *
 * This file is the state machine. Around it: blob-follow.ts (the clients'
 * streams), blob-plumbing.ts (batches, the ordered store and hash writer, the
 * memory window, the shared spool reader), blob-resume.ts (reading the
 * upstream body across resumes), blob-bounds.ts (size cap, disk reserve),
 * blob-links.ts (which repositories may see a stored blob).
 */
export class BlobFetch {
  state: FetchState = "connecting";
  /** Expected size from the upstream's Content-Length (null if it sent none); the real size once committed. */
  size: number | null = null;
  /** Bytes received from upstream and offered to followers (from memory while recent). */
  received = 0;
  /** When the fetch began, ms since epoch (its log line's duration; the operator page's list). */
  readonly startedAt = Date.now();
  /** Bytes through the store stage, in order: in the store upload, or passed over once spooling stopped. */
  written = 0;
  /** What the fetch failed with; null unless it failed. */
  error: Error | null = null;
  /** Resolves once the upstream answered and followers can start; rejects if it did not. */
  readonly ready: Promise<void>;
  /** Resolves when the fetch has ended either way (see `state`). */
  readonly settled: Promise<void>;

  private readonly room: SpoolRoom;
  private readonly changed = new ChangeSignal();
  private readonly window = new ByteWindow(WINDOW_BYTES);
  private reader: SharedReader | null = null;
  private markReady!: () => void;
  private failReady!: (err: Error) => void;
  // What the download holds while it runs, let go at the end either way (upload and hasher: null once used up).
  private lease: HeldLease | null = null;
  private reply: UpstreamReply | null = null;
  private body: ResumableBody | null = null;
  private upload: BlobUpload | null = null;
  private hasher: Hasher | null = null;
  /** The hasher reads the upload's spool file (the digest worker), instead of being handed the bytes. */
  private hashesSpool = false;

  constructor(
    readonly digest: Digest,
    readonly source: FetchSource,
    private readonly deps: BlobFetchDeps,
    private readonly log: Logger,
    /** The store failed to read the blob it holds: download it anyway rather than wait on the store. */
    private readonly opts: { evenIfStored: boolean } = { evenIfStored: false },
  ) {
    this.room = new SpoolRoom(deps.store, this, { reserveBytes: deps.diskReserveBytes, checkBytes: deps.diskCheckBytes });
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
    return followFetch(this, this.reader, start, end);
  }

  // What followers read (blob-follow.ts).

  /** The bytes at `position` (up to `limit`) while they are still in memory. */
  inMemory(position: number, limit: number): Uint8Array | null {
    return this.window.slice(position, limit);
  }

  /** Resolves at the next change: more bytes, or the end either way. */
  nextChange(): Promise<void> {
    return this.changed.wait();
  }

  /** Bytes readable through the spool reader. */
  get spooled(): number {
    const end = this.room.stoppedAt;
    return end === null ? this.written : Math.min(this.written, end);
  }

  /** Verified: every byte received is good and may be served. */
  get complete(): boolean {
    return this.state === "verified" || this.state === "committed" || this.state === "uncached";
  }

  /** Bytes a follower may have: all of them once verified, else all but the last. */
  releasable(): number {
    if (this.complete) return this.received;
    if (this.size !== null) return Math.min(this.received, this.size - 1);
    return this.received - 1;
  }

  /**
   * Bytes [position, end) for a follower that fell behind the memory window
   * where there is no spool: from the store once the blob is committed, or,
   * if the store could not keep it, from upstream with a Range request.
   */
  async restFrom(position: number, end: number | null): Promise<ReadableStream<Uint8Array>> {
    await this.settled;
    const last = (end ?? this.received) - 1;
    if (this.state === "committed") {
      const stored = await this.deps.store.open(this.digest, { start: position, end: last }).catch(() => null);
      if (stored) return stored;
    } else if (this.state !== "uncached") {
      throw this.error ?? new Error("upstream fetch failed");
    }
    this.deps.metrics.storeBypass.inc({ op: "read" });
    return rangeFromUpstream(this.source, this.digest, position, last, this.log);
  }

  private async run(): Promise<void> {
    try {
      const { leases, kv, metrics } = this.deps;
      const claim = await leases.acquireUnlessStored(
        this.digest,
        this.log,
        async () => !this.opts.evenIfStored && (await kv.read(kvKeys.blob(this.digest), BlobRecord)) !== null,
        () => {
          metrics.leaseWaits.inc();
          this.log.info("another instance is fetching this blob; waiting to serve it from the store", { digest: this.digest });
        },
      );
      if (claim === "stored") {
        // Another instance stored the blob: this repository may see it once the upstream confirms it has it.
        if (!(await isLinked(this.deps.kv, this.source, this.digest))) await linkAfterHead(this.deps.kv, this.source, this.digest, this.log);
        this.state = "committed";
        this.markReady();
        return;
      }
      this.lease = claim;
      await this.connect();
      await this.download();
      await this.verify();
      await this.keep();
    } catch (err) {
      await this.fail(err);
    } finally {
      this.room.leave();
      this.body?.stop();
      this.changed.notify();
      this.reader?.release();
      await this.lease?.release();
    }
  }

  /** connecting -> streaming: the upstream answered, the size is within bounds, the spool (if any) is open. */
  private async connect(): Promise<void> {
    const { client, repo } = this.source;
    this.reply = await client.blob(repo, this.digest, "GET", this.log);
    this.size = contentLength(this.reply.response.headers);
    // Refused before a byte is read (fail() aborts the reply, which closes the connection).
    refuseDeclaredSize(`blob ${this.digest} of ${client.upstream.name}/${repo}`, this.size, this.maxBytes, "it was not downloaded");
    const short = await this.room.shortAtStart();
    if (short) {
      // Served from upstream without a store upload at all.
      this.stopSpooling(short);
    } else {
      this.upload = await this.deps.store.begin(this.digest);
      const spool = await this.upload.openReader();
      this.reader = spool ? new SharedReader(spool) : null;
      this.room.enter();
    }
    // With a spool, the digest worker reads the bytes back from it (the page cache): none of
    // them is copied or posted to it from this thread.
    const spool = this.upload?.spoolPath ?? null;
    this.hashesSpool = spool !== null && this.deps.hashers.readsFiles;
    this.hasher = this.deps.hashers.create(digestAlgorithm(this.digest), this.hashesSpool ? spool! : undefined);
    this.state = "streaming";
    this.markReady();
  }

  /** Reads the upstream body to the end (resuming a broken connection) through the store and the hasher. */
  private async download(): Promise<void> {
    const { client, repo } = this.source;
    const { upload, hashesSpool } = this;
    const hasher = this.hasher!;
    const writer: OrderedWriter = new OrderedWriter((chunk) => {
      this.window.append(this.received, chunk);
      this.received += chunk.byteLength;
      this.window.trim(this.written);
      this.changed.notify();
      // Both calls take their place synchronously (write position, hash order);
      // completion is awaited later, in order, by the writer. Once spooling
      // stopped, bytes only go to the hasher and the clients.
      const spooling = this.room.stoppedAt === null && upload !== null;
      // The store and the hasher may keep the chunk until their promises settle: its batch is held till then.
      const stored = !spooling ? Promise.resolve() : holdUntil(chunk, upload.write(chunk)).catch((cause) => {
        throw new StoreError(`the blob store failed to write ${this.digest}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
      });
      if (!hashesSpool) return Promise.all([stored, holdUntil(chunk, hasher.update(chunk))]).then(() => {});
      // Spooled bytes are hashed from the spool once written (below). Bytes past where spooling
      // stopped go to the hasher as they are, after every spooled byte before them.
      return spooling ? stored : holdUntil(chunk, writer.previous.then(() => hasher.update(chunk)));
    }, (chunk) => {
      const at = this.written;
      this.written += chunk.byteLength;
      if (hashesSpool && (this.room.stoppedAt === null || at < this.room.stoppedAt)) hasher.fileWritten!(this.written);
      this.window.trim(this.written);
      this.changed.notify();
      this.room.watch((short) => {
        if (this.state === "streaming") this.stopSpooling(short);
      });
    });
    // Upstream chunks are ~64 KiB; gathering them into 1 MiB batches (one copy,
    // shared by every follower) makes far fewer socket writes, store writes and
    // hash messages, which is what costs most here.
    const sink = new Batcher((batch) => writer.push(batch));
    const body = new ResumableBody(this.source, this.digest, this.size, this.reply!, {
      timeoutMs: this.deps.upstreamTimeoutMs,
      metrics: this.deps.metrics,
      log: this.log,
    });
    this.body = body;
    const blob = { upstream: client.upstream.name, repo, digest: this.digest };
    await body.read((bytes) => {
      checkReceivedBytes(body.received, this.size, this.maxBytes, blob);
      return sink.push(bytes);
    });
    await sink.end();
    await writer.end();
    body.stop();
    if (this.size !== null && this.written !== this.size) {
      throw new UpstreamError("bad-response", `upstream ${client.upstream.name} sent ${this.written} of the ${this.size} bytes it announced for ${this.digest}`);
    }
  }

  /** streaming -> verified: the bytes hash to the digest; clients may have the last byte now. */
  private async verify(): Promise<void> {
    const hex = await this.hasher!.finish();
    this.hasher = null;
    if (hex !== digestHex(this.digest)) {
      throw new DigestMismatchError(
        `upstream ${this.source.client.upstream.name} sent bytes for ${this.digest} that hash to ${digestAlgorithm(this.digest)}:${hex}; nothing was cached`,
      );
    }
    this.size = this.written;
    // The fsync and rename of the commit need not delay the clients.
    this.state = "verified";
    this.changed.notify();
  }

  /** verified -> committed (in the store, recorded in KV), or uncached when the store could not keep it. */
  private async keep(): Promise<void> {
    const { client, repo } = this.source;
    const about = { digest: this.digest, upstream: client.upstream.name, repo, bytes: this.size };
    if (this.room.stoppedAt !== null || !this.upload) {
      // Out of disk space: like a store that cannot keep the blob, the clients were served all the same.
      await this.upload?.abort();
      this.upload = null;
      this.state = "uncached";
      this.deps.metrics.storeBypass.inc({ op: "write" });
      this.log.info("served a blob from upstream without caching it, for lack of disk space", { ...about, ...this.room.shortage });
      return;
    }
    try {
      await this.upload.commit();
    } catch (cause) {
      this.upload = null; // a failed commit cleans up after itself
      this.state = "uncached";
      storeFailed(this.deps.metrics, this.log, "commit", "the blob store could not keep a verified blob; clients were served from upstream without caching it", {
        ...about,
        error: cause,
      });
      return;
    }
    this.upload = null;
    const now = Date.now();
    // Link first: a request that sees the blob record must also see the link, or it would ask upstream again.
    await this.deps.kv.write(kvKeys.link(client.upstream.name, repo, this.digest), { linkedAt: now });
    await this.deps.kv.write(kvKeys.blob(this.digest), { size: this.size!, storedAt: now });
    this.state = "committed";
    this.deps.metrics.blobsCommitted.inc();
    this.window.clear();
    this.log.info("blob cached", { ...about, ms: Date.now() - this.startedAt });
  }

  /** -> failed: every follower's response breaks, nothing is kept. */
  private async fail(err: unknown): Promise<void> {
    const { client, repo } = this.source;
    this.error = err instanceof Error ? err : new Error(String(err));
    this.state = "failed";
    this.window.clear();
    this.failReady(this.error);
    (this.body?.current ?? this.reply)?.abort(this.error);
    this.hasher?.discard();
    await this.upload?.abort();
    this.deps.metrics.fetchFailures.inc({ reason: failureReason(err) });
    if (err instanceof StoreError) this.deps.metrics.storeErrors.inc({ op: "write" });
    const level = err instanceof UpstreamError && err.failure === "not-found" ? "debug" : "warn";
    this.log[level]("blob fetch failed", { digest: this.digest, upstream: client.upstream.name, repo, error: this.error, bytes: this.written });
  }

  private get maxBytes(): number {
    return this.deps.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
  }

  /**
   * No more bytes go to the store: the download goes on for the clients
   * (the hash still guards them), and ends "uncached", as when the store
   * fails to keep a blob. Bytes already spooled stay readable until then.
   */
  private stopSpooling(short: Shortage): void {
    this.room.stop(this.received, short);
    const { client, repo } = this.source;
    this.log.warn(
      "not enough free disk space to cache this blob: serving it from upstream without caching it; free space under --data-dir, lower --disk-reserve, set --max-size or --cache-ttl, or move the data dir to a larger disk",
      { digest: this.digest, upstream: client.upstream.name, repo, spooled: this.written, ...short },
    );
    try {
      this.deps.onDiskShort?.(this.size ?? this.received);
    } catch (err) {
      this.log.warn("could not ask for room on the disk", { error: err });
    }
  }
}
