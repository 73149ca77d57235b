// The OCI image layout a bundle carries (image-spec, "OCI Image Layout"): `oci-layout`,
// `index.json` naming each image by its full reference, and `blobs/<alg>/<hex>`. Pure.
import { z } from "zod";
import { isManifestMediaType, OCI_INDEX, type ManifestMediaType } from "../registry/media-types.ts";
import { digestAlgorithm, digestHex, parseDigest, type Digest } from "../registry/reference.ts";
import { parseJsonBytes } from "../util/encoding.ts";

export const OCI_LAYOUT_FILE = "oci-layout";
export const INDEX_FILE = "index.json";
/** The image-spec annotation skopeo (`oci-archive:FILE:REF`) and other OCI tools look images up by. */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/** What `ctr import` names an image by. */
export const CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name";

export function ociLayoutBytes(): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ imageLayoutVersion: "1.0.0" }));
}

/** `blobs/sha256/<hex>`. */
export function blobPath(digest: Digest): string {
  return `blobs/${digestAlgorithm(digest)}/${digestHex(digest)}`;
}

/** A tar entry's path without a leading `./` (GNU tar of a directory writes one, skopeo does not). */
export function normalizeEntryName(name: string): string {
  let n = name;
  while (n.startsWith("./")) n = n.slice(2);
  return n;
}

/** The digest a `blobs/<alg>/<hex>` path names; null for any other path. */
export function digestOfBlobPath(name: string): Digest | null {
  const m = /^blobs\/([a-z0-9]+)\/([0-9a-f]+)$/.exec(normalizeEntryName(name));
  return m ? parseDigest(`${m[1]}:${m[2]}`) : null;
}

/** One image in a bundle: its root manifest's descriptor and the full reference it is known by. */
export type LayoutImage = {
  ref: string;
  mediaType: ManifestMediaType;
  digest: Digest;
  size: number;
  /** Annotations besides the two names. */
  annotations?: Record<string, string>;
};

/** index.json naming every image by `ref` (both annotations), in the order given. */
export function indexJsonBytes(images: readonly LayoutImage[]): Uint8Array {
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: images.map((i) => ({
      mediaType: i.mediaType,
      digest: i.digest,
      size: i.size,
      annotations: { ...i.annotations, [REF_NAME_ANNOTATION]: i.ref, [CONTAINERD_NAME_ANNOTATION]: i.ref },
    })),
  };
  return new TextEncoder().encode(JSON.stringify(doc, null, 2));
}

const IndexShape = z.object({
  schemaVersion: z.literal(2),
  manifests: z.array(
    z.looseObject({
      mediaType: z.string(),
      digest: z.string(),
      size: z.number().int().nonnegative(),
      annotations: z.record(z.string(), z.string()).optional(),
    }),
  ),
});

/** An entry of index.json that cannot be imported, and why (the others still are). */
export type LayoutProblem = { entry: number; reason: string };

export class LayoutError extends Error {}

/**
 * The images index.json names. Throws LayoutError when the file is not an OCI index at all;
 * entries that are unusable (no reference name, not a manifest, a bad digest) come back as
 * problems.
 */
export function parseIndexJson(bytes: Uint8Array): { images: LayoutImage[]; problems: LayoutProblem[] } {
  let doc: unknown;
  try {
    doc = parseJsonBytes(bytes);
  } catch {
    throw new LayoutError("index.json is not JSON");
  }
  const parsed = IndexShape.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new LayoutError(`index.json is not an OCI image index (${issue ? `${issue.path.join(".") || "document"}: ${issue.message}` : "unreadable"})`);
  }
  const images: LayoutImage[] = [];
  const problems: LayoutProblem[] = [];
  parsed.data.manifests.forEach((m, i) => {
    const ref = m.annotations?.[REF_NAME_ANNOTATION] ?? m.annotations?.[CONTAINERD_NAME_ANNOTATION];
    const digest = parseDigest(m.digest);
    if (!ref) problems.push({ entry: i, reason: `manifests[${i}] (${m.digest.slice(0, 80)}) has no ${REF_NAME_ANNOTATION} annotation` });
    else if (!digest) problems.push({ entry: i, reason: `${ref}: ${JSON.stringify(m.digest.slice(0, 80))} is not a sha256 or sha512 digest` });
    else if (!isManifestMediaType(m.mediaType)) problems.push({ entry: i, reason: `${ref}: media type ${JSON.stringify(m.mediaType.slice(0, 100))} is not an image manifest or index` });
    else images.push({ ref, mediaType: m.mediaType, digest, size: m.size, annotations: m.annotations ?? {} });
  });
  return { images, problems };
}
