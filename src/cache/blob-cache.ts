import { kvKeys } from "../kv/keys.ts";
import type { Logger } from "../log.ts";
import { RegistryError } from "../registry/errors.ts";
import { parseRange, unsatisfiedRange, type ByteRange } from "../registry/range.ts";
import type { Digest } from "../registry/reference.ts";
import { contentLength } from "../util/http-headers.ts";
import { observed } from "../storage/direct-body.ts";
import { DEFAULT_MAX_BLOB_BYTES, refuseDeclaredSize } from "./blob-bounds.ts";
import { BlobFetch, type BlobFetchDeps } from "./blob-fetch.ts";
import { isLinked, linkAfterHead } from "./blob-links.ts";
import type { FetchSource } from "./fetch-source.ts";
import { BlobRecord } from "./records.ts";
import { registryErrorFor } from "./registry-error-for.ts";
import { storeFailed } from "./store-failure.ts";
import { offlineError } from "../upstream/upstream-error.ts";
import type { UsageRecorder } from "./usage.ts";

/** What the HTTP layer needs to answer a blob request. */
export type BlobAnswer = {
  status: 200 | 206;
  /** Full size of the blob, when known (it is unknown only for an in-flight fetch whose upstream sent no length). */
  size: number | null;
  range: ByteRange | null;
  body: ReadableStream<Uint8Array> | null;
  source: "cache" | "upstream" | "coalesced";
  /**
   * For a blob being fetched now: resolves once the fetch has ended, true when the blob is then
   * in the store and recorded, false when it was served uncached or failed. Null otherwise.
   */
  stored: Promise<boolean> | null;
};

/** A download from upstream in progress, as the operator page lists it. */
export type BlobDownload = { digest: Digest; upstream: string; repo: string; bytes: number; size: number | null; startedAt: number };

/**
 * Blobs: served from the store when cached, otherwise fetched from upstream
 * once (single flight per digest) and streamed to every client asking.
 */

export class BlobCache {
  private readonly inflight = new Map<Digest, BlobFetch>();
  /** Clients streaming a blob from the store now, by digest (the collector leaves these alone). */
  private readonly reading = new Map<Digest, number>();

  constructor(
    private readonly deps: BlobFetchDeps & { usage?: UsageRecorder },
    /** A client that takes no bytes of a blob for this long is cut off (--client-timeout). */
    private readonly clientTimeoutMs: number = 5 * 60_000,
  ) {}

  /** Downloads from upstreams in progress, oldest first (for the operator page). */
  downloads(): BlobDownload[] {
    return [...this.inflight.values()].map((f) => ({
      digest: f.digest,
      upstream: f.source.client.upstream.name,
      repo: f.source.repo,
      bytes: f.received,
      size: f.size,
      startedAt: f.startedAt,
    })).sort((a, b) => a.startedAt - b.startedAt);
  }

  /** Whether the blob is being fetched, or read from the store by a client, here and now. */
  busy(digest: Digest): boolean {
    return this.inflight.has(digest) || (this.reading.get(digest) ?? 0) > 0;
  }

  /** Whether this repository is served the blob from the store with no upstream request (what prefill skips). */
  async isCached(source: FetchSource, digest: Digest): Promise<boolean> {
    const { kv, store } = this.deps;
    if (!(await isLinked(kv, source, digest))) return false;
    if (!(await kv.read(kvKeys.blob(digest), BlobRecord))) return false;
    return (await store.stat(digest)) !== null;
  }

