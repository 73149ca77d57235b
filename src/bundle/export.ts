// `stowage export`: the chosen images, as the cache holds them, written as an OCI image layout
// in a tar. Reads only the KV and the store (never an upstream). Everything is walked first
// (metadata only), then oci-layout and index.json are written first, so that even a bundle cut
// short names its images, then every blob once, streamed from the store.
import { BlobRecord, ManifestRecord, ReferrersRecord, TagRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Progress, ProgressItem } from "../progress/progress.ts";
import { ImageRefError } from "../registry/image-ref.ts";
import { manifestShapeProblem } from "../registry/manifest-shape.ts";
import { isManifestDescriptor, manifestRefs, ManifestRefsError } from "../registry/manifest-refs.ts";
import type { ManifestMediaType } from "../registry/media-types.ts";
import { digestHex, parseDigest, type Digest } from "../registry/reference.ts";
import { referrersOf } from "../registry/referrers.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { fullImageRef, resolveImageRef } from "../upstream/target.ts";
import type { Upstream } from "../upstream/upstream.ts";
import { observedBody } from "../util/streams.ts";
import { readStoredBytes } from "../storage/stored-bytes.ts";
import { ABSENT_ANNOTATION, bytesMatch, describeBlob, describeChild, errorText } from "./common.ts";
import { blobPath, digestOfBlobPath, indexJsonBytes, INDEX_FILE, OCI_LAYOUT_FILE, ociLayoutBytes, type LayoutImage } from "./layout.ts";
import { readTar, tarWriter, type TarWriteEntry } from "./tar.ts";

export type BundleDeps = { kv: TypedKv; store: BlobStore; upstreams: readonly Upstream[]; defaultUpstream: string };

export type ExportOptions = {
  /** References as a client pulls them (`[UPSTREAM/]REPO:TAG`, `...@sha256:...`), or every cached image. */
  refs: string[] | "all";
  /** A previous bundle: blobs it holds are not written again. */
  since: ReadableStream<Uint8Array> | null;
  /** Also the signatures, SBOMs and attestations attached to each image (referrers, cosign tags). */
  withReferrers: boolean;
};

export type ExportedImage = {
  /** The full reference index.json names it by (or the reference as given, when it could not be resolved). */
  ref: string;
  digest: Digest | null;
  /** Bytes written to the bundle for this image (blobs shared with an earlier image count there). */
  bytes: number;
  status: "ok" | "failed";
  reason?: string;
};

export type ExportSummary = { images: ExportedImage[]; blobs: number; bytes: number };

/** The bundle could not be written at all (an unreadable --since bundle, the output failing, the store failing mid-way). */
export class ExportError extends Error {}

/** An image walked and found complete: what index.json says of it and what it needs written. */
type Plan = {
  image: LayoutImage;
  /** Index children the cache never pulled (other platforms). */
  absent: Digest[];
  /** Manifests (root first) and blobs, each once. */
  entries: Array<{ digest: Digest; size: number }>;
  /** Every manifest of the image, for finding what is attached to it. */
  manifests: Digest[];
  upstream: Upstream;
  repo: string;
  result: ExportedImage;
};

/** What a walk could not find, in the operator's words. */
class Incomplete extends Error {}

