/**
 * Registry bearer tokens (Docker token auth): issue and verify with jose.
 * Only the algorithm we sign with is ever accepted, so `alg: none` and
 * HS256-keyed-with-the-public-key tokens fail before any claim is read.
 */
import { errors, jwtVerify, SignJWT } from "jose";
import { z } from "zod";
import { type KeyRing, SIGNING_ALG } from "./keys.ts";
import type { Scope } from "./scopes.ts";

export const CLOCK_SKEW_SECONDS = 60;

export type TokenClaims = { sub: string; access: Scope[]; jti: string; exp: number; iat: number };

export type Issued = { token: string; expiresIn: number; issuedAt: string };

export type VerifyOptions = {
  keys: KeyRing;
  issuer: string;
  audience: string;
  /**
   * The configured token lifetime. We never issue longer-lived tokens, so a longer one was signed
   * by someone holding our key outside of /token (a leaked key must not mint tokens for a year).
   */
  maxLifetimeSeconds: number;
  now?: () => number;
};

export type Verified = { ok: true; claims: TokenClaims } | { ok: false; reason: string };

const claimsSchema = z.object({
  sub: z.string(),
  jti: z.string(),
  exp: z.number(),
  iat: z.number(),
  access: z.array(z.object({ type: z.string(), name: z.string(), actions: z.array(z.string()) })),
});

export async function issueToken(opts: {
  keys: KeyRing;
  issuer: string;
  audience: string;
  subject: string;
  access: Scope[];
  ttlSeconds: number;
  now?: () => number;
}): Promise<Issued> {
  const { kid, key } = await opts.keys.signingKey();
  const nowMs = (opts.now ?? Date.now)();
  const iat = Math.floor(nowMs / 1000);
  const token = await new SignJWT({ access: opts.access })
    .setProtectedHeader({ alg: SIGNING_ALG, kid, typ: "JWT" })
    .setIssuer(opts.issuer)
    .setSubject(opts.subject)
    // A string, not an array: distribution and others compare it as one.
    .setAudience(opts.audience)
    .setIssuedAt(iat)
    .setNotBefore(iat)
    .setExpirationTime(iat + opts.ttlSeconds)
    .setJti(crypto.randomUUID())
    .sign(key);
  return { token, expiresIn: opts.ttlSeconds, issuedAt: new Date(iat * 1000).toISOString() };
}

class RetiredKey extends Error {}
class UnknownKey extends Error {}

export async function verifyToken(token: string, opts: VerifyOptions): Promise<Verified> {
  const now = (opts.now ?? Date.now)();
  try {
    const { payload } = await jwtVerify(
      token,
      async (header) => {
        if (typeof header.kid !== "string") throw new UnknownKey();
        const found = await opts.keys.verificationKey(header.kid);
        if (!found) throw new UnknownKey();
        if (opts.keys.expired(found.retiredAt)) throw new RetiredKey();
        return found.key;
      },
      {
        algorithms: [SIGNING_ALG],
        issuer: opts.issuer,
        audience: opts.audience,
        clockTolerance: CLOCK_SKEW_SECONDS,
        currentDate: new Date(now),
        requiredClaims: ["exp", "iat", "sub", "jti"],
      },
    );
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) return { ok: false, reason: "the token's claims are malformed" };
    // From issue to expiry, and from now to expiry: a token back-dated to look short-lived still
    // cannot outlive the configured lifetime from now on.
    const { iat, exp } = claims.data;
    const lifetime = Math.max(exp - iat, exp - Math.floor(now / 1000));
    if (lifetime > opts.maxLifetimeSeconds + CLOCK_SKEW_SECONDS) {
      return { ok: false, reason: `the token's lifetime (${lifetime} s) exceeds this Stowage's token lifetime (${opts.maxLifetimeSeconds} s); request a new token` };
    }
    return { ok: true, claims: claims.data };
  } catch (err) {
    return { ok: false, reason: reasonFor(err) };
  }
}

function reasonFor(err: unknown): string {
  if (err instanceof RetiredKey) return "the token was signed by a retired key; request a new token";
  if (err instanceof UnknownKey) return "the token was not signed by this Stowage (unknown key); request a new token";
  if (err instanceof errors.JWTExpired) return "the token has expired; request a new token";
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === "aud") return "the token is for another service";
    if (err.claim === "iss") return "the token was issued by someone else";
    if (err.claim === "iat" && err.reason === "missing") return "the token has no iat (issued-at) claim";
    if (err.claim === "nbf" || err.claim === "iat") return "the token is not valid yet (check the clocks)";
    return `the token's ${err.claim} claim is invalid`;
  }
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return `the token is not signed with ${SIGNING_ALG}`;
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return "the token's signature is invalid";
  return "the token is malformed";
}
