/**
 * The collector: expiry (--cache-ttl), the size limit (--max-size), purges, and the sweep
 * that makes KV and store agree again after a crash. One run reads every record and the
 * store's listing (snapshot.ts), decides what goes (plan.ts, pure), then removes it: records
 * before objects, so a reader finds either no record or the object, and with the checks
 * repeated at the last moment for what a pull may have touched meanwhile.
 */
import { BlobRecord, LeaseRecord, ManifestRecord, ReferrersRecord, TagRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { KvKey, TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { parseDigest, type Digest } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { GcLease, GcLeaseLost } from "./gc-lease.ts";
import { plan, type Plan } from "./plan.ts";
import type { PurgeSelector } from "./selectors.ts";
import { RefsCache, takeSnapshot, type Snapshot } from "./snapshot.ts";

export type { PurgeSelector } from "./selectors.ts";

export type CollectOptions = {
  /** --cache-ttl; null = no expiry. */
  cacheTtlMs: number | null;
  /** --max-size; null = no limit. */
  maxBytes: number | null;
  /** Fraction of maxBytes to get under once above it; default 0.9. */
  lowWater?: number;
  purge?: readonly PurgeSelector[];
  dryRun: boolean;
  /** "schedule" | "disk-full" | "cli" | an admin's identity: logged with every removal. */
  by: string;
};

export type RemovedItem = { kind: "tag" | "manifest" | "blob"; name: string; bytes: number; reason: "ttl" | "size" | "purge" | "orphan" | "missing" };

export type CollectReport = {
  /** False: another instance holds the collector lease; nothing done. */
  ran: boolean;
  dryRun: boolean;
  removed: RemovedItem[];
  bytesFreed: number;
  storeBytesBefore: number;
  storeBytesAfter: number;
  startedAt: number;
  durationMs: number;
};

export type CollectorDeps = {
  kv: TypedKv;
  store: BlobStore;
  metrics: StowageMetrics;
  log: Logger;
  /** Unique per process (the lease owner). */
  owner: string;
  now?: () => number;
  /** A blob this instance is fetching or serving from the store right now. */
  busy?: (digest: Digest) => boolean;
  /** The upstreams, so repository globs may use registry hosts (ghcr.io/owner/*) as well as upstream names. */
  upstreams?: ReadonlyArray<{ name: string; host: string }>;
  /** Content written more recently than this is never collected; default DEFAULT_GRACE_MS. */
  graceMs?: number;
  /** The collector lease's TTL (tests); default GC_LEASE_TTL_MS. */
  leaseTtlMs?: number;
  /** The clock of this process's lease deadline (tests simulate a stall with it); default performance.now. */
  monotonic?: () => number;
};

/** Long enough for a pull that has stored a manifest to store its tag and start its blobs. */
export const DEFAULT_GRACE_MS = 10 * 60_000;
export const DEFAULT_LOW_WATER = 0.9;

export class Collector {
  private last: CollectReport | null = null;
  private running = false;
  private readonly now: () => number;
  private readonly refs = new RefsCache();

  constructor(private readonly deps: CollectorDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** The report of the last run (dry runs included); null before the first. */
  lastReport(): CollectReport | null {
    return this.last;
  }

  async run(options: CollectOptions): Promise<CollectReport> {
    const startedAt = this.now();
    const began = Date.now();
    const notRun: CollectReport = { ran: false, dryRun: options.dryRun, removed: [], bytesFreed: 0, storeBytesBefore: 0, storeBytesAfter: 0, startedAt, durationMs: 0 };
    // One collection per process at a time (the schedule and a full disk may ask together).
    if (this.running) return notRun;
    this.running = true;
    const lease = new GcLease(this.deps.kv, this.deps.owner, this.now, this.deps.log, this.deps.leaseTtlMs, this.deps.monotonic);
    try {
      // A dry run changes nothing, so it needs no lease (and may look while another instance collects).
      if (!options.dryRun && !(await lease.acquire())) {
        this.deps.log.info("another instance is collecting; skipped", { by: options.by });
        return notRun;
      }
      const report = await this.collect(options, startedAt, lease);
      report.durationMs = Date.now() - began;
      this.last = report;
      this.finish(report, options.by);
      return report;
    } finally {
      await lease.release();
      this.running = false;
    }
  }

  private async collect(options: CollectOptions, startedAt: number, lease: GcLease): Promise<CollectReport> {
    const { kv, store } = this.deps;
    const hosts = new Map((this.deps.upstreams ?? []).map((u) => [u.name, u.host]));
    const snap = await takeSnapshot(kv, store, startedAt, this.refs);
    const p = plan(snap, {
      now: startedAt,
      graceMs: this.deps.graceMs ?? DEFAULT_GRACE_MS,
      cacheTtlMs: options.cacheTtlMs,
      maxBytes: options.maxBytes,
      lowWater: options.lowWater ?? DEFAULT_LOW_WATER,
      purge: options.purge ?? [],
      busy: (d) => this.deps.busy?.(d) ?? false,
      hostOf: (u) => hosts.get(u),
    });
    const done = options.dryRun ? everything(p) : await this.apply(p, snap, lease);
    const removed = itemsOf(p, done);
    const bytesFreed = removed.reduce((n, r) => n + r.bytes, 0);
    const report: CollectReport = {
      ran: true,
      dryRun: options.dryRun,
      removed,
      bytesFreed,
      storeBytesBefore: p.storeBytesBefore,
      storeBytesAfter: p.storeBytesBefore - bytesFreed,
      startedAt,
      durationMs: 0,
    };
    const objectsAfter = p.storeObjectsBefore - (options.dryRun ? 0 : done.objects.size);
    this.deps.metrics.storeObjects.set({}, objectsAfter);
    return report;
  }

  /** Removes what the plan says, records first; returns what was removed (a check at the last moment may keep something). */
  private async apply(p: Plan, snap: Snapshot, lease: GcLease): Promise<Done> {
    const { kv, store } = this.deps;
    const done: Done = { tags: new Set(), manifests: new Set(), blobs: new Set(), objects: new Set() };
    // The lease is checked right before each removal is sent: a collector that stalled or could
    // not renew stops there, before another instance may take over.
    const remove = (key: KvKey) => (lease.check(), kv.remove(key));
    // Usage records are removed with what they describe, where there is one (most content is never pulled twice).
    await each(p.tags, lease, async ([id, { entry, reason }]) => {
      const key = kvKeys.tag(entry.upstream, entry.repo, entry.tag);
      // Pulled and revalidated since the snapshot: it is in use after all (a purge removes it anyway).
      const now = await kv.read(key, TagRecord);
      if (reason !== "purge" && now && now.checkedAt !== entry.record.checkedAt) return;
      await remove(key);
      done.tags.add(id);
      if (snap.usage.tags.has(id)) await remove(kvKeys.usageTag(entry.upstream, entry.repo, entry.tag));
    });
    await each(p.referrers.values(), lease, ({ entry }) => remove(kvKeys.referrers(entry.upstream, entry.repo, entry.subject)));
    await each(p.manifests, lease, async ([id, { entry, reason }]) => {
      if (reason === "missing" && (await store.stat(entry.digest)) !== null) return;
      await remove(kvKeys.manifest(entry.upstream, entry.repo, entry.digest));
      done.manifests.add(id);
      if (snap.usage.manifests.has(id)) await remove(kvKeys.usageManifest(entry.upstream, entry.repo, entry.digest));
    });
    await each(p.links.values(), lease, (l) => remove(kvKeys.link(l.upstream, l.repo, l.digest)));
    await each(p.blobs, lease, async ([digest, { reason }]) => {
      if (reason === "missing" ? (await store.stat(digest)) !== null : await this.inUse(digest)) return;
      await remove(kvKeys.blob(digest));
      done.blobs.add(digest);
      if (snap.usage.blobs.has(digest)) await remove(kvKeys.usageBlob(digest));
    });
    await each(p.usage, lease, (u) => {
      if (u.kind === "blob") return remove(kvKeys.usageBlob(u.digest));
      const [upstream, repo, name] = u.id.split("\n") as [string, string, string];
      return remove(u.kind === "tag" ? kvKeys.usageTag(upstream, repo, name) : kvKeys.usageManifest(upstream, repo, name as Digest));
    });
    if (p.objects.size === 0 || !lease.held) return done;
    // Named again since the snapshot (a pull stored the same manifest, or fetched the blob anew): keep.
    const named = new Set<Digest>();
    for await (const { key } of kv.list(["manifest"], ManifestRecord)) {
      const d = parseDigest(String(key[3] ?? ""));
      if (d) named.add(d);
    }
    for await (const { value } of kv.list(["referrers"], ReferrersRecord)) named.add(value.digest);
    await each(p.objects.keys(), lease, async (digest) => {
      if (named.has(digest) || (await kv.read(kvKeys.blob(digest), BlobRecord)) || (await this.inUse(digest))) return;
      lease.check();
      await store.delete(digest);
      done.objects.add(digest);
    });
    return done;
  }

  /** Being fetched or read here, or leased by another instance's fetch. */
  private async inUse(digest: Digest): Promise<boolean> {
    if (this.deps.busy?.(digest)) return true;
    const lease = await this.deps.kv.read(kvKeys.lease(digest), LeaseRecord);
    return lease !== null && lease.expiresAt > this.now();
  }

  /** Logs and counts each removal, and sets the gauges. */
  private finish(report: CollectReport, by: string): void {
    const { log, metrics } = this.deps;
    if (!report.dryRun) {
      for (const item of report.removed) {
        log.info("collector removed", { ...item, by });
        metrics.gcRemoved.inc({ reason: item.reason });
        metrics.gcRemovedBytes.inc({ reason: item.reason }, item.bytes);
      }
      metrics.gcLastRun.set({}, Math.round((report.startedAt + report.durationMs) / 1000));
      metrics.gcLastDuration.set({}, report.durationMs / 1000);
    }
    metrics.storeBytes.set({}, report.storeBytesAfter);
    log.info(report.dryRun ? "collection dry run done: nothing was changed" : "collection done", {
      by,
      removed: report.removed.length,
      bytesFreed: report.bytesFreed,
      storeBytesBefore: report.storeBytesBefore,
      storeBytesAfter: report.storeBytesAfter,
      ms: report.durationMs,
    });
  }
}

/** Removals in flight at once: a remote KV or S3 answers in milliseconds each, one by one would take hours on a large cache. */
const REMOVAL_CONCURRENCY = 16;

/** Runs `fn` on every item, a few at a time, stopping once the lease is lost (what was done stays in the report). */
async function each<T>(items: Iterable<T>, lease: GcLease, fn: (item: T) => Promise<unknown>): Promise<void> {
  const it = items[Symbol.iterator]();
  const worker = async () => {
    try {
      for (let next = it.next(); !next.done && lease.held; next = it.next()) await fn(next.value);
    } catch (err) {
      if (!(err instanceof GcLeaseLost)) throw err;
    }
  };
  await Promise.all(Array.from({ length: REMOVAL_CONCURRENCY }, worker));
}

type Done = { tags: Set<string>; manifests: Set<string>; blobs: Set<Digest>; objects: Set<Digest> };

function everything(p: Plan): Done {
  return { tags: new Set(p.tags.keys()), manifests: new Set(p.manifests.keys()), blobs: new Set(p.blobs.keys()), objects: new Set(p.objects.keys()) };
}

/**
 * The report's items: one per tag, manifest record and blob removed, and one per other store
 * object (an orphan, a referrers list); each freed object's bytes counted once, on one item.
 */
function itemsOf(p: Plan, done: Done): RemovedItem[] {
  const items: RemovedItem[] = [];
  const freed = new Map<Digest, number>();
  for (const d of done.objects) freed.set(d, p.objects.get(d)!.size);
  const take = (d: Digest) => {
    const n = freed.get(d) ?? 0;
    freed.delete(d);
    return n;
  };
  for (const [id, { entry, reason }] of p.tags) {
    if (done.tags.has(id)) items.push({ kind: "tag", name: `${entry.upstream}/${entry.repo}:${entry.tag}`, bytes: 0, reason });
  }
  for (const [id, { entry, reason }] of p.manifests) {
    if (!done.manifests.has(id)) continue;
    const r = p.referrers.get(id);
    const bytes = take(entry.digest) + (r ? take(r.entry.record.digest) : 0);
    items.push({ kind: "manifest", name: `${entry.upstream}/${entry.repo}@${entry.digest}`, bytes, reason });
  }
  for (const { entry, reason } of p.referrers.values()) {
    const bytes = take(entry.record.digest);
    if (bytes > 0) items.push({ kind: "manifest", name: `${entry.upstream}/${entry.repo} referrers of ${entry.subject}`, bytes, reason });
  }
  for (const [digest, { reason }] of p.blobs) {
    if (done.blobs.has(digest)) items.push({ kind: "blob", name: digest, bytes: take(digest), reason });
  }
  for (const [digest, bytes] of freed) items.push({ kind: "blob", name: digest, bytes, reason: p.objects.get(digest)!.reason });
  return items;
}
