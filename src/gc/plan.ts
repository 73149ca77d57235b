// What a collection removes, decided from a snapshot (pure: no I/O). Mark and sweep over the
// records: the tags and manifests that are kept mark what they reference; whatever is left
// unmarked goes, records first and then the store objects no kept record names.
import type { Digest } from "../registry/reference.ts";
import { PurgeMatcher, type PurgeSelector } from "./selectors.ts";
import { idOf, type LinkEntry, type ManifestEntry, type ReferrersEntry, type Snapshot, type TagEntry } from "./snapshot.ts";

export type RemovalReason = "ttl" | "size" | "purge" | "orphan" | "missing";

export type PlanOptions = {
  now: number;
  /** Content written more recently than this is never collected (a pull in progress). */
  graceMs: number;
  cacheTtlMs: number | null;
  maxBytes: number | null;
  lowWater: number;
  purge: readonly PurgeSelector[];
  /** A blob being fetched or read by this instance. */
  busy: (digest: Digest) => boolean;
  hostOf: (upstream: string) => string | undefined;
};

export type Plan = {
  tags: Map<string, { entry: TagEntry; reason: RemovalReason }>;
  referrers: Map<string, { entry: ReferrersEntry; reason: RemovalReason }>;
  manifests: Map<string, { entry: ManifestEntry; reason: RemovalReason }>;
  links: Map<string, LinkEntry>;
  blobs: Map<Digest, { size: number; reason: RemovalReason }>;
  /** Usage records of tags, manifests and blobs no longer cached (not reported: they hold no content). */
  usage: Array<{ kind: "tag" | "manifest"; id: string } | { kind: "blob"; digest: Digest }>;
  /** Store objects to delete, with the reason of the record removal that left them unnamed ("orphan": none named them). */
  objects: Map<Digest, { size: number; reason: RemovalReason }>;
  storeBytesBefore: number;
  storeObjectsBefore: number;
};

/** A node of the kept graph: t tag, m manifest record, r referrers record, b blob record, o store object. */
type Node = string;

