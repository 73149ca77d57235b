/**
 * Prefill: fetch images into the store exactly as pulls would, through the same manifest and
 * blob caches (same verification, same records), with no server running. Each reference
 * ends ok or failed on its own; cached content is skipped without downloading, so a second
 * run fetches nothing and a re-run after an interrupt completes what is missing.
 */
import type { BlobAnswer } from "../cache/blob-cache.ts";
import type { FetchSource } from "../cache/fetch-source.ts";
import type { ManifestAnswer } from "../cache/manifest-cache.ts";
import type { Logger } from "../log.ts";
import { RegistryError } from "../registry/errors.ts";
import {
  formatPlatform,
  isManifestDescriptor,
  manifestRefs,
  platformWanted,
  type Descriptor,
  type Platform,
} from "../registry/manifest-refs.ts";
import { digestHex, parseDigest, type Digest, type Reference } from "../registry/reference.ts";
import type { ReferrerDescriptor } from "../registry/referrers.ts";
import type { UpstreamClient } from "../upstream/client.ts";
import { fullImageRef, resolveImageRef } from "../upstream/target.ts";
import type { Upstream } from "../upstream/upstream.ts";
import type { Progress, ProgressItem } from "../progress/progress.ts";
import { formatBytes } from "../progress/format.ts";

/** What prefill uses of the cache (CacheServices has all of it), typed by shape. */
export type PrefillDeps = {
  clients: ReadonlyMap<string, UpstreamClient>;
  manifests: { get(source: FetchSource, reference: Reference, log: Logger): Promise<ManifestAnswer> };
  blobs: {
    isCached(source: FetchSource, digest: Digest): Promise<boolean>;
    get(source: FetchSource, digest: Digest, method: "GET" | "HEAD", range: string | null, log: Logger): Promise<BlobAnswer>;
  };
  /** The referrers API (with its tag-schema fallback); without it only cosign's tags are looked at. */
  referrers?: { get(source: FetchSource, subject: Digest, log: Logger): Promise<{ list: ReferrerDescriptor[] }> };
  upstreams: readonly Upstream[];
  defaultUpstream: string;
};

export type PrefillOptions = {
  /** As a client pulls them through Stowage: `[UPSTREAM/]REPO[:TAG|@DIGEST]`. */
  refs: string[];
  /** Index children to keep; empty: all of them. */
  platforms: Platform[];
  /** References fetched at a time. */
  jobs: number;
  /** Also what is attached to each manifest: OCI referrers and cosign's .sig/.att/.sbom tags. */
  withReferrers: boolean;
};

export type PrefillImageResult = {
  /** The reference as given. */
  ref: string;
  /** The full reference (`registry/repo:tag`), null when the reference could not be read. */
  image: string | null;
  status: "ok" | "failed";
  /** The digest the reference resolved to; null when it failed before that. */
  digest: Digest | null;
  /** Manifests stored or found stored: the image's, index children, attached artifacts. */
  manifests: number;
  /** Distinct blobs of all of them. */
  blobs: number;
  /** Bytes downloaded from upstream in this run. */
  bytesFetched: number;
  /** Bytes of blobs that were already in the store (not downloaded again). */
  bytesCached: number;
  /** Attached artifacts (signatures, SBOMs, attestations) brought along with --with-referrers. */
  referrers: number;
  /** Failed: why, in the operator's words. */
  reason?: string;
};

export type PrefillResult = { images: PrefillImageResult[] };

/** Blobs of one image downloaded at a time. */
const BLOBS_AT_A_TIME = 3;
/** An index inside an index is followed; deeper nesting is not something registries serve. */
const MAX_DEPTH = 2;
/** Cosign keeps signatures, attestations and SBOMs under these tag suffixes of `sha256-<hex>`. */
const COSIGN_SUFFIXES = [".sig", ".att", ".sbom"];
/** After its body is read, how long a blob may take to be committed to the store. */

