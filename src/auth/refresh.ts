/**
 * Refresh tokens (docker "identity tokens"): long-lived random secrets that
 * stand in for a password. KV holds only their SHA-256. Clients send them
 * without a username, so the hash alone is the key.
 */
import { z } from "zod";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import { base64url, hex } from "../util/encoding.ts";
import type { IdentityKind } from "./identities.ts";

export const REFRESH_TOKEN_TTL_MS = 90 * 24 * 3600 * 1000;
const TOKEN_FORMAT = /^[A-Za-z0-9_-]{43}$/;

const record = z.object({ subject: z.string(), kind: z.enum(["user", "robot"]), createdAt: z.number() });

export type RefreshOwner = { subject: string; kind: IdentityKind };

export class RefreshTokens {
  constructor(
    private readonly kv: TypedKv,
    private readonly now: () => number = Date.now,
  ) {}

  async create(owner: RefreshOwner): Promise<string> {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    const token = base64url(bytes);
    await this.kv.write(kvKeys.refreshToken(await sha256(token)), { ...owner, createdAt: this.now() }, REFRESH_TOKEN_TTL_MS);
    return token;
  }

  /** The owner of a live refresh token, or null. */
  async lookup(token: string): Promise<RefreshOwner | null> {
    if (!TOKEN_FORMAT.test(token)) return null;
    const found = await this.kv.read(kvKeys.refreshToken(await sha256(token)), record);
    if (!found || found.createdAt + REFRESH_TOKEN_TTL_MS < this.now()) return null;
    return { subject: found.subject, kind: found.kind };
  }

  /** Revokes every refresh token of a subject; returns how many there were. */
  async revokeAll(subject: string): Promise<number> {
    let n = 0;
    for await (const entry of this.kv.list(kvKeys.refreshTokens(), record)) {
      if (entry.value.subject !== subject) continue;
      await this.kv.remove(entry.key);
      n++;
    }
    return n;
  }
}

async function sha256(text: string): Promise<string> {
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))));
}
