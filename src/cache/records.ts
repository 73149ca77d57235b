import { z } from "zod";
import { isManifestMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";

/**
 * What the cache keeps in KV (under the keys in src/kv/keys.ts). Blob bytes are
 * content-addressed (shared), but which repositories may see a blob is
 * recorded per upstream and repository.
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

/** A subject's referrers list: an OCI index kept in the store under its own digest. */
export const ReferrersRecord = z.object({
  digest: DigestSchema,
  size: z.number().int().nonnegative(),
  /** When the upstream last gave us this list (or an import recorded it), ms since epoch. */
  checkedAt: z.number(),
});
export type ReferrersRecord = z.infer<typeof ReferrersRecord>;

/** When something was last pulled (ms since epoch) and how many pulls were counted; written in batches. */
export const UsageRecord = z.object({ lastPulledAt: z.number(), pulls: z.number().int().nonnegative() });
export type UsageRecord = z.infer<typeof UsageRecord>;