export async function prefill(deps: PrefillDeps, options: PrefillOptions, progress: Progress, log: Logger): Promise<PrefillResult> {
  const images: PrefillImageResult[] = new Array(options.refs.length);
  let next = 0;
  const worker = async () => {
    while (next < options.refs.length) {
      const i = next++;
      images[i] = await prefillOne(deps, options, options.refs[i]!, progress, log);
    }
  };
  const jobs = Math.max(1, Math.min(options.jobs || 4, options.refs.length));
  await Promise.all(Array.from({ length: jobs }, worker));
  return { images };
}

/** Failures that end one reference, with the operator's reason. */
class PrefillFailure extends Error {}

async function prefillOne(deps: PrefillDeps, options: PrefillOptions, ref: string, progress: Progress, log: Logger): Promise<PrefillImageResult> {
  const result: PrefillImageResult = {
    ref,
    image: null,
    status: "failed",
    digest: null,
    manifests: 0,
    blobs: 0,
    bytesFetched: 0,
    bytesCached: 0,
    referrers: 0,
  };
  let target: ReturnType<typeof resolveImageRef>;
  try {
    target = resolveImageRef(deps.upstreams, deps.defaultUpstream, ref);
  } catch (err) {
    result.reason = reasonOf(err);
    progress.item(ref, null).fail(result.reason);
    return result;
  }
  const { upstream, repo } = target;
  result.image = fullImageRef(upstream, repo, target);
  const item = progress.item(result.image, null);
  const client = deps.clients.get(upstream.name);
  try {
    if (upstream.offline) throw new PrefillFailure(`upstream ${upstream.name} is offline; prefill on the connected side, then export and import`);
    if (!client) throw new PrefillFailure(`upstream ${upstream.name} has no client (is it configured?)`);
    const walk = new ImageWalk(deps, { client, repo }, options.platforms, item, log);
    const reference: Reference = target.digest ? { kind: "digest", digest: target.digest } : { kind: "tag", tag: target.tag ?? "latest" };
    const top = await walk.manifest(reference, 0, true);
    result.digest = top;
    if (options.withReferrers) result.referrers = await walk.attached(deps.referrers);
    await walk.fetchBlobs();
    Object.assign(result, walk.figures(), { status: "ok" });
    const note = result.bytesCached > 0 ? `${formatBytes(result.bytesCached)} already cached` : undefined;
    item.done(result.referrers > 0 ? [note, `${result.referrers} attached`].filter(Boolean).join(", ") : note);
    log.info("prefilled", { image: result.image, digest: top, ...walk.figures(), referrers: result.referrers });
  } catch (err) {
    result.reason = reasonOf(err);
    item.fail(result.reason);
    log.warn("prefill failed", { image: result.image, reason: result.reason });
  }
  return result;
}

/**
 * One reference's manifests and blobs: manifests are fetched as they are found (an index
 * before its children), blobs collected and fetched at the end, each once.
 */
class ImageWalk {
  private readonly manifestDigests: Digest[] = [];
  private readonly blobs = new Map<Digest, Descriptor>();
  private fetched = 0;
  private cached = 0;

  constructor(
    private readonly deps: PrefillDeps,
    private readonly source: FetchSource,
    private readonly platforms: Platform[],
    private readonly item: ProgressItem,
    private readonly log: Logger,
  ) {}

  figures() {
    return { manifests: this.manifestDigests.length, blobs: this.blobs.size, bytesFetched: this.fetched, bytesCached: this.cached };
  }

