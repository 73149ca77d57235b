/**
 * Token signing keys, kept in KV so they survive restarts and are shared by
 * every instance using the same KV. One key signs; keys retired by rotation
 * keep verifying until every token they signed has expired.
 */
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type JWK } from "jose";
import { z } from "zod";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";

export const SIGNING_ALG = "ES256";
const KEY = kvKeys.signingKeys();
// Other instances (or `stowage keys rotate`) may change the keys; look again this often.
const RELOAD_MS = 10_000;
// Tokens with made-up key ids must not turn into a KV read each.
const FORCED_RELOAD_MS = 1_000;

const jwkSchema = z.looseObject({ kty: z.literal("EC"), crv: z.literal("P-256"), x: z.string(), y: z.string(), d: z.string().optional() });

const storedKey = z.object({
  kid: z.string(),
  privateJwk: jwkSchema,
  publicJwk: jwkSchema,
  createdAt: z.number(),
  retiredAt: z.number().nullable(),
});
const keySet = z.object({ keys: z.array(storedKey) });
type StoredKey = z.infer<typeof storedKey>;

type Loaded = { kid: string; publicJwk: JWK; verify: CryptoKey; sign: CryptoKey | null; retiredAt: number | null };

export type KeyLookup = { key: CryptoKey; retiredAt: number | null } | null;

export class KeyRing {
  #keys: Loaded[] = [];
  #loadedAt = -Infinity;
  #forcedAt = -Infinity;

  /** `retainMs`: how long a retired key keeps verifying (longest token lifetime plus clock skew). */
  constructor(
    private readonly kv: TypedKv,
    private readonly retainMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Creates the first key if there is none; safe when several instances start at once. */
  async ensure(): Promise<void> {
    await this.#update((keys) => (keys.some((k) => k.retiredAt === null) ? null : this.#withNewKey(keys)));
  }

  /** A new key signs from now on; the previous one only verifies, until its tokens have expired. */
  async rotate(): Promise<{ kid: string; retired: string[] }> {
    let result = { kid: "", retired: [] as string[] };
    await this.#update(async (keys) => {
      const now = this.now();
      const retired = keys.filter((k) => k.retiredAt === null).map((k) => k.kid);
      const next = await this.#withNewKey(keys.map((k) => (k.retiredAt === null ? { ...k, retiredAt: now } : k)));
      result = { kid: next[next.length - 1]!.kid, retired };
      return next;
    });
    return result;
  }

  async signingKey(): Promise<{ kid: string; key: CryptoKey }> {
    await this.#refresh(false);
    let active = this.#keys.find((k) => k.retiredAt === null && k.sign);
    if (!active) {
      await this.ensure();
      await this.#refresh(true);
      active = this.#keys.find((k) => k.retiredAt === null && k.sign);
    }
    if (!active?.sign) throw new Error("no signing key in KV");
    return { kid: active.kid, key: active.sign };
  }

  async verificationKey(kid: string): Promise<KeyLookup> {
    await this.#refresh(false);
    let found = this.#keys.find((k) => k.kid === kid);
    // A key made by another instance since our last look.
    if (!found && this.now() - this.#forcedAt >= FORCED_RELOAD_MS) {
      this.#forcedAt = this.now();
      await this.#refresh(true);
      found = this.#keys.find((k) => k.kid === kid);
    }
    return found ? { key: found.verify, retiredAt: found.retiredAt } : null;
  }

  /** Whether a retired key is past the time when tokens it signed could still be valid. */
  expired(retiredAt: number | null): boolean {
    return retiredAt !== null && retiredAt + this.retainMs < this.now();
  }

  /** Always read afresh: a verifier fetching the JWKS right after a rotation must see the new key. */
  async jwks(): Promise<{ keys: JWK[] }> {
    await this.#refresh(true);
    return {
      keys: this.#keys.filter((k) => !this.expired(k.retiredAt)).map((k) => ({ ...k.publicJwk, kid: k.kid, alg: SIGNING_ALG, use: "sig" })),
    };
  }

  async #withNewKey(keys: StoredKey[]): Promise<StoredKey[]> {
    const pair = await generateKeyPair(SIGNING_ALG, { extractable: true });
    const publicJwk = await exportJWK(pair.publicKey);
    const privateJwk = await exportJWK(pair.privateKey);
    const kid = await calculateJwkThumbprint(publicJwk);
    const live = keys.filter((k) => !this.expired(k.retiredAt));
    return [...live, { kid, privateJwk: privateJwk as StoredKey["privateJwk"], publicJwk: publicJwk as StoredKey["publicJwk"], createdAt: this.now(), retiredAt: null }];
  }

  /** Compare-and-set on the key set; `change` returns null for "nothing to do". */
  async #update(change: (keys: StoredKey[]) => Promise<StoredKey[] | null> | StoredKey[] | null): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const { value, versionstamp } = await this.kv.readVersioned(KEY, keySet);
      const next = await change(value?.keys ?? []);
      if (next === null) return;
      const committed = await this.kv.writeIfUnchanged(KEY, versionstamp, { keys: next });
      if (committed !== null) {
        this.#loadedAt = -Infinity;
        return;
      }
    }
    throw new Error("could not update the signing keys in KV: too many concurrent changes");
  }

  async #refresh(force: boolean): Promise<void> {
    const now = this.now();
    if (!force && now - this.#loadedAt < RELOAD_MS) return;
    const stored = (await this.kv.read(KEY, keySet))?.keys ?? [];
    this.#keys = await Promise.all(
      stored.map(async (k) => ({
        kid: k.kid,
        publicJwk: k.publicJwk as JWK,
        verify: await importEcKey(k.publicJwk as JWK),
        sign: k.retiredAt === null ? await importEcKey(k.privateJwk as JWK) : null,
        retiredAt: k.retiredAt,
      })),
    );
    this.#loadedAt = now;
  }
}

/** jose returns raw bytes for symmetric JWKs; ours are always EC key pairs. */
async function importEcKey(jwk: JWK): Promise<CryptoKey> {
  const key = await importJWK(jwk, SIGNING_ALG);
  if (key instanceof Uint8Array) throw new Error("a signing key stored in KV is not an EC key");
  return key;
}
