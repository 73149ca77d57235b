// `stowage import`: a bundle (an OCI image layout in a tar) into the store and the KV, as if
// its images had been pulled. The tar is read once: each blob is hashed while it is written to
// a store upload and committed only when digest and size match. Then each image named in
// index.json is walked; only an image whose every manifest and blob is verified gets records
// (blobs and links, then manifests, then its tag last), so a cut or damaged bundle imports
// what is whole and names the rest. Safe next to a running server: the store commits
// atomically and records are plain KV writes of verified content.
import { z } from "zod";
import { BlobRecord, LinkRecord, ManifestRecord, ReferrersRecord, TagRecord } from "../cache/records.ts";
import type { HasherFactory } from "../digest/hasher.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Progress } from "../progress/progress.ts";
import { ImageRefError } from "../registry/image-ref.ts";
import { formatPlatform, isManifestDescriptor, manifestRefs, type Descriptor } from "../registry/manifest-refs.ts";
import { bytesPreview, manifestShapeProblem } from "../registry/manifest-shape.ts";
import { detectManifestMediaType, isManifestMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { digestAlgorithm, digestHex, parseDigest, type Digest } from "../registry/reference.ts";
import { referrersOf, type ReferrerDescriptor } from "../registry/referrers.ts";
import type { BlobStore, BlobUpload } from "../storage/blob-store.ts";
import { resolveImageRef } from "../upstream/target.ts";
import type { Upstream } from "../upstream/upstream.ts";
import { BATCH_BYTES, BufferFiller, BufferPool } from "../util/buffers.ts";
import { parseJsonBytes } from "../util/encoding.ts";
import { observedBody } from "../util/streams.ts";
import { ABSENT_ANNOTATION, bytesMatch, errorText, MAX_MANIFEST_BYTES, readStoredBytes } from "./common.ts";
import { digestOfBlobPath, INDEX_FILE, LayoutError, normalizeEntryName, OCI_LAYOUT_FILE, parseIndexJson, type LayoutImage } from "./layout.ts";
import { readTar } from "./tar.ts";

/** Small JSON entries (manifests, configs) kept in memory for the walk, up to this much in all; the rest are read back from the store. */
const MEMORY_BUDGET = 64 * 1024 * 1024;
/** Batches of one blob being hashed and written at once. */
const MAX_IN_FLIGHT = 3;

export type ImportDeps = {
  kv: TypedKv;
  store: BlobStore;
  hashers: HasherFactory;
  upstreams: readonly Upstream[];
  defaultUpstream: string;
  /** Adds attached artifacts to their subject's referrers list (src/cache/referrers-cache.ts recordReferrers). */
  recordReferrers?: (upstream: string, repo: string, subject: Digest, descriptors: ReferrerDescriptor[]) => Promise<void>;
};

export type ImportInput = { stream: ReadableStream<Uint8Array>; size: number | null };

export type ImportedImage = { ref: string; status: "ok" | "failed"; reason?: string };

export type ImportSummary = {
  images: ImportedImage[];
  /** Blobs and manifests committed to the store by this import. */
  blobsWritten: number;
  /** Entries the store already had (read past, not written again). */
  blobsSkipped: number;
  /** Bytes of the bundle read. */
  bytes: number;
  /** What is wrong with the bundle itself: truncation, damaged entries, a bad index.json. */
  problems: string[];
};

/** Why an entry of the bundle is not usable, by digest: shown when an image needs it. */
type Damage = Map<Digest, string>;

export async function importBundle(deps: ImportDeps, input: ImportInput, progress: Progress, log: Logger): Promise<ImportSummary> {
  const problems: string[] = [];
  const verified = new Set<Digest>(); // committed by this import, or in the store already
  const damaged: Damage = new Map();
  const kept = new Map<Digest, Uint8Array>();
  const received = new Map<Digest, number>(); // committed by this import
  let keptBytes = 0;
  let indexBytes: Uint8Array | null = null;
  let layoutSeen = false;
  let blobsWritten = 0;
  let blobsSkipped = 0;
  let bytesRead = 0;
  let truncated: string | null = null;
  const bundleItem = progress.item("bundle", input.size);
  const pool = new BufferPool(BATCH_BYTES, MAX_IN_FLIGHT + 1);

  const stream = observedBody(input.stream, {
    onChunk: (n) => {
      bytesRead += n;
      bundleItem.add(n);
    },
  });
  try {
    for await (const entry of readTar(stream)) {
      const name = normalizeEntryName(entry.name);
      if (name === INDEX_FILE || name === OCI_LAYOUT_FILE) {
        if (entry.size > MAX_MANIFEST_BYTES) {
          await entry.body.cancel();
          problems.push(`${name} is ${entry.size} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`);
          continue;
        }
        const bytes = new Uint8Array(await new Response(entry.body).arrayBuffer());
        if (name === INDEX_FILE) indexBytes = bytes;
        else {
          layoutSeen = true;
          const version = (parseJsonBytes(bytes) as { imageLayoutVersion?: unknown } | undefined)?.imageLayoutVersion;
          if (version !== "1.0.0") problems.push(`oci-layout says imageLayoutVersion ${JSON.stringify(version)}, not "1.0.0"; reading it as 1.0.0`);
        }
        continue;
      }
      const digest = digestOfBlobPath(name);
      if (!digest || entry.type !== "file") {
        await entry.body.cancel();
        if (name !== "" && !name.endsWith("/")) log.debug("bundle entry ignored", { name });
        continue;
      }
      const stored = await deps.store.stat(digest);
      if (stored && stored.size === entry.size) {
        // The store only ever holds verified bytes under a digest: nothing to write.
        await entry.body.cancel();
        verified.add(digest);
        blobsSkipped++;
        continue;
      }
      const keep = entry.size <= MAX_MANIFEST_BYTES && keptBytes + entry.size <= MEMORY_BUDGET;
      const outcome = await receive(deps, digest, entry.size, entry.body, pool, keep);
      if (outcome.ok) {
        verified.add(digest);
        received.set(digest, entry.size);
        blobsWritten++;
        if (outcome.bytes) {
          kept.set(digest, outcome.bytes);
          keptBytes += outcome.bytes.byteLength;
        }
      } else {
        damaged.set(digest, outcome.reason);
        problems.push(`${name}: ${outcome.reason}`);
        log.warn("bundle entry not imported", { name, reason: outcome.reason });
        if (outcome.fatal) throw outcome.fatal;
      }
    }
  } catch (err) {
    // A cut or unreadable tar: what was verified before it stays, everything after it is missing.
    truncated = errorText(err);
    problems.push(truncated);
    log.warn("the bundle could not be read to its end", { error: truncated, bytes: bytesRead });
  }
  if (truncated) bundleItem.fail(truncated);
  else bundleItem.done();
  if (!layoutSeen && !truncated) problems.push("the bundle has no oci-layout file; reading it as an OCI image layout all the same");

  const ctx: WalkContext = { deps, verified, damaged, kept, truncated, log, manifestsSeen: new Set() };
  const images = await importImages(ctx, indexBytes, problems, progress);
  await recordLooseBlobs(ctx, received);
  log.info("bundle imported", {
    images: images.filter((i) => i.status === "ok").length,
    failed: images.filter((i) => i.status === "failed").length,
    blobsWritten,
    blobsSkipped,
    bytes: bytesRead,
    problems: problems.length,
  });
  return { images, blobsWritten, blobsSkipped, bytes: bytesRead, problems };
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

type Received = { ok: true; bytes: Uint8Array | null } | { ok: false; reason: string; fatal: unknown };

/**
 * One blob from the tar into a store upload, hashed on the way; committed only when it is
 * whole and hashes to its name. `fatal` is set when the tar itself broke (nothing more can be read).
 */
async function receive(deps: ImportDeps, digest: Digest, size: number, body: ReadableStream<Uint8Array>, pool: BufferPool, keep: boolean): Promise<Received> {
  let upload: BlobUpload | null = null;
  const hasher = deps.hashers.create(digestAlgorithm(digest));
  const copy = keep ? new Uint8Array(size) : null;
  let written = 0;
  let tarBroke = false;
  try {
    upload = await deps.store.begin(digest);
    const u = upload;
    // Batches of 1 MiB: fewer store writes and worker messages than the tar's small chunks.
    // A few batches in flight, so that reading the tar, hashing and writing overlap; no more, so memory stays flat.
    const inFlight: Array<Promise<void>> = [];
    const send = (buffer: Uint8Array, reuse: boolean) => {
      const done = Promise.all([hasher.update(buffer), u.write(buffer)]).then(() => {
        if (reuse) pool.give(buffer.buffer);
      });
      done.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled
      inFlight.push(done);
    };
    const filler = new BufferFiller(BATCH_BYTES, () => pool.take(), async (buffer) => {
      send(buffer, true);
      if (inFlight.length >= MAX_IN_FLIGHT) await inFlight.shift();
    });
    const reader = body.getReader();
    for (;;) {
      let next;
      try {
        next = await reader.read();
      } catch (err) {
        tarBroke = true;
        throw err;
      }
      if (next.done) break;
      copy?.set(next.value, written);
      written += next.value.byteLength;
      await filler.push(next.value);
    }
    const last = filler.takePartial(true);
    if (last) send(last, false);
    while (inFlight.length > 0) await inFlight.shift();
    const hex = await hasher.finish();
    if (hex !== digestHex(digest)) {
      await upload.abort();
      return { ok: false, reason: `damaged: it hashes to ${digestAlgorithm(digest)}:${hex}; not imported`, fatal: null };
    }
    await upload.commit();
    return { ok: true, bytes: copy };
  } catch (err) {
    hasher.discard();
    await upload?.abort().catch(() => {});
    // Either way nothing more can be imported: the tar cannot be read on, or the store cannot keep anything.
    if (tarBroke) return { ok: false, reason: `incomplete (${written} of ${size} bytes)`, fatal: err };
    return { ok: false, reason: `the store could not keep it: ${errorText(err)}`, fatal: err };
  }
}

type WalkContext = {
  deps: ImportDeps;
  verified: Set<Digest>;
  damaged: Damage;
  kept: Map<Digest, Uint8Array>;
  truncated: string | null;
  log: Logger;
  /** Every manifest a walk read (of imported and failed images alike). */
  manifestsSeen: Set<Digest>;
};

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
      const name = `${i === 0 ? "config" : "layer"} ${blob.digest}${of}`;
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

function describeChild(d: Descriptor): string {
  return d.platform ? formatPlatform(d.platform) : `manifest ${d.digest}`;
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
