/**
 * Access control as a whole: who may pull which repository (rules), and the
 * check every registry request passes when access control is on.
 */
import type { Upstream } from "../upstream/upstream.ts";
import type { AccessConfig } from "./access-config.ts";
import { mirroredUpstream, resolveTarget } from "../upstream/target.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import { formatBearerChallenge } from "../registry/challenge.ts";
import { RegistryError } from "../registry/errors.ts";
import { readAuthorization } from "./credentials.ts";
import { type Identity, IdentityStore } from "./identities.ts";
import { CLOCK_SKEW_SECONDS, issueToken, type Issued, verifyToken } from "./jwt.ts";
import { KeyRing } from "./keys.ts";
import { LoginThrottle } from "./login-throttle.ts";
import { OidcVerifier } from "./oidc.ts";
import { PasswordChecks, PasswordChecksBusy } from "./password-checks.ts";
import { RefreshTokens } from "./refresh.ts";
import { ANONYMOUS, mayPull, type Principal } from "./rules.ts";
import type { Scope } from "./scopes.ts";
import { sleep } from "../util/deadline.ts";

export type AccessDeps = {
  access: AccessConfig;
  upstreams: readonly Upstream[];
  defaultUpstream: string;
  publicUrl: string | null;
  kv: TypedKv;
  /** Where bcrypt runs (startPasswordChecks); on the main thread, one at a time, if not given. */
  passwords?: PasswordChecks;
  throttle?: LoginThrottle;
  /** Where blocked addresses and names are reported (once per block). */
  log?: Logger;
  /** How long a throttled sign-in's refusal is held at most (default HOLD_REFUSAL_MS). */
  holdRefusalMs?: number;
  now?: () => number;
};

/**
 * A refusal for too many failures is answered after a pause (at most its Retry-After): a client
 * that hammers on regardless then gets about one answer a second per connection, instead of
 * keeping the event loop busy with thousands of instant 429s.
 */
export const HOLD_REFUSAL_MS = 1000;
/** Refusals held at once; beyond this they are answered at once (each held one costs a timer and a socket). */
const MAX_HELD_REFUSALS = 10_000;

/** A sign-in refused before any password check: too many failures, or too many checks waiting. */
export class LoginThrottled extends Error {
  override name = "LoginThrottled";
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
  ) {
    super(message);
  }
}

export class AccessControl {
  readonly config: AccessConfig;
  readonly keys: KeyRing;
  readonly identities: IdentityStore;
  readonly refreshTokens: RefreshTokens;
  readonly oidc: OidcVerifier;
  readonly throttle: LoginThrottle;
  readonly passwords: PasswordChecks;
  readonly now: () => number;
  #held = 0;

  constructor(private readonly deps: AccessDeps) {
    this.config = deps.access;
    this.now = deps.now ?? Date.now;
    this.keys = new KeyRing(deps.kv, (deps.access.tokenTtlSeconds + CLOCK_SKEW_SECONDS) * 1000, this.now);
    this.passwords = deps.passwords ?? PasswordChecks.inline();
    this.identities = new IdentityStore(deps.access.identities, this.passwords);
    this.throttle = deps.throttle ?? new LoginThrottle(undefined, this.now);
    this.refreshTokens = new RefreshTokens(deps.kv, this.now);
    this.oidc = new OidcVerifier(deps.access.oidc, this.now);
  }

  /**
   * A user or robot by name and secret, or a CI job by its OIDC token as the password (any username).
   * `client`: the peer address, for throttling failures (null when unknown). Throws LoginThrottled
   * instead of checking anything when this address or name failed too often, or too many checks wait.
   */
  async authenticate(username: string, password: string, client: string | null = null): Promise<Identity | null> {
    // A CI token is checked by signature alone (its username is arbitrary, and shared by every job):
    // it cannot be guessed, so its failures count against the address only, and an attack under
    // the same username cannot lock CI runners out.
    const ci = this.oidc.isCiToken(password);
    const user = ci ? null : username.slice(0, 256);
    const refused = this.throttle.check(client, user);
    if (refused) {
      await this.#hold(refused.retryAfterSeconds * 1000);
      throw new LoginThrottled(refused.message, refused.retryAfterSeconds);
    }
    const leave = this.throttle.enter(client);
    if (!leave) {
      await this.#hold(1000);
      throw new LoginThrottled("too many sign-ins from this address are waiting for a password check; try again in a second", 1);
    }
    let identity: Identity | null;
    try {
      identity = await this.#check(username, password, ci);
    } catch (err) {
      if (!(err instanceof PasswordChecksBusy)) throw err;
      // At once for a client with nothing else waiting; held (with its slot) for one that keeps
      // adding to the queue, so a flood from one address gets about one answer a second per slot.
      if (this.throttle.inFlight(client) > 1) await this.#hold(1000);
      throw new LoginThrottled("too many sign-ins are waiting for a password check; try again in a second", 1);
    } finally {
      leave();
    }
    if (identity) this.throttle.succeeded(client, user);
    else {
      const reached = this.throttle.failed(client, user);
      const { perAddress, perUser, windowMs } = this.throttle.limits;
      const window = `${Math.round(windowMs / 1000)} s`;
      if (reached.address !== null) {
        this.deps.log?.warn(`too many failed sign-ins from one address: refusing its sign-ins, unchecked, until fewer than ${perAddress} failures fall within ${window}`, {
          address: reached.address,
        });
      }
      if (reached.user !== null) {
        this.deps.log?.warn(
          `too many failed sign-ins as one name: refusing it, unchecked, from addresses that have not signed in as it, until fewer than ${perUser} failures fall within ${window}`,
          { user: reached.user.slice(0, 128), address: client ?? undefined },
        );
      }
    }
    return identity;
  }

