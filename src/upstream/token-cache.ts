import { z } from "zod";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";

/** `refreshAt`: when to stop using the token, a little before the upstream's expiry. */
const TokenRecord = z.object({ token: z.string().min(1), refreshAt: z.number() });
type TokenRecord = z.infer<typeof TokenRecord>;
type Entry = TokenRecord & { upstream: string; scope: string; inKv: boolean };

/** Refresh a little before the upstream's expiry so a token never dies mid-request. */
const EARLY_REFRESH_MS = 15_000;

export type TokenCacheLimits = {
  /** Tokens kept in memory, least recently used dropped first. */
  maxEntries: number;
  /** Total token characters kept in memory. */
  maxMemoryChars: number;
  /** Longer tokens are kept in memory only: KV records stay small. */
  maxKvChars: number;
  /** Longer tokens are not kept at all (each would take a large share of the memory bound). */
  maxMemoryTokenChars: number;
  /** Tokens that live less than this are kept in memory only: a KV write would outlive its use. */
  minKvLifetimeMs: number;
};

/**
 * Docker Hub issues a token for any repository name, so a client asking for
 * many made-up names must not grow this cache: memory holds at most 1,000
 * tokens (8 MiB) and KV only what memory holds (see `evict`), each record
 * small and expiring with its token.
 */
export const DEFAULT_TOKEN_CACHE_LIMITS: TokenCacheLimits = {
  maxEntries: 1_000,
  maxMemoryChars: 8 * 1024 * 1024,
  maxKvChars: 8 * 1024,
  maxMemoryTokenChars: 64 * 1024,
  minKvLifetimeMs: 60_000,
};

/**
 * Upstream bearer tokens, reused until they expire: in memory for speed and in
 * KV so restarts and sibling instances do not ask the token service again.
 * Expiry is checked against our own timestamp (KV expiry is lazy).
 */
export class UpstreamTokenCache {
  /** In least-recently-used order (a Map iterates in insertion order; a hit re-inserts). */
  private readonly memory = new Map<string, Entry>();
  private memoryChars = 0;
  private readonly limits: TokenCacheLimits;

  constructor(
    private readonly kv: TypedKv,
    private readonly now: () => number = Date.now,
    limits: Partial<TokenCacheLimits> = {},
  ) {
    this.limits = { ...DEFAULT_TOKEN_CACHE_LIMITS, ...limits };
  }

  /** Tokens held in memory (for tests and diagnostics). */
  get size(): number {
    return this.memory.size;
  }

  async get(upstream: string, scope: string): Promise<string | null> {
    const id = `${upstream}\n${scope}`;
    const cached = this.memory.get(id);
    if (cached) {
      this.forget(id);
      if (cached.refreshAt > this.now()) {
        this.remember(id, cached);
        return cached.token;
      }
    }
    const stored = await this.kv.read(kvKeys.upstreamToken(upstream, scope), TokenRecord);
    if (stored && stored.refreshAt > this.now()) {
      this.remember(id, { ...stored, upstream, scope, inKv: true });
      return stored.token;
    }
    // Expired: reclaim it now rather than at KV's lazy expiry.
    if (stored || cached?.inKv) await this.removeFromKv(upstream, scope);
    return null;
  }

  async put(upstream: string, scope: string, token: string, expiresInSeconds: number): Promise<void> {
    const id = `${upstream}\n${scope}`;
    const old = this.memory.get(id);
    if (old) this.forget(id);
    const { maxKvChars, maxMemoryTokenChars, minKvLifetimeMs } = this.limits;
    if (token.length > maxMemoryTokenChars) {
      // Not worth keeping; a stale copy must not outlive the new one either.
      if (old?.inKv) await this.removeFromKv(upstream, scope);
      return;
    }
    const lifetimeMs = expiresInSeconds * 1000;
    const inKv = token.length <= maxKvChars && lifetimeMs >= minKvLifetimeMs;
    // Never so early that a short-lived token is not used at all: the retry right
    // after fetching it would go without it and fail with 401.
    const record = { token, refreshAt: this.now() + lifetimeMs - Math.min(EARLY_REFRESH_MS, lifetimeMs / 2) };
    this.remember(id, { ...record, upstream, scope, inKv });
    if (inKv) await this.kv.write(kvKeys.upstreamToken(upstream, scope), record, lifetimeMs);
    else if (old?.inKv) await this.removeFromKv(upstream, scope);
  }

  async drop(upstream: string, scope: string): Promise<void> {
    this.forget(`${upstream}\n${scope}`);
    await this.kv.remove(kvKeys.upstreamToken(upstream, scope));
  }

  private remember(id: string, record: Entry): void {
    this.memory.set(id, record);
    this.memoryChars += record.token.length;
    const { maxEntries, maxMemoryChars } = this.limits;
    while (this.memory.size > maxEntries || this.memoryChars > maxMemoryChars) {
      const oldest = this.memory.keys().next();
      if (oldest.done) break;
      this.evict(oldest.value);
    }
  }

  private forget(id: string): void {
    const record = this.memory.get(id);
    if (!record) return;
    this.memory.delete(id);
    this.memoryChars -= record.token.length;
  }

  /**
   * Dropped from memory, and from KV as well: KV then holds no more tokens
   * than the memory bound (per instance), however many names are asked for,
   * instead of one record per name until each expires. Another instance that
   * still wanted it asks the token service again.
   */
  private evict(id: string): void {
    const record = this.memory.get(id);
    this.forget(id);
    if (!record?.inKv) return;
    // In the background: a failed removal leaves a record that expires with its token.
    this.removeFromKv(record.upstream, record.scope).catch(() => {});
  }

  private async removeFromKv(upstream: string, scope: string): Promise<void> {
    await this.kv.remove(kvKeys.upstreamToken(upstream, scope));
  }
}