export function plan(snap: Snapshot, opts: PlanOptions): Plan {
  const { now, graceMs } = opts;
  const cutoff = opts.cacheTtlMs === null ? -Infinity : now - opts.cacheTtlMs;
  const young = (at: number) => at > now - graceMs;
  const out: Plan = {
    tags: new Map(),
    referrers: new Map(),
    manifests: new Map(),
    links: new Map(),
    blobs: new Map(),
    usage: [],
    objects: new Map(),
    storeBytesBefore: 0,
    storeObjectsBefore: snap.objects.size,
  };
  for (const o of snap.objects.values()) out.storeBytesBefore += o.size;

  const lastPulled = {
    tag: (t: TagEntry) => Math.max(snap.usage.tags.get(t.id)?.lastPulledAt ?? 0, t.record.checkedAt),
    manifest: (m: ManifestEntry) => Math.max(snap.usage.manifests.get(m.id)?.lastPulledAt ?? 0, m.record.storedAt),
    blob: (d: Digest) => Math.max(snap.usage.blobs.get(d)?.lastPulledAt ?? 0, snap.blobs.get(d)?.storedAt ?? 0),
  };
  /** A blob being fetched or read here, or leased by another instance's fetch: it stays, even when purged. */
  const fetching = (d: Digest) => opts.busy(d) || snap.leased.has(d);
  /** A blob that stays whatever the TTL or size limit: fetching, or just stored (a pull may not have recorded its manifest yet). */
  const protectedBlob = (d: Digest) => {
    const o = snap.objects.get(d);
    const rec = snap.blobs.get(d);
    return fetching(d) || (rec !== undefined && young(rec.storedAt)) || (o !== undefined && young(o.modifiedAt));
  };

  // 0. Records whose object is gone from the store (a crash, or an operator deleting files).
  const manifests = new Map<string, ManifestEntry>();
  for (const m of snap.manifests.values()) {
    if (snap.objects.has(m.digest)) manifests.set(m.id, m);
    else out.manifests.set(m.id, { entry: m, reason: "missing" });
  }
  const blobs = new Set<Digest>();
  for (const d of snap.blobs.keys()) {
    if (snap.objects.has(d)) blobs.add(d);
    else out.blobs.set(d, { size: 0, reason: "missing" });
  }
  const referrers = new Map<string, ReferrersEntry>();
  for (const r of snap.referrers.values()) {
    if (snap.objects.has(r.record.digest)) referrers.set(r.id, r);
    else out.referrers.set(r.id, { entry: r, reason: "missing" });
  }

  // Artifacts by subject, per repository: an artifact stays while its subject stays.
  const artifacts = new Map<string, ManifestEntry[]>();
  for (const m of manifests.values()) {
    if (!m.subject) continue;
    const key = idOf(m.upstream, m.repo, m.subject);
    artifacts.set(key, [...(artifacts.get(key) ?? []), m]);
  }
  /** Calls `visit` on every manifest `from` keeps (itself, its index children, its artifacts), once each. */
  const walk = (from: Iterable<ManifestEntry>, seen: Set<string>, visit: (m: ManifestEntry) => void) => {
    const stack = [...from];
    while (stack.length > 0) {
      const m = stack.pop()!;
      if (seen.has(m.id)) continue;
      seen.add(m.id);
      visit(m);
      for (const c of m.children) {
        const child = manifests.get(idOf(m.upstream, m.repo, c));
        if (child) stack.push(child);
      }
      for (const a of artifacts.get(m.id) ?? []) stack.push(a);
    }
  };
  const manifestOfTag = (t: TagEntry) => manifests.get(idOf(t.upstream, t.repo, t.record.digest));

  // 1. Purge: the selected tags and manifests, and everything only they reach, lose their own claim to stay.
  const matcher = new PurgeMatcher(opts.purge, opts.hostOf);
  const selectedTags = new Set<string>();
  const purgeClosure = new Set<string>();
  const purgeBlobs = new Set<Digest>();
  const purgedRepos = new Set<string>();
  if (!matcher.empty) {
    const starts: ManifestEntry[] = [];
    for (const t of snap.tags.values()) {
      if (!matcher.tag({ ...t, digest: t.record.digest })) continue;
      selectedTags.add(t.id);
      const m = manifestOfTag(t);
      if (m) starts.push(m);
    }
    for (const m of manifests.values()) if (matcher.manifest(m)) starts.push(m);
    walk(starts, purgeClosure, (m) => m.blobs.forEach((b) => purgeBlobs.add(b)));
    for (const r of [...snap.tags.values(), ...snap.manifests.values(), ...snap.links.values(), ...snap.referrers.values()]) {
      if (matcher.wholeRepo(r)) purgedRepos.add(idOf(r.upstream, r.repo, ""));
    }
  }

  // 2. Mark: tags kept by the TTL, manifests they reach, manifests pulled (or stored) within the TTL.
  const keptTags = new Map<string, TagEntry>();
  for (const t of snap.tags.values()) {
    if (selectedTags.has(t.id)) out.tags.set(t.id, { entry: t, reason: "purge" });
    else if (lastPulled.tag(t) >= cutoff) keptTags.set(t.id, t);
    else out.tags.set(t.id, { entry: t, reason: "ttl" });
  }
  const keptManifests = new Set<string>();
  const roots: ManifestEntry[] = [];
  for (const t of keptTags.values()) {
    const m = manifestOfTag(t);
    if (m) roots.push(m);
  }
  for (const m of manifests.values()) {
    if (!purgeClosure.has(m.id) && (lastPulled.manifest(m) >= cutoff || young(m.record.storedAt))) roots.push(m);
  }
  walk(roots, keptManifests, () => {});
  for (const m of manifests.values()) {
    if (!keptManifests.has(m.id)) out.manifests.set(m.id, { entry: m, reason: purgeClosure.has(m.id) ? "purge" : "ttl" });
  }
  const keptReferrers = new Set<string>();
  for (const r of referrers.values()) {
    const subject = manifests.get(r.id);
    const purged = purgedRepos.has(idOf(r.upstream, r.repo, ""));
    if (subject ? keptManifests.has(r.id) : !purged && (r.record.checkedAt >= cutoff || young(r.record.checkedAt))) keptReferrers.add(r.id);
    else out.referrers.set(r.id, { entry: r, reason: subject ? out.manifests.get(r.id)!.reason : purged ? "purge" : "ttl" });
  }
  const referenced = new Set<Digest>();
  for (const id of keptManifests) manifests.get(id)!.blobs.forEach((b) => referenced.add(b));
  const keptBlobs = new Set<Digest>();
  for (const d of blobs) {
    // What a purge reaches goes unless it is being fetched; the grace period is for pulls, not for an operator's purge.
    const keep = purgeBlobs.has(d) ? fetching(d) : protectedBlob(d) || lastPulled.blob(d) >= cutoff;
    if (referenced.has(d) || keep) keptBlobs.add(d);
    else out.blobs.set(d, { size: snap.objects.get(d)!.size, reason: purgeBlobs.has(d) ? "purge" : "ttl" });
  }

  // 3. The size limit: whole images, least recently pulled first, until under the low-water mark.
  if (opts.maxBytes !== null) {
    const total = out.storeBytesBefore - sumSizes(unnamedObjects(snap, out, young, fetching));
    if (total > opts.maxBytes) {
      evict(snap, out, { manifests, keptTags, keptManifests, keptReferrers, keptBlobs, walk, manifestOfTag, lastPulled, protectedBlob, young }, total, opts.lowWater * opts.maxBytes);
    }
  }

  // 4. Links of blobs no kept manifest of that repository references, where the repository lost
  // something, the blob went, or the link itself is older than the TTL.
  const linkedByKept = new Set<string>();
  const touchedRepos = new Set(purgedRepos);
  for (const m of manifests.values()) {
    if (!keptManifests.has(m.id)) touchedRepos.add(idOf(m.upstream, m.repo, ""));
    else m.blobs.forEach((b) => linkedByKept.add(idOf(m.upstream, m.repo, b)));
  }
  for (const { entry } of out.tags.values()) touchedRepos.add(idOf(entry.upstream, entry.repo, ""));
  for (const l of snap.links.values()) {
    if (linkedByKept.has(l.id)) continue;
    const purged = purgedRepos.has(idOf(l.upstream, l.repo, "")) || out.blobs.get(l.digest)?.reason === "purge";
    if (young(l.linkedAt) && !purged) continue;
    const blobGone = !keptBlobs.has(l.digest) && !protectedBlob(l.digest);
    if (purged || blobGone || touchedRepos.has(idOf(l.upstream, l.repo, "")) || l.linkedAt < cutoff) out.links.set(l.id, l);
  }

  // 5. Usage of what is no longer cached at all (served uncached, or removed by an older version).
  for (const [id, u] of snap.usage.tags) if (!snap.tags.has(id) && !young(u.lastPulledAt)) out.usage.push({ kind: "tag", id });
  for (const [id, u] of snap.usage.manifests) if (!snap.manifests.has(id) && !young(u.lastPulledAt)) out.usage.push({ kind: "manifest", id });
  for (const [d, u] of snap.usage.blobs) if (!snap.blobs.has(d) && !young(u.lastPulledAt)) out.usage.push({ kind: "blob", digest: d });

  // 6. Store objects no remaining record names.
  out.objects = unnamedObjects(snap, out, young, fetching);
  return out;
}

