/**
 * CI federation: a CI job's OIDC id_token (GitHub Actions, GitLab id_tokens)
 * used as the password. It is verified against the issuer's published keys,
 * audience and the configured claim conditions, and then stands for one
 * configured identity that the rules name.
 */
import { createRemoteJWKSet, decodeJwt, type JWTPayload, jwtVerify } from "jose";
import { z } from "zod";
import { globToRegExp } from "./rules.ts";

export type OidcProvider = {
  issuer: string;
  audience: string;
  /** Where the issuer publishes its keys; null: found through OpenID discovery. */
  jwksUrl: string | null;
  /** The identity (rule subject) a verified token stands for. */
  identity: string;
  /** Claim name → glob the claim's value must match, e.g. repository_owner: my-org. */
  claims: Record<string, string>;
};

// Only asymmetric algorithms: a symmetric one would need a secret shared with the CI.
const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MAX_TOKEN = 16 * 1024;
const discovery = z.object({ jwks_uri: z.url() });

type KeySet = ReturnType<typeof createRemoteJWKSet>;

export class OidcVerifier {
  readonly #keySets = new Map<string, Promise<KeySet>>();

  constructor(
    readonly providers: readonly OidcProvider[],
    private readonly now: () => number = Date.now,
  ) {}

  identities(): string[] {
    return this.providers.map((p) => p.identity);
  }

  /** Whether a password is meant as a CI token: a JWT from one of the configured issuers (not yet verified). */
  isCiToken(token: string): boolean {
    if (this.providers.length === 0 || token.length > MAX_TOKEN || !JWT_SHAPE.test(token)) return false;
    try {
      const issuer = decodeJwt(token).iss;
      return this.providers.some((p) => p.issuer === issuer);
    } catch {
      return false;
    }
  }

  /** The identity for a CI token, or null if it is not one or does not verify. */
  async verify(token: string): Promise<string | null> {
    if (this.providers.length === 0 || token.length > MAX_TOKEN || !JWT_SHAPE.test(token)) return null;
    let issuer: unknown;
    try {
      issuer = decodeJwt(token).iss;
    } catch {
      return null;
    }
    for (const provider of this.providers) {
      if (provider.issuer !== issuer) continue;
      let payload: JWTPayload;
      try {
        const keys = await this.#keySet(provider);
        ({ payload } = await jwtVerify(token, keys, {
          issuer: provider.issuer,
          audience: provider.audience,
          algorithms: ALGORITHMS,
          clockTolerance: 60,
          currentDate: new Date(this.now()),
          requiredClaims: ["exp"],
        }));
      } catch {
        return null;
      }
      if (claimsMatch(payload, provider.claims)) return provider.identity;
    }
    return null;
  }

  #keySet(provider: OidcProvider): Promise<KeySet> {
    const key = `${provider.issuer}\n${provider.jwksUrl ?? ""}`;
    let found = this.#keySets.get(key);
    if (!found) {
      found = resolveJwksUrl(provider).then((url) => createRemoteJWKSet(new URL(url)));
      // A failed discovery is retried on the next token rather than remembered.
      found.catch(() => this.#keySets.delete(key));
      this.#keySets.set(key, found);
    }
    return found;
  }
}

async function resolveJwksUrl(provider: OidcProvider): Promise<string> {
  if (provider.jwksUrl) return provider.jwksUrl;
  const res = await fetch(`${provider.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`OpenID discovery for ${provider.issuer} answered ${res.status}`);
  return discovery.parse(await res.json()).jwks_uri;
}

export function claimsMatch(payload: JWTPayload, conditions: Record<string, string>): boolean {
  return Object.entries(conditions).every(([name, glob]) => {
    const value = payload[name];
    const text = typeof value === "string" ? value : typeof value === "number" || typeof value === "boolean" ? String(value) : null;
    // "**" so that a condition can span "/" (e.g. ref: refs/heads/**).
    return text !== null && globToRegExp(glob).test(text);
  });
}
