// OCI 1.1 referrers (distribution spec, "Listing Referrers" and "Referrers Tag Schema"): the
// list of manifests whose `subject` is a given manifest, as an image index. Pure: building,
// reading, filtering and merging such lists, the fallback tag's name and the next-page link.
import { z } from "zod";
import { OCI_INDEX } from "./media-types.ts";
import { nextLinkTarget } from "./pagination.ts";
import { digestAlgorithm, digestHex, type Digest } from "./reference.ts";
import { parseJsonBytes } from "../util/encoding.ts";

/** One referrer as the index lists it: the artifact manifest's descriptor. */
export type ReferrerDescriptor = {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
};

// Only what a referrers list needs is kept; a descriptor without the three required fields is dropped.
const DescriptorShape = z.object({
  mediaType: z.string().min(1).max(256),
  digest: z.string().regex(/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/).max(256),
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  artifactType: z.string().min(1).max(256).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
const IndexShape = z.object({ manifests: z.array(z.unknown()) });

/**
 * The tag under which a client that pushes to a registry without the referrers API keeps the
 * subject's referrers index: `<alg>-<encoded>`, cut to 32 and 64 characters.
 */
export function referrersTagFor(subject: Digest): string {
  return `${digestAlgorithm(subject).slice(0, 32)}-${digestHex(subject).slice(0, 64)}`;
}

/** The descriptors listed by an image index's bytes; null when they are not an index at all. */
export function referrersOf(bytes: Uint8Array): ReferrerDescriptor[] | null {
  const doc = IndexShape.safeParse(parseJsonBytes(bytes));
  if (!doc.success) return null;
  const out: ReferrerDescriptor[] = [];
  for (const entry of doc.data.manifests) {
    const d = DescriptorShape.safeParse(entry);
    if (d.success) out.push(descriptorOf(d.data));
  }
  return out;
}

/** Only the fields a referrers list carries, in a fixed order (stable bytes for the same list). */
function descriptorOf(d: ReferrerDescriptor): ReferrerDescriptor {
  const out: ReferrerDescriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (d.artifactType !== undefined) out.artifactType = d.artifactType;
  if (d.annotations !== undefined) out.annotations = d.annotations;
  return out;
}

/** `artifactType` null: no filter. */
export function filterReferrers(list: readonly ReferrerDescriptor[], artifactType: string | null): ReferrerDescriptor[] {
  return artifactType === null ? [...list] : list.filter((d) => d.artifactType === artifactType);
}

/** `base` then the descriptors of `added` it lacks (by digest); a later copy of a digest does not replace the first. */
export function mergeReferrers(base: readonly ReferrerDescriptor[], added: readonly ReferrerDescriptor[]): ReferrerDescriptor[] {
  const seen = new Set<string>();
  const out: ReferrerDescriptor[] = [];
  for (const d of [...base, ...added]) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    out.push(descriptorOf(d));
  }
  return out;
}

/** The referrers response body: an OCI image index listing `list`. */
export function referrersIndex(list: readonly ReferrerDescriptor[]): Uint8Array<ArrayBuffer> {
  const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: list.map(descriptorOf) };
  return new TextEncoder().encode(JSON.stringify(index));
}

/**
 * The query of the next page from an upstream's Link header (`<...>; rel="next"`), if it points
 * at the same referrers path; null otherwise. Only the query is kept: the request still goes to
 * the upstream's own URL for this subject, wherever the link says.
 */
export function nextReferrersQuery(link: string | null, path: string): string | null {
  const target = nextLinkTarget(link);
  if (target === null || target.search === "" || target.search.length > 2048) return null;
  let pathname = target.pathname;
  try {
    pathname = decodeURIComponent(pathname); // some registries escape the digest's colon
  } catch {
    return null;
  }
  return pathname.endsWith(path) ? target.search : null;
}