/**
 * The store objects no record left by `p` names; with why they go. Objects being fetched stay;
 * so do young ones (a pull may be about to record them) unless a purge removed their record.
 */
function unnamedObjects(snap: Snapshot, p: Plan, young: (at: number) => boolean, fetching: (d: Digest) => boolean): Plan["objects"] {
  const named = new Set<Digest>();
  for (const m of snap.manifests.values()) if (!p.manifests.has(m.id)) named.add(m.digest);
  for (const d of snap.blobs.keys()) if (!p.blobs.has(d)) named.add(d);
  for (const r of snap.referrers.values()) if (!p.referrers.has(r.id)) named.add(r.record.digest);
  const why = new Map<Digest, RemovalReason>();
  for (const { entry, reason } of p.manifests.values()) why.set(entry.digest, reason);
  for (const { entry, reason } of p.referrers.values()) why.set(entry.record.digest, reason);
  for (const [d, { reason }] of p.blobs) why.set(d, reason);
  const out: Plan["objects"] = new Map();
  for (const o of snap.objects.values()) {
    const reason = why.get(o.digest);
    if (named.has(o.digest) || fetching(o.digest)) continue;
    if (reason !== "purge" && (young(o.modifiedAt) || young(snap.blobs.get(o.digest)?.storedAt ?? 0))) continue;
    out.set(o.digest, { size: o.size, reason: reason === undefined || reason === "missing" ? "orphan" : reason });
  }
  return out;
}

function sumSizes(objects: Plan["objects"]): number {
  let n = 0;
  for (const o of objects.values()) n += o.size;
  return n;
}

type Kept = {
  manifests: Map<string, ManifestEntry>;
  keptTags: Map<string, TagEntry>;
  keptManifests: Set<string>;
  keptReferrers: Set<string>;
  keptBlobs: Set<Digest>;
  walk: (from: Iterable<ManifestEntry>, seen: Set<string>, visit: (m: ManifestEntry) => void) => void;
  manifestOfTag: (t: TagEntry) => ManifestEntry | undefined;
  lastPulled: { tag: (t: TagEntry) => number; manifest: (m: ManifestEntry) => number; blob: (d: Digest) => number };
  protectedBlob: (d: Digest) => boolean;
  young: (at: number) => boolean;
};

