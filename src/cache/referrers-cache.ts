import { kvKeys } from "../kv/keys.ts";
import type { KvKey, TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { detectManifestMediaType, isIndexMediaType } from "../registry/media-types.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";
import {
  mergeReferrers,
  nextReferrersQuery,
  type ReferrerDescriptor,
  referrersIndex,
  referrersOf,
  referrersTagFor,
} from "../registry/referrers.ts";
import { digestOfBytes } from "../digest/digest-bytes.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { readStoredBytes } from "../storage/stored-bytes.ts";
import type { UpstreamClient, UpstreamReply } from "../upstream/client.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { waitAtMost } from "../util/deadline.ts";
import { readLimited } from "../util/streams.ts";
import type { FetchSource } from "./fetch-source.ts";
import { ReferrersRecord } from "./records.ts";
import { registryErrorFor, UnusableUpstreamReply } from "./registry-error-for.ts";
import { SingleFlight } from "./single-flight.ts";
import { storeFailed } from "./store-failure.ts";

/** An upstream that pages its referrers is followed this far, and no further. */
const MAX_PAGES = 10;
/** All pages together, and the tag-schema index, are read up to this size (the manifest limit). */
const MAX_LIST_BYTES = 4 * 1024 * 1024;
/** How long a client waits for the store to keep a fetched list (as for manifests). */
const STORE_WAIT_MS = 2_000;

export type ReferrersCacheDeps = { kv: TypedKv; store: BlobStore; metrics: StowageMetrics; tagTtlMs: number; now?: () => number };

export type ReferrersAnswer = {
  /** Every referrer known for the subject, unfiltered. */
  list: ReferrerDescriptor[];
  /** cache: fresh, or offline from the store; upstream: asked now; stale: upstream failed, the last list; offline: nothing stored, nobody asked. */
  source: "cache" | "upstream" | "stale" | "offline";
};

type Stored = { record: ReferrersRecord; list: ReferrerDescriptor[] };

/**
 * OCI 1.1 referrers (signatures, SBOMs, attestations attached to a manifest), cached like
 * tags: the whole list of a subject is kept (filters are applied per request), fresh within
 * --tag-ttl, then asked again; the last list is served while the upstream is down, and
 * offline whatever is stored is the answer (an empty list when nothing is). An upstream
 * without the referrers API (404) is read through the referrers tag schema instead.
 */
export class ReferrersCache {
  private readonly flights = new SingleFlight<ReferrersAnswer>();
  private readonly now: () => number;

  constructor(private readonly deps: ReferrersCacheDeps) {
    this.now = deps.now ?? Date.now;
  }

  async get(source: FetchSource, subject: Digest, log: Logger): Promise<ReferrersAnswer> {
    const answer = await this.answer(source, subject, log);
    const { metrics } = this.deps;
    if (answer.source === "cache") metrics.cacheHits.inc({ kind: "referrers" });
    else if (answer.source === "stale") metrics.staleServed.inc({ upstream: source.client.upstream.name });
    else if (answer.source === "upstream") metrics.cacheMisses.inc({ kind: "referrers" });
    return answer;
  }

  private async answer(source: FetchSource, subject: Digest, log: Logger): Promise<ReferrersAnswer> {
    const name = source.client.upstream.name;
    const key = kvKeys.referrers(name, source.repo, subject);
    let stored: Stored | null = null;
    try {
      stored = await readStored(this.deps, key);
    } catch (err) {
      storeFailed(this.deps.metrics, log, "read", "the store failed to read a cached referrers list; asking upstream", { subject, error: err });
    }
    // Offline, an absent list is an empty one: the spec's answer for a subject without referrers.
    if (source.client.upstream.offline) return stored ? { list: stored.list, source: "cache" } : { list: [], source: "offline" };
    if (stored && this.now() - stored.record.checkedAt < this.deps.tagTtlMs) return { list: stored.list, source: "cache" };

    return this.flights.run(`${name}\n${source.repo}\n${subject}`, async () => {
      let list: ReferrerDescriptor[];
      try {
        list = await this.fetchList(source, subject, log);
      } catch (err) {
        if (stored && err instanceof UpstreamError && err.isOutage) {
          log.warn("upstream unavailable; serving the last known referrers list", { upstream: name, repo: source.repo, subject, error: err });
          return { list: stored.list, source: "stale" };
        }
        throw registryErrorFor(err, "manifest", `referrers of ${name}/${source.repo}@${subject}`);
      }
      await waitAtMost(this.keep(source, subject, list, log), STORE_WAIT_MS);
      return { list, source: "upstream" };
    });
  }

  /** The whole list from the referrers API, following its pages; the tag schema when the API is missing. */
  private async fetchList(source: FetchSource, subject: Digest, log: Logger): Promise<ReferrerDescriptor[]> {
    const { client, repo } = source;
    const path = `/v2/${repo}/referrers/${subject}`;
    let list: ReferrerDescriptor[] = [];
    let query = "";
    let left = MAX_LIST_BYTES;
    for (let page = 0; page < MAX_PAGES; page++) {
      let reply: UpstreamReply;
      try {
        reply = await client.referrers(repo, subject, query, log);
      } catch (err) {
        // The spec's sign of a registry without the referrers API (distribution 2.8, many others).
        if (page === 0 && err instanceof UpstreamError && err.failure === "not-found") return this.fromTagSchema(source, subject, log);
        throw err;
      }
      const bytes = await readSmallBody(client, reply, left, "a referrers list");
      if (bytes === null) {
        if (page === 0) throw new UnusableUpstreamReply(`the referrers list is larger than ${MAX_LIST_BYTES} bytes`);
        log.warn("the upstream's referrers list is larger than Stowage keeps; serving the pages read so far", { upstream: client.upstream.name, repo, subject, pages: page });
        return list;
      }
      const found = referrersOf(bytes);
      if (found === null) throw new UnusableUpstreamReply("the referrers list is not an image index");
      list = mergeReferrers(list, found);
      left -= bytes.byteLength;
      const next = nextReferrersQuery(reply.response.headers.get("link"), path);
      if (next === null) return list;
      query = next;
    }
    log.warn(`the upstream's referrers list has more than ${MAX_PAGES} pages; serving the first ${MAX_PAGES}`, { upstream: client.upstream.name, repo, subject });
    return list;
  }

  /** The referrers tag schema: the index a pushing client keeps under tag `sha256-<hex>`; none means no referrers. */
  private async fromTagSchema(source: FetchSource, subject: Digest, log: Logger): Promise<ReferrerDescriptor[]> {
    const { client, repo } = source;
    const tag = referrersTagFor(subject);
    let reply: UpstreamReply;
    try {
      reply = await client.manifest(repo, tag, "GET", log);
    } catch (err) {
      if (err instanceof UpstreamError && err.failure === "not-found") return [];
      throw err;
    }
    const bytes = await readSmallBody(client, reply, MAX_LIST_BYTES, "a referrers index");
    if (bytes === null) throw new UnusableUpstreamReply(`the referrers index under tag ${tag} is larger than ${MAX_LIST_BYTES} bytes`);
    const mediaType = detectManifestMediaType(bytes, reply.response.headers.get("content-type"));
    const list = mediaType && isIndexMediaType(mediaType) ? referrersOf(bytes) : null;
    if (list === null) {
      // Someone else's tag that happens to have this name: it lists no referrers.
      log.warn("the referrers tag holds something other than an image index; taking it as no referrers", { upstream: client.upstream.name, repo, tag, mediaType });
      return [];
    }
    return mergeReferrers([], list);
  }

  /** Keeps a fetched list for later requests (and the offline side); a store failure is logged, never thrown. */
  private async keep(source: FetchSource, subject: Digest, list: ReferrerDescriptor[], log: Logger): Promise<void> {
    const name = source.client.upstream.name;
    try {
      await writeStored(this.deps, kvKeys.referrers(name, source.repo, subject), list, this.now());
    } catch (err) {
      storeFailed(this.deps.metrics, log, "put", "could not keep a referrers list; served it from upstream without caching", { upstream: name, repo: source.repo, subject, error: err });
    }
  }
}

/**
 * Records referrers known locally (an import bringing an image's signatures across): merges
 * `descriptors` into the subject's cached list (by digest; what is there stays), stores the
 * new list and marks it checked now. Store and KV failures are thrown to the caller.
 */
export async function recordReferrers(
  deps: { kv: TypedKv; store: BlobStore; now?: () => number },
  upstream: string,
  repo: string,
  subject: Digest,
  descriptors: readonly ReferrerDescriptor[],
): Promise<void> {
  const key = kvKeys.referrers(upstream, repo, subject);
  // Compare-and-set, so two imports recording referrers of one subject at once both count.
  for (let attempt = 0; attempt < 5; attempt++) {
    const { versionstamp } = await deps.kv.readVersioned(key, ReferrersRecord);
    const current = await readStored(deps, key);
    const list = mergeReferrers(current?.list ?? [], descriptors);
    const record = await storeList(deps.store, list, (deps.now ?? Date.now)());
    if ((await deps.kv.writeIfUnchanged(key, versionstamp, record)) !== null) return;
  }
  throw new Error(`the referrers list of ${upstream}/${repo}@${subject} kept changing while it was recorded`);
}

/** The stored list under `key`, or null when there is none (or its bytes are gone or unreadable as a list). */
async function readStored(deps: { kv: TypedKv; store: BlobStore }, key: KvKey): Promise<Stored | null> {
  const record = await deps.kv.read(key, ReferrersRecord);
  if (!record) return null;
  const bytes = await readStoredBytes(deps.store, record.digest, record.size);
  if (!bytes) return null;
  const list = referrersOf(bytes);
  return list ? { record, list } : null;
}

async function writeStored(deps: { kv: TypedKv; store: BlobStore }, key: KvKey, list: readonly ReferrerDescriptor[], now: number): Promise<void> {
  await deps.kv.write(key, await storeList(deps.store, list, now));
}

/** Puts the list's index bytes in the store under their sha256; the record that names them. */
async function storeList(store: BlobStore, list: readonly ReferrerDescriptor[], now: number): Promise<ReferrersRecord> {
  const bytes = referrersIndex(list);
  const digest = await digestOfBytes(bytes);
  await store.put(digest, bytes);
  return { digest, size: bytes.byteLength, checkedAt: now };
}

/** A small body read whole under the upstream timeout; null when it is larger than `max`. */
function readSmallBody(client: UpstreamClient, reply: UpstreamReply, max: number, what: string): Promise<Uint8Array<ArrayBuffer> | null> {
  return client.readWithin(reply, () =>
    readLimited(reply.response, max).catch((cause) => {
      if (cause instanceof UpstreamError) throw cause; // e.g. the body timed out
      throw new UpstreamError("unreachable", `the upstream connection broke while sending ${what}`, { cause });
    })
  );
}