/** Writes a bundle of the chosen images to `out` (closed at the end); the images left out are in the summary with their reason. */
export async function exportBundle(
  deps: BundleDeps,
  options: ExportOptions,
  out: WritableStream<Uint8Array>,
  progress: Progress,
  log: Logger,
): Promise<ExportSummary> {
  const previous = options.since ? await blobsOfBundle(options.since) : new Set<Digest>();
  const results: ExportedImage[] = [];
  const plans: Plan[] = [];
  const planned = new Set<string>();

  const consider = async (upstream: Upstream, repo: string, ref: { tag: string | null; digest: Digest | null }) => {
    const full = fullImageRef(upstream, repo, ref);
    if (planned.has(full)) return;
    planned.add(full);
    const outcome = await planImage(deps, upstream, repo, ref, full);
    if ("reason" in outcome) {
      const result: ExportedImage = { ref: full, digest: ref.digest, bytes: 0, status: "failed", reason: outcome.reason };
      results.push(result);
      progress.item(result.ref, null).fail(outcome.reason);
      log.warn("image left out of the bundle", { ref: full, reason: outcome.reason });
    } else {
      results.push(outcome.result);
      plans.push(outcome);
    }
  };

  if (options.refs === "all") {
    for (const target of await everyCachedImage(deps, log)) await consider(target.upstream, target.repo, target);
  } else {
    for (const text of options.refs) {
      let target;
      try {
        target = resolveImageRef(deps.upstreams, deps.defaultUpstream, text);
      } catch (err) {
        if (!(err instanceof ImageRefError)) throw err;
        results.push({ ref: text, digest: null, bytes: 0, status: "failed", reason: err.message });
        progress.item(text, null).fail(err.message);
        continue;
      }
      await consider(target.upstream, target.repo, target);
    }
  }
  if (options.withReferrers) {
    // Attached artifacts may have artifacts of their own (a signature of an SBOM): walk until nothing new turns up.
    for (let i = 0; i < plans.length; i++) {
      const plan = plans[i]!;
      for (const attached of await attachedTo(deps, plan, log)) await consider(plan.upstream, plan.repo, attached);
    }
  }

  const written = new Set<Digest>();
  let blobs = 0;
  let bytes = 0;
  let writing: ProgressItem | null = null;
  async function* entries(): AsyncGenerator<TarWriteEntry> {
    yield { name: OCI_LAYOUT_FILE, size: ociLayoutBytes().byteLength, body: ociLayoutBytes() };
    const index = indexJsonBytes(plans.map((p) => p.image));
    yield { name: INDEX_FILE, size: index.byteLength, body: index };
    for (const plan of plans) {
      const todo = plan.entries.filter((e) => !written.has(e.digest) && !previous.has(e.digest));
      const item: ProgressItem = progress.item(plan.image.ref, todo.reduce((n, e) => n + e.size, 0));
      writing = item;
      for (const e of todo) {
        if (written.has(e.digest)) continue;
        written.add(e.digest);
        const stream = await deps.store.open(e.digest);
        if (!stream) {
          throw new ExportError(`${e.digest} (of ${plan.image.ref}) left the store while the bundle was being written`);
        }
        blobs++;
        yield {
          name: blobPath(e.digest),
          size: e.size,
          body: observedBody(stream, {
            onChunk: (n) => {
              item.add(n);
              plan.result.bytes += n;
              bytes += n;
            },
          }),
        };
      }
      // Every body of this image has been read to its end by the time the writer asks for more.
      const shared = plan.entries.length - todo.length;
      item.done(shared > 0 ? `${shared} of ${plan.entries.length} objects already in the bundle${previous.size > 0 ? " or the previous one" : ""}` : undefined);
      writing = null;
    }
  }

  try {
    await tarWriter(entries()).pipeTo(out);
  } catch (err) {
    const failure = err instanceof ExportError ? err : new ExportError(`the bundle could not be written: ${errorText(err)}`, { cause: err });
    (writing as ProgressItem | null)?.fail(failure.message);
    throw failure;
  }
  log.info("bundle written", { images: plans.length, failed: results.length - plans.length, blobs, bytes });
  return { images: results, blobs, bytes };
}

/** The digests of the blobs a previous bundle holds (bodies are skipped, not read). */
async function blobsOfBundle(stream: ReadableStream<Uint8Array>): Promise<Set<Digest>> {
  const found = new Set<Digest>();
  let pending: Digest | null = null;
  try {
    for await (const entry of readTar(stream)) {
      // An entry counts once the tar goes on past it: the last one may be cut short.
      if (pending) found.add(pending);
      pending = digestOfBlobPath(entry.name);
      await entry.body.cancel();
    }
  } catch (err) {
    throw new ExportError(`--since: the previous bundle cannot be read whole (${errorText(err)}); without it, what the far side has is unknown`, { cause: err });
  }
  if (pending) found.add(pending);
  return found;
}

