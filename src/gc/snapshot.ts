// Everything the collector decides from, read once at the start of a run: the KV records
// (tags, referrers lists, manifests, links, blobs, usage, fetch leases) and then the store's
// listing, and what each stored manifest points at.
import { BlobRecord, LeaseRecord, LinkRecord, ManifestRecord, ReferrersRecord, TagRecord, UsageRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { KvKey, TypedKv } from "../kv/kv.ts";
import { manifestRefs } from "../registry/manifest-refs.ts";
import { MAX_MANIFEST_BYTES } from "../registry/manifest-shape.ts";
import type { ManifestMediaType } from "../registry/media-types.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";
import type { BlobStore, StoredObject } from "../storage/blob-store.ts";

/** Manifests larger than this are not read for their references (registries refuse them anyway). */

export type TagEntry = { id: string; upstream: string; repo: string; tag: string; record: TagRecord };
export type ManifestEntry = {
  id: string;
  upstream: string;
  repo: string;
  digest: Digest;
  record: ManifestRecord;
  /** Index children (digests, same repository). */
  children: Digest[];
  /** Config and layers. */
  blobs: Digest[];
  subject: Digest | null;
};
export type ReferrersEntry = { id: string; upstream: string; repo: string; subject: Digest; record: ReferrersRecord };
export type LinkEntry = { id: string; upstream: string; repo: string; digest: Digest; linkedAt: number };

export type Snapshot = {
  tags: Map<string, TagEntry>;
  manifests: Map<string, ManifestEntry>;
  referrers: Map<string, ReferrersEntry>;
  links: Map<string, LinkEntry>;
  blobs: Map<Digest, BlobRecord>;
  /** Last pulled, by tag id, manifest id and blob digest (from the usage records). */
  usage: { tags: Map<string, UsageRecord>; manifests: Map<string, UsageRecord>; blobs: Map<Digest, UsageRecord> };
  /** Unexpired fetch leases: blobs another instance is downloading. */
  leased: Set<Digest>;
  objects: Map<Digest, StoredObject>;
};

/** The id of a per-repository record: upstream, repository and tag or digest. */
export const idOf = (upstream: string, repo: string, name: string): string => `${upstream}\n${repo}\n${name}`;

/**
 * Reads the records, then lists the store. The order matters while pulls go on: a pull
 * writes a manifest record before its tag and a blob's object before its record, so a
 * record read here names something already written, and an object listed afterwards
 * but recorded too late to be seen is young (kept by the grace period).
 */
export async function takeSnapshot(kv: TypedKv, store: BlobStore, now: number, known: RefsCache = new RefsCache()): Promise<Snapshot> {
  const tags = new Map<string, TagEntry>();
  for await (const { key, value } of kv.list(["tag"], TagRecord)) {
    const [upstream, repo, tag] = strings(key, 3);
    if (upstream !== undefined) tags.set(idOf(upstream, repo!, tag!), { id: idOf(upstream, repo!, tag!), upstream, repo: repo!, tag: tag!, record: value });
  }
  const referrers = new Map<string, ReferrersEntry>();
  for await (const { key, value } of kv.list(["referrers"], ReferrersRecord)) {
    const [upstream, repo, subject] = strings(key, 3);
    const digest = parseDigest(subject ?? "");
    if (upstream !== undefined && digest) referrers.set(idOf(upstream, repo!, digest), { id: idOf(upstream, repo!, digest), upstream, repo: repo!, subject: digest, record: value });
  }
  const manifestRecords: Array<{ upstream: string; repo: string; digest: Digest; record: ManifestRecord }> = [];
  for await (const { key, value } of kv.list(["manifest"], ManifestRecord)) {
    const [upstream, repo, d] = strings(key, 3);
    const digest = parseDigest(d ?? "");
    if (upstream !== undefined && digest) manifestRecords.push({ upstream, repo: repo!, digest, record: value });
  }
  const links = new Map<string, LinkEntry>();
  for await (const { key, value } of kv.list(["link"], LinkRecord)) {
    const [upstream, repo, d] = strings(key, 3);
    const digest = parseDigest(d ?? "");
    if (upstream !== undefined && digest) links.set(idOf(upstream, repo!, digest), { id: idOf(upstream, repo!, digest), upstream, repo: repo!, digest, linkedAt: value.linkedAt });
  }
  const blobs = new Map<Digest, BlobRecord>();
  for await (const { key, value } of kv.list(["blob"], BlobRecord)) {
    const digest = parseDigest(String(key[1] ?? ""));
    if (digest && key.length === 2) blobs.set(digest, value);
  }
  const usage = { tags: new Map<string, UsageRecord>(), manifests: new Map<string, UsageRecord>(), blobs: new Map<Digest, UsageRecord>() };
  for await (const { key, value } of kv.list(kvKeys.usageOf("tag"), UsageRecord)) {
    const [upstream, repo, tag] = strings(key.slice(1), 3);
    if (upstream !== undefined) usage.tags.set(idOf(upstream, repo!, tag!), value);
  }
  for await (const { key, value } of kv.list(kvKeys.usageOf("manifest"), UsageRecord)) {
    const [upstream, repo, digest] = strings(key.slice(1), 3);
    if (upstream !== undefined) usage.manifests.set(idOf(upstream, repo!, digest!), value);
  }
  for await (const { key, value } of kv.list(kvKeys.usageOf("blob"), UsageRecord)) {
    const digest = parseDigest(String(key[2] ?? ""));
    if (digest) usage.blobs.set(digest, value);
  }
  const leased = new Set<Digest>();
  for await (const { key, value } of kv.list(["lease"], LeaseRecord)) {
    const digest = parseDigest(String(key[1] ?? ""));
    if (digest && value.expiresAt > now) leased.add(digest);
  }

  const objects = new Map<Digest, StoredObject>();
  for await (const o of store.list()) objects.set(o.digest, o);

  // What each manifest points at, read once per digest (the same manifest is often in several
  // repositories) and remembered across runs: a digest's bytes never change.
  const manifests = new Map<string, ManifestEntry>();
  for (const m of manifestRecords) {
    let r = known.get(m.digest);
    if (!r && objects.has(m.digest)) {
      r = await readRefs(store, m.digest, m.record.size, m.record.mediaType);
      if (r) known.set(m.digest, r);
    }
    const id = idOf(m.upstream, m.repo, m.digest);
    manifests.set(id, { id, ...m, ...(r ?? { children: [], blobs: [], subject: null }) });
  }
  return { tags, manifests, referrers, links, blobs, usage, leased, objects };
}

type Refs = Pick<ManifestEntry, "children" | "blobs" | "subject">;

/** What manifests point at, by digest, kept between runs (bounded: the oldest entries go first). */
export class RefsCache {
  private readonly map = new Map<Digest, Refs>();
  constructor(private readonly max = 200_000) {}
  get(digest: Digest): Refs | undefined {
    return this.map.get(digest);
  }
  set(digest: Digest, refs: Refs): void {
    this.map.set(digest, refs);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
  }
}

/**
 * A manifest's references: none when its bytes cannot be parsed (it is then a leaf); undefined
 * when they could not be read (gone meanwhile; not remembered).
 */
async function readRefs(store: BlobStore, digest: Digest, size: number, mediaType: ManifestMediaType): Promise<Refs | undefined> {
  const none = { children: [], blobs: [], subject: null };
  if (size > MAX_MANIFEST_BYTES) return none;
  const stream = await store.open(digest);
  if (!stream) return undefined;
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  try {
    const r = manifestRefs(bytes, mediaType);
    return { children: r.children.map((d) => d.digest), blobs: r.blobs.map((d) => d.digest), subject: r.subject?.digest ?? null };
  } catch {
    return none;
  }
}

/** The `n` string parts after a key's first part; all undefined when the key is not of that shape. */
function strings(key: KvKey, n: number): Array<string | undefined> {
  const parts = key.slice(1);
  if (parts.length !== n || parts.some((p) => typeof p !== "string")) return new Array(n).fill(undefined);
  return parts as string[];
}