  async #check(username: string, password: string, ciToken: boolean): Promise<Identity | null> {
    // Bounded: bcrypt reads only 72 bytes anyway, and hashing megabytes would be a cheap attack.
    if (username.length > 256 || password.length > 16 * 1024) return null;
    if (!ciToken) return password.length <= 1024 ? await this.identities.verify(username, password) : null;
    const ci = await this.oidc.verify(password);
    return ci === null ? null : { subject: ci, kind: "oidc" };
  }

  async #hold(ms: number): Promise<void> {
    const wait = Math.min(ms, this.deps.holdRefusalMs ?? HOLD_REFUSAL_MS);
    if (wait <= 0 || this.#held >= MAX_HELD_REFUSALS) return;
    this.#held++;
    try {
      await sleep(wait);
    } finally {
      this.#held--;
    }
  }

  close(): Promise<void> {
    return this.passwords.close();
  }

  /** Whether a token's subject still names a configured identity. */
  knows(subject: string): boolean {
    return this.identities.has(subject) || this.oidc.identities().includes(subject);
  }

  /**
   * Token endpoint URL, as clients must reach it: from --public-url when set (else the request's
   * own origin, which its Host header decides). A mirror request's `?ns=` is carried over, so the
   * token service grants by the rules of the upstream that request is for (containerd and skopeo
   * keep the realm's query when they add theirs).
   */
  realm(url: URL): string {
    const base = `${this.deps.publicUrl ?? url.origin}/token`;
    const ns = this.#mirrored(url.searchParams.get("ns"));
    return ns === null ? base : `${base}?ns=${encodeURIComponent(ns)}`;
  }

  /** `ns` as one of our upstreams' hosts or names (never echo an arbitrary value into a challenge), else null. */
  #mirrored(ns: string | null): string | null {
    return ns !== null && mirroredUpstream(this.deps.upstreams, ns) ? ns.toLowerCase() : null;
  }

  challenge(url: URL, name: string | null): string {
    const params: Record<string, string> = { realm: this.realm(url), service: this.config.service };
    if (name !== null) params.scope = `repository:${name}:pull`;
    return formatBearerChallenge(params);
  }

  /**
   * The part of the requested scopes this principal may have: repository pull only, as the rules
   * allow on the upstream the names resolve to (`ns`: a mirror request's registry host).
   */
  grant(who: Principal, requested: readonly Scope[], ns: string | null = null): Scope[] {
    const granted: Scope[] = [];
    for (const scope of requested) {
      if (!scope.type.startsWith("repository")) continue;
      if (!scope.actions.includes("pull") && !scope.actions.includes("*")) continue;
      if (this.allowed(who, scope.name, ns)) granted.push({ type: "repository", name: scope.name, actions: ["pull"] });
    }
    return granted;
  }

  async issue(who: Principal, requested: readonly Scope[], ns: string | null = null): Promise<Issued & { access: Scope[] }> {
    const access = this.grant(who, requested, ns);
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
   * Failed Basic sign-ins are throttled per `client` address and user name (429 TOOMANYREQUESTS).
   */
  async authorize(request: Request, url: URL, name: string | null, client: string | null = null): Promise<string> {
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
      let identity: Identity | null;
      try {
        identity = await this.authenticate(presented.username, presented.password, client);
      } catch (err) {
        if (!(err instanceof LoginThrottled)) throw err;
        throw new RegistryError("TOOMANYREQUESTS", err.message, { status: 429, headers: { "retry-after": String(err.retryAfterSeconds) } });
      }
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
      maxLifetimeSeconds: this.config.tokenTtlSeconds,
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
