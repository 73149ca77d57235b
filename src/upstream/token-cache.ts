import { z } from "zod";
import type { TypedKv } from "../kv/kv.ts";

/** `refreshAt`: when to stop using the token, a little before the upstream's expiry. */
const TokenRecord = z.object({ token: z.string().min(1), refreshAt: z.number() });
type TokenRecord = z.infer<typeof TokenRecord>;

/** Refresh a little before the upstream's expiry so a token never dies mid-request. */
const EARLY_REFRESH_MS = 15_000;

/**
 * Upstream bearer tokens, reused until they expire: in memory for speed and in
 * KV so restarts and sibling instances do not ask the token service again.
 * Expiry is checked against our own timestamp (KV expiry is lazy).
 */
export class UpstreamTokenCache {
  private readonly memory = new Map<string, TokenRecord>();

  constructor(private readonly kv: TypedKv, private readonly now: () => number = Date.now) {}

  private key(upstream: string, scope: string) {
    return ["upstream-token", upstream, scope] as const;
  }

  async get(upstream: string, scope: string): Promise<string | null> {
    const id = `${upstream}\n${scope}`;
    const cached = this.memory.get(id);
    if (cached && cached.refreshAt > this.now()) return cached.token;
    this.memory.delete(id);
    const stored = await this.kv.read(this.key(upstream, scope), TokenRecord);
    if (stored && stored.refreshAt > this.now()) {
      this.memory.set(id, stored);
      return stored.token;
    }
    return null;
  }

  async put(upstream: string, scope: string, token: string, expiresInSeconds: number): Promise<void> {
    const lifetimeMs = expiresInSeconds * 1000;
    // Never so early that a short-lived token is not used at all: the retry right
    // after fetching it would go without it and fail with 401.
    const record = { token, refreshAt: this.now() + lifetimeMs - Math.min(EARLY_REFRESH_MS, lifetimeMs / 2) };
    this.memory.set(`${upstream}\n${scope}`, record);
    await this.kv.write(this.key(upstream, scope), record, expiresInSeconds * 1000);
  }

  async drop(upstream: string, scope: string): Promise<void> {
    this.memory.delete(`${upstream}\n${scope}`);
    await this.kv.remove(this.key(upstream, scope));
  }
}