  async get(
    source: FetchSource,
    digest: Digest,
    method: "GET" | "HEAD",
    rangeHeader: string | null,
    log: Logger,
  ): Promise<BlobAnswer> {
    const answer = await this.answer({ source, digest, method, rangeHeader }, log);
    const { metrics } = this.deps;
    if (answer.source === "cache") metrics.cacheHits.inc({ kind: "blob" });
    else if (answer.source === "coalesced") metrics.coalesced.inc();
    else metrics.cacheMisses.inc({ kind: "blob" });
    if (method === "GET") this.deps.usage?.pulled({ kind: "blob", digest });
    if (answer.body) {
      const counter = answer.source === "cache" ? metrics.bytesFromCache : metrics.bytesFromUpstream;
      const seconds = this.clientTimeoutMs / 1000;
      const fromStore = answer.source === "cache";
      if (fromStore) this.reading.set(digest, (this.reading.get(digest) ?? 0) + 1);
      answer.body = observed(answer.body, {
        onChunk: (n) => counter.inc({}, n),
        onEnd: () => {
          if (!fromStore) return;
          const left = (this.reading.get(digest) ?? 1) - 1;
          if (left > 0) this.reading.set(digest, left);
          else this.reading.delete(digest);
        },
        stall: {
          ms: this.clientTimeoutMs,
          onStall: () => log.warn("cut off a client that took nothing for --client-timeout", { digest, seconds }),
        },
      });
    }
    return answer;
  }

  private async answer(
    { source, digest, method, rangeHeader }: { source: FetchSource; digest: Digest; method: "GET" | "HEAD"; rangeHeader: string | null },
    log: Logger,
  ): Promise<BlobAnswer> {
    const { kv } = this.deps;
    const what = `blob ${digest} of ${source.client.upstream.name}/${source.repo}`;
    const linked = await isLinked(kv, source, digest);
    const record = await kv.readRecent(kvKeys.blob(digest), BlobRecord);
    let storeFailing = false;
    // Offline, the records prefill and import wrote are the authority: a blob this repository has
    // no link to is refused rather than confirmed upstream (the client would refuse to ask anyway).
    const offline = source.client.upstream.offline === true;
    if (offline && (!record || !linked)) throw registryErrorFor(offlineError(source.client.upstream.name), "blob", what);
    if (record) {
      if (!linked) await this.confirmUpstreamHas(source, digest, what, log);
      try {
        const answer = await this.fromStore(digest, record.size, method, rangeHeader);
        if (answer) return answer;
        log.warn("blob listed in KV is missing from the store; fetching it again", { digest });
        await kv.remove(kvKeys.blob(digest));
      } catch (err) {
        if (err instanceof RegistryError) throw err;
        // The store is down or failing: the upstream can still serve this pull.
        storeFailing = true;
        storeFailed(this.deps.metrics, log, "read", "the blob store failed to read a cached blob; serving it from upstream", { digest, error: err });
      }
    }

    // Recorded but unreadable (lost from the store, or the store failing): nothing to fetch it from.
    if (offline && storeFailing) {
      throw new RegistryError("UNAVAILABLE", `could not get ${what}: the blob store failed, and upstream ${source.client.upstream.name} is offline (--offline)`, { status: 500 });
    }
    if (offline) throw registryErrorFor(offlineError(source.client.upstream.name), "blob", what);
    let fetch = this.inflight.get(digest);
    let sourceKind: BlobAnswer["source"] = "coalesced";
    if (fetch) {
      if (!linked && !sameSource(fetch.source, source)) await this.confirmUpstreamHas(source, digest, what, log);
    } else if (method === "HEAD") {
      return this.headUpstream(source, digest, what, log);
    } else {
      fetch = this.startFetch(source, digest, { evenIfStored: storeFailing }, log);
      sourceKind = "upstream";
    }

    try {
      await fetch.ready;
    } catch (err) {
      throw registryErrorFor(err, "blob", what);
    }
    // Checked synchronously before following: a committed fetch has released its spool.
    if (fetch.state === "failed") throw registryErrorFor(fetch.error, "blob", what);
    if (fetch.state === "committed") return this.afterCommit(digest, method, rangeHeader, what);

    let size = fetch.size;
    if (rangeHeader !== null && size === null) {
      // Cannot place a range without the length: wait for the whole blob.
      await fetch.settled;
      if (fetch.committed) return this.afterCommit(digest, method, rangeHeader, what);
      // Verified but not stored (no disk space, or the store failed): the fetch still serves it.
      if (fetch.state !== "uncached") throw registryErrorFor(fetch.error, "blob", what);
      size = fetch.size;
    }
    const request = size === null ? { kind: "full" as const } : parseRange(rangeHeader, size);
    if (request.kind === "unsatisfiable") throw rangeNotSatisfiable(size ?? 0);
    const range = request.kind === "partial" ? request.range : null;
    const body = method === "HEAD" ? null : fetch.follow(range?.start ?? 0, range ? range.end + 1 : null);
    const stored = fetch.settled.then(() => fetch.committed, () => false);
    return { status: range ? 206 : 200, size, range, body, source: sourceKind, stored };
  }

