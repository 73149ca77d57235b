// Manifest media types, and detection of the type of upstream manifest bytes.
// (What a manifest may contain is checked in manifest-shape.ts.)
import { z } from "zod";
import { parseJsonBytes } from "../util/encoding.ts";

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";

export type ManifestMediaType =
  | typeof OCI_MANIFEST
  | typeof OCI_INDEX
  | typeof DOCKER_MANIFEST
  | typeof DOCKER_MANIFEST_LIST;

export const MANIFEST_MEDIA_TYPES: readonly ManifestMediaType[] = Object.freeze([
  OCI_INDEX,
  DOCKER_MANIFEST_LIST,
  OCI_MANIFEST,
  DOCKER_MANIFEST,
]);

/** Lists every type we can store so the upstream never falls back to schema1 or picks one for us. */
export const MANIFEST_ACCEPT: string = MANIFEST_MEDIA_TYPES.join(", ");

export function isManifestMediaType(s: string): s is ManifestMediaType {
  return (MANIFEST_MEDIA_TYPES as readonly string[]).includes(s);
}

export function isIndexMediaType(s: string): boolean {
  return s === OCI_INDEX || s === DOCKER_MANIFEST_LIST;
}

// Only the fields detection looks at; anything else in the document is ignored.
const DetectionShape = z.object({
  schemaVersion: z.unknown().optional(),
  mediaType: z.unknown().optional(),
  manifests: z.unknown().optional(),
  config: z.unknown().optional(),
  layers: z.unknown().optional(),
});

export function detectManifestMediaType(bytes: Uint8Array, contentType: string | null): ManifestMediaType | null {
  if (contentType !== null) {
    // Media types are case-insensitive and may carry parameters such as charset.
    const essence = (contentType.split(";")[0] ?? "").trim().toLowerCase();
    if (isManifestMediaType(essence)) return essence;
  }
  const parsed = DetectionShape.safeParse(parseJsonBytes(bytes));
  if (!parsed.success) return null;
  const doc = parsed.data;
  if (typeof doc.mediaType === "string" && isManifestMediaType(doc.mediaType)) return doc.mediaType;
  if (doc.schemaVersion !== 2 || doc.mediaType !== undefined) return null;
  if (Array.isArray(doc.manifests)) return OCI_INDEX;
  if (Array.isArray(doc.layers) && isPlainObject(doc.config)) return OCI_MANIFEST;
  return null;
}

function isPlainObject(v: unknown): boolean {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