/**
 * Removes eviction roots (tags; manifests, blobs and referrers lists nothing else keeps) least
 * recently pulled first. Every node of the kept graph counts the roots that reach it, so
 * removing a root frees exactly the nodes only it kept, with no recomputation per step.
 */
function evict(snap: Snapshot, out: Plan, k: Kept, total: number, target: number): void {
  type Root = { nodes: Node[]; at: number; evictable: boolean; tag?: TagEntry };
  const closureOf = (ms: ManifestEntry[], extra: Node[]): Node[] => {
    const nodes = new Set<Node>(extra);
    k.walk(ms, new Set(), (m) => {
      if (!k.keptManifests.has(m.id)) return;
      nodes.add(`m${m.id}`).add(`o${m.digest}`);
      for (const b of m.blobs) if (k.keptBlobs.has(b)) nodes.add(`b${b}`).add(`o${b}`);
      const r = snap.referrers.get(m.id);
      if (r && k.keptReferrers.has(r.id)) nodes.add(`r${r.id}`).add(`o${r.record.digest}`);
    });
    return [...nodes];
  };
  const roots: Root[] = [];
  const reached = new Set<string>();
  for (const t of k.keptTags.values()) {
    const m = k.manifestOfTag(t);
    const ms = m && k.keptManifests.has(m.id) ? [m] : [];
    k.walk(ms, reached, () => {});
    roots.push({ nodes: closureOf(ms, [`t${t.id}`]), at: k.lastPulled.tag(t), evictable: true, tag: t });
  }
  // Manifests no kept tag reaches: each one no other of them reaches is a root (pulled by digest).
  const untagged = [...k.keptManifests].filter((id) => !reached.has(id)).map((id) => k.manifests.get(id)!);
  const below = new Set<string>();
  for (const m of untagged) {
    const seen = new Set<string>();
    k.walk([m], seen, () => {});
    seen.delete(m.id);
    for (const id of seen) below.add(id);
  }
  for (const m of untagged) {
    if (below.has(m.id)) continue;
    roots.push({ nodes: closureOf([m], []), at: k.lastPulled.manifest(m), evictable: !k.young(m.record.storedAt) });
  }
  // Young manifests reached from a root still stay: a pull may be storing the rest of the image.
  for (const id of k.keptManifests) {
    const m = k.manifests.get(id)!;
    if (k.young(m.record.storedAt)) roots.push({ nodes: closureOf([m], []), at: Infinity, evictable: false });
  }
  const referencedBlobs = new Set<Digest>();
  for (const id of k.keptManifests) k.manifests.get(id)!.blobs.forEach((b) => referencedBlobs.add(b));
  for (const d of k.keptBlobs) {
    const pinned = k.protectedBlob(d);
    if (!referencedBlobs.has(d) || pinned) roots.push({ nodes: [`b${d}`, `o${d}`], at: k.lastPulled.blob(d), evictable: !pinned });
  }
  for (const id of k.keptReferrers) {
    const r = snap.referrers.get(id)!;
    if (!k.manifests.has(id)) roots.push({ nodes: [`r${id}`, `o${r.record.digest}`], at: r.record.checkedAt, evictable: true });
  }

  const refs = new Map<Node, number>();
  for (const r of roots) for (const n of r.nodes) refs.set(n, (refs.get(n) ?? 0) + 1);
  const evictable = roots.filter((r) => r.evictable).sort((a, b) => a.at - b.at);
  for (const root of evictable) {
    if (total <= target) break;
    for (const n of root.nodes) {
      const left = refs.get(n)! - 1;
      refs.set(n, left);
      if (left > 0) continue;
      const kind = n[0];
      const id = n.slice(1);
      if (kind === "t") {
        const t = k.keptTags.get(id)!;
        k.keptTags.delete(id);
        out.tags.set(id, { entry: t, reason: "size" });
      } else if (kind === "m") {
        k.keptManifests.delete(id);
        out.manifests.set(id, { entry: k.manifests.get(id)!, reason: "size" });
      } else if (kind === "r") {
        k.keptReferrers.delete(id);
        out.referrers.set(id, { entry: snap.referrers.get(id)!, reason: "size" });
      } else if (kind === "b") {
        const d = id as Digest;
        k.keptBlobs.delete(d);
        out.blobs.set(d, { size: snap.objects.get(d)?.size ?? 0, reason: "size" });
      } else if (kind === "o") {
        total -= snap.objects.get(id as Digest)?.size ?? 0;
      }
    }
  }
}
