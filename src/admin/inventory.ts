/**
 * What the cache holds, as the admin page lists it: every tag record joined with its usage
 * record, grouped by repository, searchable and paged in memory. Built from two prefix scans
 * of the KV and kept for a few seconds, so paging and searching through tens of thousands of
 * tags costs one scan, not one per click.
 */
import { z } from "zod";
import { BlobRecord, UsageRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";

/**
 * The fields of a tag record the listing shows, checked for their types only: the full check
 * (TagRecord, with its digest and media type rules) costs as much again as the KV scan, so it
 * is done for the rows of the page shown, before anything is read with them.
 */
const ListedTag = z.object({ digest: z.string(), mediaType: z.string(), checkedAt: z.number() });

export type TagRow = {
  upstream: string;
  repo: string;
  tag: string;
  /** Unchecked (see ListedTag): parse with TagRecord before using them to read anything. */
  digest: string;
  mediaType: string;
  /** When upstream last confirmed the tag (ms). */
  checkedAt: number;
  lastPulledAt: number | null;
  pulls: number;
  /** Lower-cased "upstream/repo:tag", what the search box matches. */
  haystack: string;
};

export type RepoSummary = { upstream: string; repo: string; tags: number; pulls: number; lastPulledAt: number | null };

export type Inventory = {
  /** Sorted by upstream, repository, tag. */
  rows: TagRow[];
  repos: Map<string, RepoSummary>;
  blobs: number;
  blobBytes: number;
  builtAt: number;
  buildMs: number;
};

export type InventoryPage = {
  rows: TagRow[];
  /** Rows matching the search (all rows without one). */
  matching: number;
  page: number;
  pages: number;
  pageSize: number;
};

export const PAGE_SIZE = 50;
/** A listing this young is served as it is: longer than a click, shorter than an operator's patience after a pull. */
const FRESH_MS = 5_000;
/**
 * An older one is still served at once while a new one is built behind it (a scan of 30,000
 * tags takes about a second), unless it is older than this.
 */
const STALE_MS = 5 * 60_000;

export const repoKey = (upstream: string, repo: string) => `${upstream}\u0000${repo}`;

export async function buildInventory(kv: TypedKv, now: () => number = Date.now): Promise<Inventory> {
  const started = now();
  const usage = new Map<string, UsageRecord>();
  for await (const { key, value } of kv.list(kvKeys.usageOf("tag"), UsageRecord)) {
    const [, , upstream, repo, tag] = key;
    if (typeof upstream === "string" && typeof repo === "string" && typeof tag === "string") usage.set(`${repoKey(upstream, repo)}\u0000${tag}`, value);
  }
  const rows: TagRow[] = [];
  for await (const { key, value } of kv.list(["tag"], ListedTag)) {
    const [, upstream, repo, tag] = key;
    if (typeof upstream !== "string" || typeof repo !== "string" || typeof tag !== "string" || key.length !== 4) continue;
    const used = usage.get(`${repoKey(upstream, repo)}\u0000${tag}`);
    rows.push({
      upstream,
      repo,
      tag,
      digest: value.digest,
      mediaType: value.mediaType,
      checkedAt: value.checkedAt,
      lastPulledAt: used?.lastPulledAt ?? null,
      pulls: used?.pulls ?? 0,
      haystack: `${upstream}/${repo}:${tag}`.toLowerCase(),
    });
  }
  // KV lists in key order already; sorting again keeps the order whatever the backend does.
  rows.sort((a, b) => compare(a.upstream, b.upstream) || compare(a.repo, b.repo) || compare(a.tag, b.tag));
  const repos = new Map<string, RepoSummary>();
  for (const r of rows) {
    const k = repoKey(r.upstream, r.repo);
    let s = repos.get(k);
    if (!s) repos.set(k, (s = { upstream: r.upstream, repo: r.repo, tags: 0, pulls: 0, lastPulledAt: null }));
    s.tags++;
    s.pulls += r.pulls;
    if (r.lastPulledAt !== null && (s.lastPulledAt === null || r.lastPulledAt > s.lastPulledAt)) s.lastPulledAt = r.lastPulledAt;
  }
  let blobs = 0;
  let blobBytes = 0;
  for await (const { value } of kv.list(["blob"], BlobRecord)) {
    blobs++;
    blobBytes += value.size;
  }
  const builtAt = now();
  return { rows, repos, blobs, blobBytes, builtAt, buildMs: builtAt - started };
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Rows whose "upstream/repo:tag" contains every word of `query` (case-insensitive), one page of them. */
export function pageOf(inventory: Inventory, query: string, page: number, pageSize = PAGE_SIZE): InventoryPage {
  const words = query.toLowerCase().split(/\s+/).filter((w) => w !== "");
  const matches = words.length === 0 ? inventory.rows : inventory.rows.filter((r) => words.every((w) => r.haystack.includes(w)));
  const pages = Math.max(1, Math.ceil(matches.length / pageSize));
  const current = Math.min(Math.max(1, Math.floor(page) || 1), pages);
  return { rows: matches.slice((current - 1) * pageSize, current * pageSize), matching: matches.length, page: current, pages, pageSize };
}

/**
 * One inventory at a time: served as it is for FRESH_MS, then served while a new one is built
 * (up to STALE_MS), rebuilt once however many requests ask meanwhile.
 */
export class InventoryCache {
  private current: Inventory | null = null;
  private building: Promise<Inventory> | null = null;
  private generation = 0;

  constructor(private readonly kv: TypedKv, private readonly now: () => number = Date.now) {}

  get(): Promise<Inventory> {
    const age = this.current ? this.now() - this.current.builtAt : Infinity;
    if (this.current && age < FRESH_MS) return Promise.resolve(this.current);
    const next = this.rebuild();
    if (this.current && age < STALE_MS) {
      next.catch(() => {}); // the next request tries again
      return Promise.resolve(this.current);
    }
    return next;
  }

  private rebuild(): Promise<Inventory> {
    if (this.building) return this.building;
    const generation = this.generation;
    const building = buildInventory(this.kv, this.now).finally(() => {
      if (this.building === building) this.building = null;
    });
    this.building = building;
    // A build that started before an invalidate() serves its callers but is not kept.
    return building.then((inv) => {
      if (generation === this.generation) this.current = inv;
      return inv;
    });
  }

  /** After a purge: the next page shows what is left. */
  invalidate(): void {
    this.current = null;
    this.building = null;
    this.generation++;
  }
}