/** Walks one image in the KV and the store: a plan to write it, or why it cannot be. */
async function planImage(
  deps: BundleDeps,
  upstream: Upstream,
  repo: string,
  ref: { tag: string | null; digest: Digest | null },
  full: string,
): Promise<Plan | { reason: string }> {
  let root: Digest;
  if (ref.digest) root = ref.digest;
  else {
    const tag = await deps.kv.read(kvKeys.tag(upstream.name, repo, ref.tag ?? "latest"), TagRecord);
    if (!tag) return { reason: `not in the cache: run stowage prefill ${full} first` };
    root = tag.digest;
  }
  const entries: Plan["entries"] = [];
  const manifests: Digest[] = [];
  const absent: Digest[] = [];
  const seen = new Set<Digest>();
  let rootType: ManifestMediaType | null = null;
  let rootSize = 0;

  const walk = async (digest: Digest, where: string | null): Promise<"absent" | "ok"> => {
    const of = where ? ` of ${where}` : "";
    const record = await deps.kv.read(kvKeys.manifest(upstream.name, repo, digest), ManifestRecord);
    if (!record) {
      if (where === null) throw new Incomplete(`not in the cache: run stowage prefill ${full} first`);
      return "absent";
    }
    const bytes = await readStoredBytes(deps.store, digest, record.size);
    if (!bytes || !(await bytesMatch(bytes, digest))) {
      throw new Incomplete(`manifest ${digest}${of} is recorded but its bytes are not (intact) in the store; run stowage prefill ${full} again`);
    }
    const problem = manifestShapeProblem(bytes, record.mediaType);
    if (problem) throw new Incomplete(`manifest ${digest}${of} in the store is unusable: ${problem}`);
    if (where === null) {
      rootType = record.mediaType;
      rootSize = record.size;
    }
    if (seen.has(digest)) return "ok";
    seen.add(digest);
    manifests.push(digest);
    entries.push({ digest, size: record.size });
    let refs;
    try {
      refs = manifestRefs(bytes, record.mediaType);
    } catch (err) {
      if (err instanceof ManifestRefsError) throw new Incomplete(`manifest ${digest}${of}: ${err.message}`);
      throw err;
    }
    for (const child of refs.children) {
      if (!isManifestDescriptor(child)) continue;
      if ((await walk(child.digest, describeChild(child))) === "absent") absent.push(child.digest);
    }
    for (const [i, blob] of refs.blobs.entries()) {
      if (seen.has(blob.digest)) continue;
      const what = `${describeBlob(i, blob.digest)}${of}`;
      const record = await deps.kv.read(kvKeys.blob(blob.digest), BlobRecord);
      const stored = record ? await deps.store.stat(blob.digest) : null;
      if (!record || !stored) throw new Incomplete(`${what} is missing from the cache; run stowage prefill ${full} again`);
      if (stored.size !== blob.size) throw new Incomplete(`${what} has ${stored.size} bytes in the store, the manifest says ${blob.size}`);
      seen.add(blob.digest);
      entries.push({ digest: blob.digest, size: blob.size });
    }
    return "ok";
  };

  try {
    await walk(root, null);
  } catch (err) {
    if (err instanceof Incomplete) return { reason: err.message };
    throw err;
  }
  if (manifests.length === 1 && absent.length > 0) {
    return { reason: `none of the platforms of ${full} is in the cache: run stowage prefill ${full} first` };
  }
  const image: LayoutImage = { ref: full, mediaType: rootType!, digest: root, size: rootSize };
  if (absent.length > 0) image.annotations = { [ABSENT_ANNOTATION]: absent.join(",") };
  return { image, absent, entries, manifests, upstream, repo, result: { ref: full, digest: root, bytes: 0, status: "ok" } };
}

type CachedImage = { upstream: Upstream; repo: string; tag: string | null; digest: Digest | null };

/**
 * `--all`: every tag, then every manifest no tag reaches and no other manifest lists (images
 * pulled by digest), sorted so the same cache gives the same bundle.
 */
