/**
 * Access control as a whole: who may pull which repository (rules), and the
 * check every registry request passes when access control is on.
 */
import type { AccessConfig, Upstream } from "../config.ts";
import { resolveTarget } from "../http/target.ts";
import type { TypedKv } from "../kv/kv.ts";
import { formatBearerChallenge } from "../registry/challenge.ts";
import { RegistryError } from "../registry/errors.ts";
import { readAuthorization } from "./credentials.ts";
import { type Identity, IdentityStore } from "./identities.ts";
import { CLOCK_SKEW_SECONDS, issueToken, type Issued, verifyToken } from "./jwt.ts";
import { KeyRing } from "./keys.ts";
import { OidcVerifier } from "./oidc.ts";
import { RefreshTokens } from "./refresh.ts";
import { ANONYMOUS, mayPull, type Principal } from "./rules.ts";
import type { Scope } from "./scopes.ts";

export type AccessDeps = {
  access: AccessConfig;
  upstreams: readonly Upstream[];
  defaultUpstream: string;
  publicUrl: string | null;
  kv: TypedKv;
  now?: () => number;
};

export class AccessControl {
  readonly config: AccessConfig;
  readonly keys: KeyRing;
  readonly identities: IdentityStore;
  readonly refreshTokens: RefreshTokens;
  readonly oidc: OidcVerifier;
  readonly now: () => number;

  constructor(private readonly deps: AccessDeps) {
    this.config = deps.access;
    this.now = deps.now ?? Date.now;
    this.keys = new KeyRing(deps.kv, (deps.access.tokenTtlSeconds + CLOCK_SKEW_SECONDS) * 1000, this.now);
    this.identities = new IdentityStore(deps.access.identities);
    this.refreshTokens = new RefreshTokens(deps.kv, this.now);
    this.oidc = new OidcVerifier(deps.access.oidc, this.now);
  }

  /** A user or robot by name and secret, or a CI job by its OIDC token as the password (any username). */
  async authenticate(username: string, password: string): Promise<Identity | null> {
    // Bounded: bcrypt reads only 72 bytes anyway, and hashing megabytes would be a cheap attack.
    if (username.length > 256 || password.length > 16 * 1024) return null;
    const known = password.length <= 1024 ? await this.identities.verify(username, password) : null;
    if (known) return known;
    const ci = await this.oidc.verify(password);
    return ci === null ? null : { subject: ci, kind: "oidc" };
  }

  /** Whether a token's subject still names a configured identity. */
  knows(subject: string): boolean {
    return this.identities.has(subject) || this.oidc.identities().includes(subject);
  }

  /** Token endpoint URL, as clients must reach it. */
  realm(url: URL): string {
    return `${this.deps.publicUrl ?? url.origin}/token`;
  }

  challenge(url: URL, name: string | null): string {
    const params: Record<string, string> = { realm: this.realm(url), service: this.config.service };
    if (name !== null) params.scope = `repository:${name}:pull`;
    return formatBearerChallenge(params);
  }

  /** The part of the requested scopes this principal may have: repository pull only, as the rules allow. */
  grant(who: Principal, requested: readonly Scope[]): Scope[] {
    const granted: Scope[] = [];
    for (const scope of requested) {
      if (!scope.type.startsWith("repository")) continue;
      if (!scope.actions.includes("pull") && !scope.actions.includes("*")) continue;
      if (this.allowed(who, scope.name, null)) granted.push({ type: "repository", name: scope.name, actions: ["pull"] });
    }
    return granted;
  }

  async issue(who: Principal, requested: readonly Scope[]): Promise<Issued & { access: Scope[] }> {
    const access = this.grant(who, requested);
    const issued = await issueToken({
      keys: this.keys,
      issuer: this.config.issuer,
      audience: this.config.service,
      subject: who.kind === "anonymous" ? ANONYMOUS : who.subject,
      access,
      ttlSeconds: this.config.tokenTtlSeconds,
      now: this.now,
    });
    return { ...issued, access };
  }

  /**
   * Throws a 401 RegistryError (with a Bearer challenge) unless the request
   * carries a valid token for pulling `name` (null: the /v2/ base, any valid token),
   * or Basic credentials of an identity the rules let pull it. Returns who it is.
   */
  async authorize(request: Request, url: URL, name: string | null): Promise<string> {
    const refuse = (message: string) =>
      new RegistryError("UNAUTHORIZED", message, { headers: { "www-authenticate": this.challenge(url, name) } });
    const presented = readAuthorization(request.headers.get("authorization"));
    const what = name === null ? "this registry" : `repository ${name}`;
    if (presented.kind === "none") {
      throw refuse(`authentication required for ${what}: get a token from ${this.realm(url)}`);
    }
    if (presented.kind === "invalid") throw refuse(presented.reason);
    if (presented.kind === "basic") {
      // Clients configured with credentials in a URL (a distribution proxy's remoteurl) send Basic on
      // every request; a 200 to their /v2/ ping tells them no token dance is needed.
      const identity = await this.authenticate(presented.username, presented.password);
      if (!identity) throw refuse("invalid username or password");
      if (name !== null && !this.allowed({ kind: "identity", subject: identity.subject }, name, url.searchParams.get("ns"))) {
        throw refuse(`${identity.subject} has no pull access to repository ${name}`);
      }
      return identity.subject;
    }
    const verified = await verifyToken(presented.token, {
      keys: this.keys,
      issuer: this.config.issuer,
      audience: this.config.service,
      now: this.now,
    });
    if (!verified.ok) throw refuse(verified.reason);
    const { sub, access } = verified.claims;
    const who: Principal = sub === ANONYMOUS ? { kind: "anonymous" } : { kind: "identity", subject: sub };
    if (who.kind === "identity" && !this.knows(who.subject)) {
      throw refuse(`the token's identity ${JSON.stringify(sub)} no longer exists; sign in again`);
    }
    if (name === null) return sub;
    const granted = access.some((a) => a.type === "repository" && a.name === name && (a.actions.includes("pull") || a.actions.includes("*")));
    // Rules are checked again on the repository actually served (mirror requests name it with ?ns=), so a
    // token for a name under one upstream never opens the same name under another, and rule changes apply at once.
    if (!granted || !this.allowed(who, name, url.searchParams.get("ns"))) {
      throw refuse(who.kind === "anonymous" ? this.anonymousDenied(name, url) : `${sub} has no pull access to repository ${name}`);
    }
    return sub;
  }

  allowed(who: Principal, name: string, ns: string | null): boolean {
    let target;
    try {
      target = resolveTarget(this.deps.upstreams, this.deps.defaultUpstream, name, ns);
    } catch {
      return false;
    }
    return mayPull(this.config.rules, who, target.upstream.name, target.repo);
  }

  anonymousDenied(name: string, url: URL): string {
    const host = this.deps.publicUrl ? new URL(this.deps.publicUrl).host : url.host;
    return (
      `repository ${name} needs credentials, and the client sent none: log in to ${host}` +
      ` (containerd and BuildKit look up credentials by the exact host:port of the image reference, here ${host})`
    );
  }
}