  /** Fetches a manifest (and, for an index, its wanted children); returns its digest. */
  async manifest(reference: Reference, depth: number, filterPlatforms: boolean): Promise<Digest> {
    const answer = await this.deps.manifests.get(this.source, reference, this.log);
    if (!this.manifestDigests.includes(answer.digest)) this.manifestDigests.push(answer.digest);
    let refs;
    try {
      refs = manifestRefs(answer.bytes, answer.mediaType);
    } catch (err) {
      throw new PrefillFailure(`manifest ${answer.digest}: ${reasonOf(err)}`);
    }
    for (const blob of refs.blobs) {
      // Foreign layers (Windows base images) are fetched from their URLs, never from the registry.
      if (!blob.mediaType.includes("foreign")) this.blobs.set(blob.digest, blob);
    }
    if (refs.children.length > 0) {
      if (depth >= MAX_DEPTH) throw new PrefillFailure(`manifest ${answer.digest}: indexes nested deeper than ${MAX_DEPTH} levels`);
      const wanted = refs.children.filter((d) => isManifestDescriptor(d) && (!filterPlatforms || platformWanted(d, this.platforms)));
      if (wanted.length === 0 && filterPlatforms && this.platforms.length > 0) {
        const offered = refs.children.flatMap((d) => (d.platform ? [formatPlatform(d.platform)] : []));
        throw new PrefillFailure(
          `no manifest for ${this.platforms.map(formatPlatform).join(", ")} in the index ${answer.digest} (it has ${offered.join(", ") || "no platforms"})`,
        );
      }
      for (const child of wanted) await this.manifest({ kind: "digest", digest: child.digest }, depth + 1, filterPlatforms);
    }
    return answer.digest;
  }

  /**
   * What is attached to each manifest found so far, one level deep: the referrers list and
   * cosign's tags. Each artifact is walked like an image (all of its children, its blobs).
   */
  async attached(referrers: PrefillDeps["referrers"]): Promise<number> {
    const subjects = [...this.manifestDigests];
    const artifacts = new Set<Digest>();
    for (const subject of subjects) {
      if (referrers) {
        const { list } = await referrers.get(this.source, subject, this.log);
        for (const d of list) {
          const digest = parseDigest(d.digest);
          if (!digest || artifacts.has(digest) || subjects.includes(digest)) continue;
          artifacts.add(digest);
          await this.manifest({ kind: "digest", digest }, 0, false);
        }
      }
      for (const suffix of COSIGN_SUFFIXES) {
        const tag = `sha256-${digestHex(subject)}${suffix}`;
        if (!subject.startsWith("sha256:")) continue;
        try {
          const digest = await this.manifest({ kind: "tag", tag }, 0, false);
          artifacts.add(digest);
        } catch (err) {
          if (err instanceof RegistryError && err.status === 404) continue; // none attached
          throw err;
        }
      }
    }
    return artifacts.size;
  }

  /** Blobs this repository already has in the store are counted and skipped; the others are downloaded, a few at a time. */
  async fetchBlobs(): Promise<void> {
    const missing: Descriptor[] = [];
    await eachLimited([...this.blobs.values()], BLOBS_AT_A_TIME, async (d) => {
      if (await this.deps.blobs.isCached(this.source, d.digest)) this.cached += d.size;
      else missing.push(d);
    });
    this.item.setTotal(missing.reduce((n, d) => n + d.size, 0));
    await eachLimited(missing, BLOBS_AT_A_TIME, (d) => this.fetchBlob(d));
  }

  private async fetchBlob(d: Descriptor): Promise<void> {
    const answer = await this.deps.blobs.get(this.source, d.digest, "GET", null, this.log);
    if (answer.source === "cache") {
      // Another reference of this run stored it meanwhile (a shared base layer).
      await answer.body?.cancel();
      this.cached += answer.size ?? d.size;
      this.item.add(d.size);
      return;
    }
    const reader = answer.body?.getReader();
    if (reader) {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.fetched += value.byteLength;
        this.item.add(value.byteLength);
      }
    }
    // The last byte reaches clients once verified, a moment before the store commit and the
    // records: wait for them, so that what prefill reports done is in the store (and the KV is
    // not closed under a commit).
    if (answer.stored && !(await answer.stored)) {
      throw new PrefillFailure(`blob ${d.digest} was downloaded and verified but the store could not keep it (see the log)`);
    }
  }
}

async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown = null;
  const worker = async () => {
    while (next < items.length && failed === null) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== null) throw failed;
}

function reasonOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
