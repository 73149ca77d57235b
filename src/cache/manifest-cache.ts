import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { digestOfBytes } from "../digest/digest-bytes.ts";
import { bytesPreview, MAX_MANIFEST_BYTES, manifestShapeProblem } from "../registry/manifest-shape.ts";
import { detectManifestMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { digestAlgorithm, parseDigest, type Digest, type Reference } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { readStoredBytes } from "../storage/stored-bytes.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { waitAtMost } from "../util/deadline.ts";
import { readLimited } from "../util/streams.ts";
import type { FetchSource } from "./fetch-source.ts";
import { ManifestBytesLru } from "./manifest-bytes.ts";
import { ManifestRecord, TagRecord } from "./records.ts";
import { registryErrorFor, UnusableUpstreamReply } from "./registry-error-for.ts";
import { SingleFlight } from "./single-flight.ts";
import { storeFailed } from "./store-failure.ts";
import type { UsageRecorder } from "./usage.ts";

/** How long a client's manifest waits for the store to keep it (a healthy store takes milliseconds). */
const STORE_WAIT_MS = 2_000;

export type ManifestAnswer = {
  digest: Digest;
  mediaType: ManifestMediaType;
  size: number;
  bytes: Uint8Array<ArrayBuffer>;
  /** cache: fresh or revalidated; upstream: fetched now; stale: upstream failed, served the last known copy. */
  source: "cache" | "upstream" | "stale";
};

type Cached = { digest: Digest; record: ManifestRecord; bytes: Uint8Array<ArrayBuffer> };

export type ManifestCacheDeps = {
  kv: TypedKv;
  store: BlobStore;
  metrics: StowageMetrics;
  tagTtlMs: number;
  now?: () => number;
  /** Told of every manifest answered (by tag or by digest), for expiry and size limits. */
  usage?: UsageRecorder;
};

/**
 * Manifests and tags. Bytes are stored exactly as the upstream sent them,
 * under their verified digest, with the upstream's media type.
 *  - by digest: immutable; once cached, upstream is never asked again;
 *  - by tag: served from cache inside the freshness window; after it a HEAD
 *    (free on Docker Hub's rate limit) decides whether to fetch again; if the
 *    upstream is down or rate-limiting, the last known digest is served;
 *  - offline upstream: whatever is stored, at any age; a miss is a 404 at once
 *    (the client refuses to send anything).
 */
export class ManifestCache {
  private readonly lru = new ManifestBytesLru(32 * 1024 * 1024);
  private readonly flights = new SingleFlight<ManifestAnswer>();
  private readonly now: () => number;

  constructor(private readonly deps: ManifestCacheDeps) {
    this.now = deps.now ?? Date.now;
  }

  async get(source: FetchSource, reference: Reference, log: Logger): Promise<ManifestAnswer> {
    const answer = reference.kind === "digest"
      ? await this.byDigest(source, reference.digest, log)
      : await this.byTag(source, reference.tag, log);
    const { metrics } = this.deps;
    if (answer.source === "cache") metrics.cacheHits.inc({ kind: "manifest" });
    else if (answer.source === "stale") metrics.staleServed.inc({ upstream: source.client.upstream.name });
    else metrics.cacheMisses.inc({ kind: "manifest" });
    const name = source.client.upstream.name;
    this.deps.usage?.pulled(
      reference.kind === "tag"
        ? { kind: "tag", upstream: name, repo: source.repo, tag: reference.tag }
        : { kind: "manifest", upstream: name, repo: source.repo, digest: reference.digest },
    );
    return answer;
  }

  private async byDigest(source: FetchSource, digest: Digest, log: Logger): Promise<ManifestAnswer> {
    const cached = await this.cached(source, digest, log);
    if (cached) return { ...answerOf(cached), source: "cache" };
    return this.fetch(source, digest, null, log);
  }

  private async byTag(source: FetchSource, tag: string, log: Logger): Promise<ManifestAnswer> {
    const { kv, tagTtlMs } = this.deps;
    const name = source.client.upstream.name;
    const tagKey = kvKeys.tag(name, source.repo, tag);
    const record = await kv.readRecent(tagKey, TagRecord);
    const cached = record ? await this.cached(source, record.digest, log) : null;
    if (!record || !cached) return this.fetch(source, tag, null, log);
    // Offline, what prefill or import stored is the answer, whatever its age: there is no one to ask.
    if (this.now() - record.checkedAt < tagTtlMs || source.client.upstream.offline) return { ...answerOf(cached), source: "cache" };

    try {
      const { response } = await source.client.manifest(source.repo, tag, "HEAD", log);
      const current = parseDigest(response.headers.get("docker-content-digest") ?? "");
      if (current === record.digest) {
        await kv.write(tagKey, { ...record, checkedAt: this.now() });
        return { ...answerOf(cached), source: "cache" };
      }
      return await this.fetch(source, tag, cached, log);
    } catch (err) {
      if (err instanceof UpstreamError && err.isOutage) return staleAnswer(cached, source, tag, err, log);
      if (err instanceof UpstreamError && err.failure === "not-found") await kv.remove(tagKey);
      throw registryErrorFor(err, "manifest", `manifest ${name}/${source.repo}:${tag}`);
    }
  }

  /** The tags this repository has records of (any age), for tag listing while offline. */
  async cachedTags(source: FetchSource): Promise<string[]> {
    const tags: string[] = [];
    for await (const { key } of this.deps.kv.list(kvKeys.tagsOf(source.client.upstream.name, source.repo), TagRecord)) {
      const tag = key[3];
      if (typeof tag === "string") tags.push(tag);
    }
    return tags;
  }

  /** Fetches from upstream (once per reference at a time), verifies, stores. Falls back to `stale` on an outage. */
  private fetch(source: FetchSource, reference: string, stale: Cached | null, log: Logger): Promise<ManifestAnswer> {
    const name = source.client.upstream.name;
    const key = `${name}\n${source.repo}\n${reference}`;
    return this.flights.run(key, async () => {
      try {
        return await this.fetchAndStore(source, reference, log);
      } catch (err) {
        if (stale && err instanceof UpstreamError && err.isOutage) return staleAnswer(stale, source, reference, err, log);
        throw registryErrorFor(err, "manifest", `manifest ${name}/${source.repo}${reference.includes(":") ? "@" : ":"}${reference}`);
      }
    });
  }

  private async fetchAndStore(source: FetchSource, reference: string, log: Logger): Promise<ManifestAnswer> {
    const { kv, store } = this.deps;
    const name = source.client.upstream.name;
    const reply = await source.client.manifest(source.repo, reference, "GET", log);
    const bytes = await source.client.readWithin(reply, () =>
      readLimited(reply.response, MAX_MANIFEST_BYTES).catch((cause) => {
        if (cause instanceof UpstreamError) throw cause; // e.g. the body timed out
        throw new UpstreamError("unreachable", "the upstream connection broke while sending a manifest", { cause });
      })
    );
    // These messages describe only what the upstream sent, so clients see them (in a 502).
    if (bytes === null) throw new UnusableUpstreamReply(`the manifest is larger than ${MAX_MANIFEST_BYTES} bytes`);
    const contentType = reply.response.headers.get("content-type");
    const mediaType = detectManifestMediaType(bytes, contentType);
    const problem = mediaType ? manifestShapeProblem(bytes, mediaType) : "it is not an image manifest or index";
    if (!mediaType || problem) {
      // Nothing is cached: an HTML page or JSON error sent with a manifest media type must never answer for the tag.
      log.warn("the upstream sent an unusable manifest; not caching it", {
        upstream: name,
        repo: source.repo,
        reference,
        contentType,
        problem,
        bytes: bytes.byteLength,
        startsWith: bytesPreview(bytes),
      });
      const shownType = JSON.stringify((contentType ?? "none").slice(0, 100));
      throw new UnusableUpstreamReply(mediaType ? `${problem} (a manifest sent as ${mediaType})` : `${problem} (content type ${shownType})`);
    }
    const requested = parseDigest(reference);
    const digest = await digestOfBytes(bytes, requested ? digestAlgorithm(requested) : "sha256");
    if (requested && digest !== requested) {
      throw new UnusableUpstreamReply(`the manifest sent for ${requested} hashes to ${digest}`);
    }
    const announced = parseDigest(reply.response.headers.get("docker-content-digest") ?? "");
    if (announced && digestAlgorithm(announced) === digestAlgorithm(digest) && announced !== digest) {
      throw new UnusableUpstreamReply(`the upstream announced ${announced} but the manifest bytes hash to ${digest}`);
    }
    const stored = this.keep(source, reference, { digest, mediaType, bytes, byTag: !requested }, log);
    // The client has its verified manifest either way; it waits for the store only briefly, so a
    // store that hangs (S3 accepting connections and never answering) costs a pull seconds, not
    // a wait per manifest. The store and the records finish in the background.
    await waitAtMost(stored, STORE_WAIT_MS);
    return { digest, mediaType, size: bytes.byteLength, bytes, source: "upstream" };
  }

  /** Stores verified manifest bytes, then records them; a store failure is logged and counted, never thrown. */
  private async keep(
    source: FetchSource,
    reference: string,
    m: { digest: Digest; mediaType: ManifestRecord["mediaType"]; bytes: Uint8Array<ArrayBuffer>; byTag: boolean },
    log: Logger,
  ): Promise<void> {
    const { kv, store } = this.deps;
    const name = source.client.upstream.name;
    const { digest, mediaType, bytes } = m;
    const now = this.now();
    try {
      await store.put(digest, bytes);
    } catch (err) {
      // Nothing is recorded, so the next pull asks upstream again.
      storeFailed(this.deps.metrics, log, "put", "the store could not keep a manifest; served it from upstream without caching", {
        upstream: name,
        repo: source.repo,
        digest,
        error: err,
      });
      return;
    }
    try {
      const record: ManifestRecord = { mediaType, size: bytes.byteLength, storedAt: now };
      await kv.write(kvKeys.manifest(name, source.repo, digest), record);
      if (m.byTag) {
        await kv.write(kvKeys.tag(name, source.repo, reference), { digest, mediaType, size: bytes.byteLength, checkedAt: now });
      }
    } catch (err) {
      log.warn("could not record a stored manifest in the KV; the next pull asks upstream again", { upstream: name, repo: source.repo, digest, error: err });
      return;
    }
    this.lru.set(digest, bytes);
    log.info("manifest cached", { upstream: name, repo: source.repo, reference, digest, mediaType });
  }

  /** The cached manifest of this repository, if both its record and its bytes are still there. */
  private async cached(source: FetchSource, digest: Digest, log: Logger): Promise<Cached | null> {
    const { kv, store } = this.deps;
    const record = await kv.readRecent(kvKeys.manifest(source.client.upstream.name, source.repo, digest), ManifestRecord);
    if (!record) return null;
    let bytes = this.lru.get(digest);
    if (!bytes) {
      try {
        // Null: the store lost them, or holds something of another size; fetch again.
        const stored = await readStoredBytes(store, digest, record.size);
        if (!stored) return null;
        bytes = stored;
      } catch (err) {
        storeFailed(this.deps.metrics, log, "read", "the store failed to read a cached manifest; asking upstream", { digest, error: err });
        return null;
      }
      // Kept by a version that did not check shapes: fetch it again rather than serve an HTML page as a manifest.
      const problem = manifestShapeProblem(bytes, record.mediaType);
      if (problem) {
        log.warn("a cached manifest is not a valid manifest of its media type; asking upstream", { digest, mediaType: record.mediaType, problem });
        return null;
      }
      this.lru.set(digest, bytes);
    }
    return { digest, record, bytes };
  }
}

/** The last known copy of a tag, when the upstream cannot be asked; the operator is told. */
function staleAnswer(cached: Cached, source: FetchSource, tag: string, err: UpstreamError, log: Logger): ManifestAnswer {
  log.warn("upstream unavailable; serving the last known digest of the tag", {
    upstream: source.client.upstream.name,
    repo: source.repo,
    tag,
    digest: cached.digest,
    error: err,
  });
  return { ...answerOf(cached), source: "stale" };
}

function answerOf(c: Cached): Omit<ManifestAnswer, "source"> {
  return { digest: c.digest, mediaType: c.record.mediaType, size: c.record.size, bytes: c.bytes };
}