async function everyCachedImage(deps: BundleDeps, log: Logger): Promise<CachedImage[]> {
  const byName = new Map(deps.upstreams.map((u) => [u.name, u]));
  const out: CachedImage[] = [];
  const reached = new Set<string>(); // upstream \n repo \n digest
  const unknownUpstreams = new Set<string>();
  const upstreamOf = (name: string) => {
    const u = byName.get(name);
    if (!u && !unknownUpstreams.has(name)) {
      unknownUpstreams.add(name);
      log.warn("the cache holds images of an upstream that is not configured; they are left out", { upstream: name });
    }
    return u;
  };
  const tags: Array<{ upstream: Upstream; repo: string; tag: string; digest: Digest }> = [];
  for await (const { key, value } of deps.kv.list(["tag"], TagRecord)) {
    const [, upstreamName, repo, tag] = key.map(String);
    const upstream = upstreamOf(upstreamName!);
    if (upstream && repo && tag) tags.push({ upstream, repo, tag, digest: value.digest });
  }
  tags.sort((a, b) => compare(`${a.upstream.name}/${a.repo}:${a.tag}`, `${b.upstream.name}/${b.repo}:${b.tag}`));
  for (const t of tags) {
    out.push({ upstream: t.upstream, repo: t.repo, tag: t.tag, digest: null });
    reached.add(`${t.upstream.name}\n${t.repo}\n${t.digest}`);
  }
  // Children of every stored manifest are not images of their own.
  const candidates: Array<{ upstream: Upstream; repo: string; digest: Digest }> = [];
  for await (const { key, value } of deps.kv.list(["manifest"], ManifestRecord)) {
    const [, upstreamName, repo, d] = key.map(String);
    const upstream = upstreamOf(upstreamName!);
    const digest = parseDigest(d ?? "");
    if (!upstream || !repo || !digest) continue;
    candidates.push({ upstream, repo, digest });
    const bytes = await readStoredBytes(deps.store, digest, value.size).catch(() => null);
    if (!bytes) continue;
    try {
      for (const child of manifestRefs(bytes, value.mediaType).children) reached.add(`${upstream.name}\n${repo}\n${child.digest}`);
    } catch {
      // An unreadable manifest is reported when (if) it is walked as an image.
    }
  }
  candidates.sort((a, b) => compare(`${a.upstream.name}/${a.repo}@${a.digest}`, `${b.upstream.name}/${b.repo}@${b.digest}`));
  for (const c of candidates) {
    if (!reached.has(`${c.upstream.name}\n${c.repo}\n${c.digest}`)) out.push({ upstream: c.upstream, repo: c.repo, tag: null, digest: c.digest });
  }
  return out;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const COSIGN_SUFFIXES = [".sig", ".att", ".sbom"];

/** What is attached to an image's manifests: referrers the cache knows (by digest) and cosign's tags. */
async function attachedTo(deps: BundleDeps, plan: Plan, log: Logger): Promise<Array<{ tag: string | null; digest: Digest | null }>> {
  const out: Array<{ tag: string | null; digest: Digest | null }> = [];
  const name = plan.upstream.name;
  for (const subject of plan.manifests) {
    const record = await deps.kv.read(kvKeys.referrers(name, plan.repo, subject), ReferrersRecord);
    const bytes = record ? await readStoredBytes(deps.store, record.digest, record.size) : null;
    for (const d of (bytes && referrersOf(bytes)) ?? []) {
      const digest = parseDigest(d.digest);
      if (!digest) continue;
      if (await deps.kv.read(kvKeys.manifest(name, plan.repo, digest), ManifestRecord)) out.push({ tag: null, digest });
      else log.info("a referrer of the image is not in the cache; left out", { image: plan.image.ref, subject, referrer: digest, artifactType: d.artifactType });
    }
    for (const suffix of COSIGN_SUFFIXES) {
      const tag = `sha256-${digestHex(subject)}${suffix}`;
      if (subject.startsWith("sha256:") && (await deps.kv.read(kvKeys.tag(name, plan.repo, tag), TagRecord))) out.push({ tag, digest: null });
    }
  }
  return out;
}
