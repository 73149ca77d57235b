// What a manifest points at: the children of an index, the config and layers of an image,
// and the subject an artifact is attached to. Used by prefill, export and import to walk an
// image without asking anyone; read from the bytes already checked by manifest-shape.ts.
import { z } from "zod";
import { isIndexMediaType, isManifestMediaType, type ManifestMediaType } from "./media-types.ts";
import { parseDigest, type Digest } from "./reference.ts";
import { parseJsonBytes } from "../util/encoding.ts";

export type Platform = { os: string; architecture: string; variant?: string };

/** A descriptor whose digest we can address (sha256/sha512); others are refused by `manifestRefs`. */
export type Descriptor = {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Platform;
  artifactType?: string;
  annotations?: Record<string, string>;
};

const PlatformShape = z.looseObject({ os: z.string(), architecture: z.string(), variant: z.string().optional() });
const DescriptorShape = z.looseObject({
  mediaType: z.string(),
  digest: z.string(),
  size: z.number().int().nonnegative(),
  platform: PlatformShape.optional(),
  artifactType: z.string().optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
const ManifestShape = z.looseObject({
  manifests: z.array(DescriptorShape).optional(),
  config: DescriptorShape.optional(),
  layers: z.array(DescriptorShape).optional(),
  subject: DescriptorShape.optional(),
});

export type ManifestRefs = {
  /** Index: the manifests it lists (each with its platform, when given). */
  children: Descriptor[];
  /** Image: config first, then layers in order. Empty for an index. */
  blobs: Descriptor[];
  /** OCI 1.1: the manifest this one is attached to (a signature, an SBOM). */
  subject: Descriptor | null;
};

export class ManifestRefsError extends Error {}

/** The references of verified manifest bytes; throws ManifestRefsError when a digest is not one we can fetch. */
export function manifestRefs(bytes: Uint8Array, mediaType: ManifestMediaType): ManifestRefs {
  const parsed = ManifestShape.safeParse(parseJsonBytes(bytes));
  if (!parsed.success) throw new ManifestRefsError(`not a ${mediaType} document`);
  const doc = parsed.data;
  const subject = doc.subject ? descriptor(doc.subject, "subject") : null;
  if (isIndexMediaType(mediaType)) {
    return { children: (doc.manifests ?? []).map((d, i) => descriptor(d, `manifests[${i}]`)), blobs: [], subject };
  }
  if (!doc.config) throw new ManifestRefsError("an image manifest without a config");
  const blobs = [descriptor(doc.config, "config"), ...(doc.layers ?? []).map((d, i) => descriptor(d, `layers[${i}]`))];
  return { children: [], blobs, subject };
}

function descriptor(d: z.infer<typeof DescriptorShape>, where: string): Descriptor {
  const digest = parseDigest(d.digest);
  if (!digest) throw new ManifestRefsError(`${where} has digest ${JSON.stringify(d.digest.slice(0, 140))}, which is not a sha256 or sha512 digest`);
  const out: Descriptor = { mediaType: d.mediaType, digest, size: d.size };
  if (d.platform) {
    out.platform = { os: d.platform.os, architecture: d.platform.architecture };
    if (d.platform.variant !== undefined) out.platform.variant = d.platform.variant;
  }
  if (d.artifactType !== undefined) out.artifactType = d.artifactType;
  if (d.annotations !== undefined) out.annotations = d.annotations;
  return out;
}

/** Whether a child descriptor of an index is itself a manifest we walk (not, say, a foreign layer). */
export function isManifestDescriptor(d: Descriptor): d is Descriptor & { mediaType: ManifestMediaType } {
  return isManifestMediaType(d.mediaType);
}

/** `linux/arm64/v8` -> a Platform; null when it is not os/arch[/variant]. */
export function parsePlatform(s: string): Platform | null {
  const parts = s.split("/");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/i.test(p))) return null;
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

/**
 * Whether an index entry is wanted. No filter: every platform. A filter without a variant
 * matches every variant of that os/arch (linux/arm64 takes linux/arm64/v8), as `docker pull
 * --platform` does. Entries with no platform (attestation manifests, artifacts) are kept only
 * when no filter is given.
 */
export function platformWanted(d: Descriptor, wanted: readonly Platform[]): boolean {
  if (wanted.length === 0) return true;
  const p = d.platform;
  if (!p) return false;
  return wanted.some((w) => w.os === p.os && w.architecture === p.architecture && (w.variant === undefined || w.variant === p.variant));
}
