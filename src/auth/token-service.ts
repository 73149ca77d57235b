/**
 * The token endpoint (Docker v2 token auth): GET with optional Basic
 * credentials, and the OAuth2 POST form with password and refresh_token
 * grants. Identity comes only from credentials, never from `account`.
 */
import type { Logger } from "../log.ts";
import { type AccessControl, LoginThrottled } from "./access.ts";
import { readAuthorization } from "./credentials.ts";
import type { Identity } from "./identities.ts";
import type { Principal } from "./rules.ts";
import { formatScope, parseScopes, type Scope } from "./scopes.ts";
import { jsonResponse } from "../util/json-response.ts";
import { readLimited } from "../util/streams.ts";

const MAX_FORM_BYTES = 64 * 1024;

/** What the audit log says about one token request; never a secret. */
type Audit = { method: string; via: string; subject?: string; account?: string; client?: string; address?: string; ns?: string; requested: string[]; granted?: string[] };

class TokenError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * `client`: the peer address, for throttling failed sign-ins (null when unknown). A `?ns=` in the
 * URL (carried over from a mirror request's challenge realm, for GET and POST alike) makes scopes
 * resolve against the upstream with that host.
 */
export async function handleTokenRequest(ac: AccessControl, request: Request, url: URL, log: Logger, client: string | null = null): Promise<Response> {
  const audit: Audit = { method: request.method, via: "anonymous", requested: [] };
  if (client !== null) audit.address = client;
  const ns = url.searchParams.get("ns");
  if (ns !== null) audit.ns = ns.slice(0, 256);
  const ctx: Ctx = { ac, client, ns, audit };
  try {
    let response: Response;
    if (request.method === "GET") response = await tokenGet(ctx, request, url);
    else if (request.method === "POST") response = await tokenPost(ctx, request);
    else throw new TokenError(405, "invalid_request", `${request.method} is not supported here; use GET or POST`);
    log.info("token issued", { ...audit });
    return response;
  } catch (err) {
    if (!(err instanceof TokenError)) throw err;
    log.warn("token refused", { ...audit, status: err.status, reason: err.message });
    return errorJson(err);
  }
}

export async function handleJwks(ac: AccessControl): Promise<Response> {
  return jsonResponse(await ac.keys.jwks(), { headers: { "cache-control": "max-age=60" } });
}

type Ctx = { ac: AccessControl; client: string | null; ns: string | null; audit: Audit };

async function tokenGet(ctx: Ctx, request: Request, url: URL): Promise<Response> {
  const { ac, audit } = ctx;
  const account = url.searchParams.get("account");
  if (account !== null) audit.account = account.slice(0, 128);
  const client = url.searchParams.get("client_id");
  if (client !== null) audit.client = client.slice(0, 128);
  audit.requested = url.searchParams.getAll("scope").map((s) => s.slice(0, 300));
  checkService(ac, url.searchParams.get("service"));
  const scopes = scopesOf(url.searchParams.getAll("scope"));
  const presented = readAuthorization(request.headers.get("authorization"));
  let who: Principal = { kind: "anonymous" };
  let identity: Identity | null = null;
  if (presented.kind === "invalid") throw new TokenError(401, "invalid_client", presented.reason);
  if (presented.kind === "bearer") throw new TokenError(401, "invalid_client", "send Basic credentials (or none) to the token endpoint, not a bearer token");
  if (presented.kind === "basic") {
    audit.via = "basic";
    identity = await signIn(ctx, presented.username, presented.password);
    who = { kind: "identity", subject: identity.subject };
  }
  const offline = url.searchParams.get("offline_token") === "true";
  audit.subject = who.kind === "anonymous" ? "anonymous" : who.subject;
  return answer(ctx, who, scopes, offline && identity ? identity : null);
}

async function tokenPost(ctx: Ctx, request: Request): Promise<Response> {
  const { ac, audit } = ctx;
  const type = (request.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    throw new TokenError(400, "invalid_request", "POST a form (application/x-www-form-urlencoded)");
  }
  const form = new URLSearchParams(await readForm(request, MAX_FORM_BYTES));
  const client = form.get("client_id");
  if (client !== null) audit.client = client.slice(0, 128);
  audit.requested = form.getAll("scope").map((s) => s.slice(0, 300));
  checkService(ac, form.get("service"));
  const scopes = scopesOf(form.getAll("scope"));
  const grant = form.get("grant_type");
  audit.via = (grant ?? "").slice(0, 40);
  let identity: Identity;
  if (grant === "password") {
    const username = form.get("username");
    const password = form.get("password");
    if (!username || password === null) throw new TokenError(400, "invalid_request", "grant_type=password needs username and password");
    identity = await signIn(ctx, username, password);
  } else if (grant === "refresh_token") {
    const token = form.get("refresh_token");
    if (!token) throw new TokenError(400, "invalid_request", "grant_type=refresh_token needs refresh_token");
    const owner = await ac.refreshTokens.lookup(token);
    if (!owner || !ac.knows(owner.subject)) {
      throw new TokenError(401, "invalid_grant", "the refresh token is unknown, expired or revoked; sign in again with a username and password");
    }
    identity = owner;
  } else {
    throw new TokenError(400, "unsupported_grant_type", `grant_type ${JSON.stringify(grant ?? "")} is not supported; use password or refresh_token`);
  }
  const offline = form.get("access_type") === "offline";
  audit.subject = identity.subject;
  return answer(ctx, { kind: "identity", subject: identity.subject }, scopes, offline ? identity : null);
}

async function answer({ ac, ns, audit }: Ctx, who: Principal, scopes: Scope[], offlineFor: Identity | null): Promise<Response> {
  const issued = await ac.issue(who, scopes, ns);
  audit.granted = issued.access.map(formatScope);
  const body: Record<string, unknown> = {
    token: issued.token,
    access_token: issued.token,
    expires_in: issued.expiresIn,
    issued_at: issued.issuedAt,
  };
  // CI tokens are short-lived on purpose; a refresh token would outlive them.
  if (offlineFor && offlineFor.kind !== "oidc") body.refresh_token = await ac.refreshTokens.create({ subject: offlineFor.subject, kind: offlineFor.kind });
  return jsonResponse(body, { headers: { "cache-control": "no-store" } });
}

async function signIn({ ac, client }: Ctx, username: string, password: string): Promise<Identity> {
  let identity: Identity | null;
  try {
    identity = await ac.authenticate(username, password, client);
  } catch (err) {
    if (!(err instanceof LoginThrottled)) throw err;
    throw new TokenError(429, "too_many_requests", err.message, { "retry-after": String(err.retryAfterSeconds) });
  }
  if (!identity) throw new TokenError(401, "invalid_grant", "invalid username or password");
  return identity;
}

function checkService(ac: AccessControl, service: string | null): void {
  if (service !== null && service !== ac.config.service) {
    throw new TokenError(400, "invalid_request", `this token service is ${JSON.stringify(ac.config.service)}, not ${JSON.stringify(service.slice(0, 100))}`);
  }
}

function scopesOf(values: string[]): Scope[] {
  const parsed = parseScopes(values);
  const bad = parsed.invalid[0];
  if (bad !== undefined) throw new TokenError(400, "invalid_scope", `invalid scope ${JSON.stringify(bad)} (expected repository:NAME:pull)`);
  return parsed.scopes;
}

async function readForm(request: Request, limit: number): Promise<string> {
  const bytes = await readLimited(request, limit);
  if (bytes === null) throw new TokenError(413, "invalid_request", `the form is larger than ${limit} bytes`);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new TokenError(400, "invalid_request", "the form is not valid UTF-8");
  }
}

/** OAuth2-style fields for OAuth clients, and the registry `errors` list for Docker-style clients. */
function errorJson(err: TokenError): Response {
  const code = err.status === 401 ? "UNAUTHORIZED" : err.status === 429 ? "TOOMANYREQUESTS" : "UNSUPPORTED";
  return jsonResponse(
    { error: err.error, error_description: err.message, errors: [{ code, message: err.message }] },
    { status: err.status, headers: { ...(err.status === 401 ? { "www-authenticate": 'Basic realm="stowage"' } : {}), ...err.headers } },
  );
}
