import type { Digest } from "../registry/reference.ts";

/**
 * Every key Stowage keeps in KV, so this file is the whole KV layout. Existing
 * KV files (and instances of other versions sharing one) hold these exact
 * values: a key's value must never change. test/unit/kv-keys.test.ts pins them.
 */
export const kvKeys = {
  // Pull-through cache. Tags, manifests and links are per upstream, so the same
  // repository name in two upstreams never collides; blob bytes are content-addressed.
  /** TagRecord: which manifest digest a tag named when upstream last said so. */
  tag: (upstream: string, repo: string, tag: string) => ["tag", upstream, repo, tag] as const,
  /** The prefix of every tag record of a repository (tag listing while offline). */
  tagsOf: (upstream: string, repo: string) => ["tag", upstream, repo] as const,
  /** ManifestRecord: a manifest stored for this repository. */
  manifest: (upstream: string, repo: string, digest: Digest) => ["manifest", upstream, repo, digest] as const,
  /** LinkRecord: upstream confirmed this repository may see the blob. */
  link: (upstream: string, repo: string, digest: Digest) => ["link", upstream, repo, digest] as const,
  /** BlobRecord: the blob's bytes are in the store. */
  blob: (digest: Digest) => ["blob", digest] as const,
  /** ReferrersRecord: the OCI 1.1 referrers list of a subject manifest (its bytes are in the store). */
  referrers: (upstream: string, repo: string, subject: Digest) => ["referrers", upstream, repo, subject] as const,
  /** LeaseRecord: which instance is downloading the blob. */
  lease: (digest: Digest) => ["lease", digest] as const,

  // Usage, for expiry and size limits: written in batches (src/cache/usage.ts), never per request.
  /** UsageRecord: when a tag was last pulled, and how often. */
  usageTag: (upstream: string, repo: string, tag: string) => ["usage", "tag", upstream, repo, tag] as const,
  /** UsageRecord: when a manifest was last pulled by digest (or through a tag), and how often. */
  usageManifest: (upstream: string, repo: string, digest: Digest) => ["usage", "manifest", upstream, repo, digest] as const,
  /** UsageRecord: when a blob was last pulled, and how often. */
  usageBlob: (digest: Digest) => ["usage", "blob", digest] as const,
  /** The prefix of every usage record of one kind. */
  usageOf: (kind: "tag" | "manifest" | "blob") => ["usage", kind] as const,
  /** LeaseRecord: which instance runs the collector (one at a time across instances). */
  gcLease: () => ["stowage", "gc", "lease"] as const,

  /** A bearer token an upstream issued for a scope. */
  upstreamToken: (upstream: string, scope: string) => ["upstream-token", upstream, scope] as const,

  /** The set of token signing keys (one record, changed by compare-and-set). */
  signingKeys: () => ["stowage", "auth", "signing-keys"] as const,
  /** A refresh token's owner, under the token's SHA-256 (hex). */
  refreshToken: (sha256Hex: string) => ["stowage", "auth", "refresh", sha256Hex] as const,
  /** The prefix of every refresh token record. */
  refreshTokens: () => ["stowage", "auth", "refresh"] as const,

  /** Read (never written) by readiness checks. */
  ping: () => ["stowage", "ping"] as const,
};

export type LeaseKey = ReturnType<typeof kvKeys.lease>;