  private startFetch(source: FetchSource, digest: Digest, opts: { evenIfStored: boolean }, log: Logger): BlobFetch {
    const fetch = new BlobFetch(digest, source, this.deps, log, opts);
    this.inflight.set(digest, fetch);
    this.deps.metrics.inflight.set({}, this.inflight.size);
    fetch.settled.then(() => {
      if (this.inflight.get(digest) === fetch) this.inflight.delete(digest);
      this.deps.metrics.inflight.set({}, this.inflight.size);
    });
    return fetch;
  }

  private async afterCommit(digest: Digest, method: "GET" | "HEAD", rangeHeader: string | null, what: string): Promise<BlobAnswer> {
    const record = await this.deps.kv.read(kvKeys.blob(digest), BlobRecord);
    const answer = record ? await this.fromStore(digest, record.size, method, rangeHeader) : null;
    if (!answer) throw new RegistryError("UNAVAILABLE", `${what} was fetched but could not be read back from the store`, { status: 500 });
    return answer;
  }

  private async fromStore(digest: Digest, size: number, method: "GET" | "HEAD", rangeHeader: string | null): Promise<BlobAnswer | null> {
    const request = parseRange(rangeHeader, size);
    if (request.kind === "unsatisfiable") throw rangeNotSatisfiable(size);
    const range = request.kind === "partial" ? request.range : null;
    if (method === "HEAD") {
      const stat = await this.deps.store.stat(digest);
      if (!stat) return null;
      return { status: range ? 206 : 200, size, range, body: null, source: "cache", stored: null };
    }
    const body = await this.deps.store.open(digest, range ?? undefined);
    if (!body) return null;
    return { status: range ? 206 : 200, size, range, body, source: "cache", stored: null };
  }

  /** HEAD on an uncached blob: ask upstream, do not download. */
  private async headUpstream(source: FetchSource, digest: Digest, what: string, log: Logger): Promise<BlobAnswer> {
    try {
      const { response } = await source.client.blob(source.repo, digest, "HEAD", log);
      const size = contentLength(response.headers);
      // The same answer a GET would get, without downloading.
      refuseDeclaredSize(what, size, this.deps.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES, "it is not downloaded");
      return { status: 200, size, range: null, body: null, source: "upstream", stored: null };
    } catch (err) {
      throw registryErrorFor(err, "blob", what);
    }
  }

  /** A repository sees a cached blob only once the upstream confirms it has it (see blob-links.ts). */
  private confirmUpstreamHas(source: FetchSource, digest: Digest, what: string, log: Logger): Promise<void> {
    return linkAfterHead(this.deps.kv, source, digest, log, (err) => registryErrorFor(err, "blob", what));
  }
}

function sameSource(a: FetchSource, b: FetchSource): boolean {
  return a.client === b.client && a.repo === b.repo;
}

function rangeNotSatisfiable(size: number): RegistryError {
  return new RegistryError("RANGE_INVALID", `the requested range is not satisfiable for a blob of ${size} bytes`, {
    status: 416,
    headers: { "content-range": unsatisfiedRange(size) },
  });
}
