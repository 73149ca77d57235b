import { z } from "zod";
import { isManifestMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";

/**
 * What the cache keeps in KV, keyed so that the same tag or repository name in
 * two upstreams never collide. Blob bytes are content-addressed (shared), but
 * which repositories may see a blob is recorded per upstream and repository.
 */
const DigestSchema = z.string().transform((s, ctx): Digest => {
  const d = parseDigest(s);
  if (!d) {
    ctx.addIssue({ code: "custom", message: "not a digest" });
    return z.NEVER;
  }
  return d;
});
const MediaTypeSchema = z.string().refine(isManifestMediaType).transform((s) => s as ManifestMediaType);

export const TagRecord = z.object({
  digest: DigestSchema,
  mediaType: MediaTypeSchema,
  size: z.number().int().nonnegative(),
  /** When upstream last confirmed (or gave us) this digest for the tag, ms since epoch. */
  checkedAt: z.number(),
});
export type TagRecord = z.infer<typeof TagRecord>;

export const ManifestRecord = z.object({
  mediaType: MediaTypeSchema,
  size: z.number().int().nonnegative(),
  storedAt: z.number(),
});
export type ManifestRecord = z.infer<typeof ManifestRecord>;

export const BlobRecord = z.object({ size: z.number().int().nonnegative(), storedAt: z.number() });
export type BlobRecord = z.infer<typeof BlobRecord>;

export const LinkRecord = z.object({ linkedAt: z.number() });

/** Which instance is fetching a blob, until when (ms since epoch; KV expiry is too lazy to rely on). */
export const LeaseRecord = z.object({ owner: z.string(), expiresAt: z.number() });
export type LeaseRecord = z.infer<typeof LeaseRecord>;

export const keys = {
  lease: (digest: Digest) => ["lease", digest] as const,
  tag: (upstream: string, repo: string, tag: string) => ["tag", upstream, repo, tag] as const,
  manifest: (upstream: string, repo: string, digest: Digest) => ["manifest", upstream, repo, digest] as const,
  blob: (digest: Digest) => ["blob", digest] as const,
  link: (upstream: string, repo: string, digest: Digest) => ["link", upstream, repo, digest] as const,
};
