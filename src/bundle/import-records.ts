// The recording half of `stowage import`: after the tar is read (import-blobs.ts), each image
// of index.json is walked; only an image whose every manifest and blob is verified gets the
// records a pull would have left (blobs and links, then manifests, referrers, its tag last), so
// a cut or damaged bundle imports what is whole and names the rest.
import { z } from "zod";
import { BlobRecord, LinkRecord, ManifestRecord, ReferrersRecord, TagRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Progress } from "../progress/progress.ts";
import { ImageRefError } from "../registry/image-ref.ts";
import { isManifestDescriptor, manifestRefs } from "../registry/manifest-refs.ts";
import { bytesPreview, manifestShapeProblem } from "../registry/manifest-shape.ts";
import { detectManifestMediaType, isManifestMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";
import { referrersOf, type ReferrerDescriptor } from "../registry/referrers.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { resolveImageRef } from "../upstream/target.ts";
import type { Upstream } from "../upstream/upstream.ts";
import { parseJsonBytes } from "../util/encoding.ts";
import { MAX_MANIFEST_BYTES } from "../registry/manifest-shape.ts";
import { readStoredBytes } from "../storage/stored-bytes.ts";
import { ABSENT_ANNOTATION, bytesMatch, describeBlob, describeChild, errorText } from "./common.ts";
import type { BundleContents } from "./import-blobs.ts";
import { LayoutError, parseIndexJson, type LayoutImage } from "./layout.ts";

export type RecordDeps = {
  kv: TypedKv;
  store: BlobStore;
  upstreams: readonly Upstream[];
  defaultUpstream: string;
  /** Adds attached artifacts to their subject's referrers list (src/cache/referrers-cache.ts recordReferrers). */
  recordReferrers?: (upstream: string, repo: string, subject: Digest, descriptors: ReferrerDescriptor[]) => Promise<void>;
};

export type ImportedImage = { ref: string; status: "ok" | "failed"; reason?: string };

type WalkContext = {
  deps: RecordDeps;
  verified: ReadonlySet<Digest>;
  damaged: ReadonlyMap<Digest, string>;
  kept: ReadonlyMap<Digest, Uint8Array>;
  truncated: string | null;
  log: Logger;
  /** Every manifest a walk read (of imported and failed images alike). */
  manifestsSeen: Set<Digest>;
};

/** Records every image of index.json that is whole (its problems go to `problems`), then the blobs no image claimed. */
export async function recordBundle(deps: RecordDeps, read: BundleContents, problems: string[], progress: Progress, log: Logger): Promise<ImportedImage[]> {
  const ctx: WalkContext = { deps, verified: read.verified, damaged: read.damaged, kept: read.kept, truncated: read.truncated, log, manifestsSeen: new Set() };
  const images = await importImages(ctx, read.indexBytes, problems, progress);
  await recordLooseBlobs(ctx, read.received);
  return images;
}

/** The images index.json names, each imported or failed with its reason. */
async function importImages(ctx: WalkContext, indexBytes: Uint8Array | null, problems: string[], progress: Progress): Promise<ImportedImage[]> {
  const images: ImportedImage[] = [];
  if (!indexBytes) {
    problems.push(ctx.truncated ? "the bundle has no index.json (it ends before it)" : "the bundle has no index.json, so it names no images");
    return images;
  }
  let layout: ReturnType<typeof parseIndexJson>;
  try {
    layout = parseIndexJson(indexBytes);
  } catch (err) {
    if (!(err instanceof LayoutError)) throw err;
    problems.push(err.message);
    return images;
  }
  for (const p of layout.problems) {
    problems.push(`index.json: ${p.reason}`);
    images.push({ ref: `index.json entry ${p.entry}`, status: "failed", reason: p.reason });
  }
  for (const image of layout.images) {
    // The bytes were counted on the bundle's item as they were read; an image's item gives its size once all of it is verified.
    const item = progress.item(image.ref, null);
    const { result, bytes } = await importImage(ctx, image);
    images.push(result);
    if (result.status === "ok") {
      item.setTotal(bytes);
      item.add(bytes);
      item.done();
    }
    else {
      item.fail(result.reason ?? "failed");
      ctx.log.warn("image not imported", { ref: image.ref, reason: result.reason });
    }
  }
  return images;
}

/**
 * Blobs this import committed that no imported image claimed (their image was cut off or
 * damaged) still get their blob record, as the store has them verified; no link, since no
 * repository was confirmed. Manifests get none, as a pull gives them none.
 */
async function recordLooseBlobs(ctx: WalkContext, committed: ReadonlyMap<Digest, number>): Promise<void> {
  const { kv } = ctx.deps;
  for (const [digest, size] of committed) {
    if (ctx.manifestsSeen.has(digest)) continue;
    const bytes = ctx.kept.get(digest);
    if (bytes && looksLikeManifest(bytes)) continue;
    const current = await kv.read(kvKeys.blob(digest), BlobRecord);
    if (current?.size !== size) await kv.write(kvKeys.blob(digest), { size, storedAt: Date.now() } satisfies BlobRecord);
  }
}

function looksLikeManifest(bytes: Uint8Array): boolean {
  const mediaType = detectManifestMediaType(bytes, null);
  return mediaType !== null && manifestShapeProblem(bytes, mediaType) === null;
}

/** A manifest found usable, with what a pull would have recorded for it. */
type FoundManifest = { digest: Digest; mediaType: ManifestMediaType; size: number; subject: Digest | null; referrer: ReferrerDescriptor };

class Unusable extends Error {}

/** Walks one image of index.json; records it only when all of it is verified. */
async function importImage(ctx: WalkContext, image: LayoutImage): Promise<{ result: ImportedImage; bytes: number }> {
  const failed = (reason: string) => ({ result: { ref: image.ref, status: "failed" as const, reason }, bytes: 0 });
  const { deps } = ctx;
  let target;
  try {
    target = resolveImageRef(deps.upstreams, deps.defaultUpstream, image.ref);
  } catch (err) {
    if (!(err instanceof ImageRefError)) throw err;
    return failed(err.message);
  }
  if (target.digest && target.digest !== image.digest) {
    return failed(`index.json names it ${target.digest} but lists ${image.digest}`);
  }
  const absent = new Set((image.annotations?.[ABSENT_ANNOTATION] ?? "").split(",").filter((s) => s !== ""));
  const manifests: FoundManifest[] = [];
  const blobs = new Map<Digest, number>();
  const seen = new Set<Digest>();

  const walk = async (d: { digest: Digest; size: number; mediaType: string }, where: string | null): Promise<void> => {
    const of = where ? ` of ${where}` : "";
    const what = `manifest ${d.digest}${of}`;
    if (seen.has(d.digest)) return;
    const bytes = await manifestBytes(ctx, d.digest, d.size, what);
    const mediaType = isManifestMediaType(d.mediaType) ? d.mediaType : detectManifestMediaType(bytes, null);
    if (!mediaType) throw new Unusable(`${what} is not an image manifest or index (${bytesPreview(bytes)})`);
    const problem = manifestShapeProblem(bytes, mediaType);
    if (problem) throw new Unusable(`${what} is unusable: ${problem}`);
    let refs;
    try {
      refs = manifestRefs(bytes, mediaType);
    } catch (err) {
      throw new Unusable(`${what}: ${errorText(err)}`);
    }
    seen.add(d.digest);
    ctx.manifestsSeen.add(d.digest);
    manifests.push({ digest: d.digest, mediaType, size: d.size, subject: refs.subject?.digest ?? null, referrer: referrerDescriptor(d.digest, mediaType, d.size, bytes) });
    for (const child of refs.children) {
      if (!isManifestDescriptor(child)) continue;
      if (absent.has(child.digest) && !(await available(ctx, child.digest, child.size))) continue;
      await walk(child, describeChild(child));
    }
    for (const [i, blob] of refs.blobs.entries()) {
      if (blobs.has(blob.digest)) continue;
      const name = `${describeBlob(i, blob.digest)}${of}`;
      if (!(await blobAvailable(ctx, blob.digest, blob.size))) throw new Unusable(missing(ctx, blob.digest, name));
      blobs.set(blob.digest, blob.size);
    }
  };

  try {
    await walk({ digest: image.digest, size: image.size, mediaType: image.mediaType }, null);
    await record(ctx, target.upstream.name, target.repo, target.tag, manifests, blobs);
  } catch (err) {
    if (err instanceof Unusable) return failed(err.message);
    return failed(`could not be recorded: ${errorText(err)}`);
  }
  let bytes = 0;
  for (const m of manifests) bytes += m.size;
  for (const size of blobs.values()) bytes += size;
  return { result: { ref: image.ref, status: "ok" }, bytes };
}

/** A manifest's bytes, verified against its digest: kept in memory from the tar, or read back from the store. */
async function manifestBytes(ctx: WalkContext, digest: Digest, size: number, what: string): Promise<Uint8Array> {
  if (size > MAX_MANIFEST_BYTES) throw new Unusable(`${what} is ${size} bytes, more than the ${MAX_MANIFEST_BYTES} a manifest may have`);
  let bytes = ctx.kept.get(digest) ?? null;
  if (!bytes && (ctx.verified.has(digest) || !ctx.damaged.has(digest))) bytes = await readStoredBytes(ctx.deps.store, digest, size);
  if (!bytes) throw new Unusable(missing(ctx, digest, what));
  if (bytes.byteLength !== size) throw new Unusable(`${what} has ${bytes.byteLength} bytes, its descriptor says ${size}`);
  if (!(await bytesMatch(bytes, digest))) throw new Unusable(`${what} does not hash to its digest`);
  return bytes;
}

/** Whether a manifest's bytes can be had (this bundle or the store). */
async function available(ctx: WalkContext, digest: Digest, size: number): Promise<boolean> {
  if (ctx.kept.has(digest) || ctx.verified.has(digest)) return true;
  return (await ctx.deps.store.stat(digest))?.size === size;
}

/** A blob is usable when this bundle brought it verified, or the store has it with its record. */
async function blobAvailable(ctx: WalkContext, digest: Digest, size: number): Promise<boolean> {
  const stored = await ctx.deps.store.stat(digest);
  if (!stored || stored.size !== size) return false;
  if (ctx.verified.has(digest)) return true;
  return (await ctx.deps.kv.read(kvKeys.blob(digest), BlobRecord)) !== null;
}

function missing(ctx: WalkContext, digest: Digest, what: string): string {
  const damage = ctx.damaged.get(digest);
  if (damage) return `${what} is in the bundle but ${damage}`;
  return ctx.truncated ? `${what} is missing (the bundle ends early: ${ctx.truncated})` : `${what} is missing from the bundle and the store`;
}

const ArtifactFields = z.looseObject({
  artifactType: z.string().optional(),
  config: z.looseObject({ mediaType: z.string() }).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});

/** The descriptor a referrers list gives an attached manifest: artifactType (or the config's media type) and its annotations. */
function referrerDescriptor(digest: Digest, mediaType: ManifestMediaType, size: number, bytes: Uint8Array): ReferrerDescriptor {
  const out: ReferrerDescriptor = { mediaType, digest, size };
  const doc = ArtifactFields.safeParse(parseJsonBytes(bytes));
  if (doc.success) {
    const artifactType = doc.data.artifactType ?? doc.data.config?.mediaType;
    if (artifactType !== undefined) out.artifactType = artifactType;
    if (doc.data.annotations !== undefined) out.annotations = doc.data.annotations;
  }
  return out;
}

/**
 * The records a pull of this image would have left: blob and link records, manifest records,
 * referrers of attached manifests, then the tag last, so that a reader who finds the tag finds
 * everything under it. Records already there (equal but for their timestamps) are not rewritten.
 */
async function record(
  ctx: WalkContext,
  upstream: string,
  repo: string,
  tag: string | null,
  manifests: readonly FoundManifest[],
  blobs: ReadonlyMap<Digest, number>,
): Promise<void> {
  const { kv } = ctx.deps;
  const now = Date.now();
  for (const [digest, size] of blobs) {
    // Link first, as a download does: whoever sees the blob record must also see the link.
    if (!(await kv.read(kvKeys.link(upstream, repo, digest), LinkRecord))) await kv.write(kvKeys.link(upstream, repo, digest), { linkedAt: now });
    const blob = await kv.read(kvKeys.blob(digest), BlobRecord);
    if (blob?.size !== size) await kv.write(kvKeys.blob(digest), { size, storedAt: now } satisfies BlobRecord);
  }
  // Children before the root: a client that finds the root finds its children.
  for (const m of [...manifests].reverse()) {
    const key = kvKeys.manifest(upstream, repo, m.digest);
    const current = await kv.read(key, ManifestRecord);
    if (current?.mediaType !== m.mediaType || current.size !== m.size) await kv.write(key, { mediaType: m.mediaType, size: m.size, storedAt: now } satisfies ManifestRecord);
  }
  if (ctx.deps.recordReferrers) {
    for (const m of manifests) {
      if (m.subject && !(await referrerKnown(ctx, upstream, repo, m.subject, m.digest))) {
        await ctx.deps.recordReferrers(upstream, repo, m.subject, [m.referrer]);
      }
    }
  }
  const root = manifests[0]!;
  if (tag !== null) {
    const key = kvKeys.tag(upstream, repo, tag);
    const current = await kv.read(key, TagRecord);
    if (current?.digest !== root.digest || current.mediaType !== root.mediaType || current.size !== root.size) {
      if (current && current.digest !== root.digest) ctx.log.info("tag moved by import", { upstream, repo, tag, from: current.digest, to: root.digest });
      await kv.write(key, { digest: root.digest, mediaType: root.mediaType, size: root.size, checkedAt: now } satisfies TagRecord);
    }
  }
}

/** Whether the subject's stored referrers list already names this manifest (so a second import changes nothing). */
async function referrerKnown(ctx: WalkContext, upstream: string, repo: string, subject: Digest, digest: Digest): Promise<boolean> {
  const rec = await ctx.deps.kv.read(kvKeys.referrers(upstream, repo, subject), ReferrersRecord);
  if (!rec) return false;
  const bytes = await readStoredBytes(ctx.deps.store, rec.digest, rec.size);
  return (bytes && referrersOf(bytes)?.some((d) => parseDigest(d.digest) === digest)) ?? false;
}
