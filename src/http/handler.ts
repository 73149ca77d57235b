import type { App } from "./app.ts";
import { AdminPage } from "../admin/admin-page.ts";
import { handleJwks, handleTokenRequest } from "../auth/token-service.ts";
import { ANONYMOUS } from "../auth/rules.ts";
import type { Logger } from "../log.ts";
import { methodLabel, statusLabel } from "../metrics/labels.ts";
import { RegistryError } from "../registry/errors.ts";
import { clientFacingError, describeError } from "./failures.ts";
import { getBlob, getManifest, getReferrers, listTags, readOnly } from "./registry-api.ts";
import { errorResponse, jsonResponse } from "./responses.ts";
import { matchRoute, type Route } from "./routes.ts";

/** What the runtime knows of the connection (optional, so in-process callers can pass nothing). */
export type PeerInfo = { remoteAddress?: string | null };

export type FetchHandler = (request: Request, peer?: PeerInfo) => Promise<Response>;

/** Which listener a handler serves: the registry (--listen) or --metrics-listen (/metrics and /healthz only). */
export type Listener = "public" | "metrics";

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * The whole server as one fetch handler (Request -> Response), so it runs
 * unchanged under Deno.serve and @hono/node-server. Every failure of the registry
 * API becomes an OCI JSON error; only the operator's page under /-/ answers HTML.
 */
export function createHandler(app: App, listener: Listener = "public"): FetchHandler {
  const admin = listener === "public" ? new AdminPage(app) : null;
  return async (request, peer) => {
    const given = request.headers.get("x-request-id");
    const requestId = given && REQUEST_ID.test(given) ? given : crypto.randomUUID();
    const log = app.log.child({ requestId });
    const url = new URL(request.url);
    const started = Date.now();
    let response: Response;
    const who: { user?: string } = {};
    const route = matchRoute(url.pathname);
    try {
      response = listener === "metrics"
        ? await dispatchMetricsListener(app, route, request.method, url)
        : await dispatch(app, route, request, url, log, who, requestId, peer?.remoteAddress ?? null, admin);
    } catch (err) {
      response = errorResponse(clientFacingError(err, requestId, log, { method: request.method, path: url.pathname }), request.method);
    }
    response.headers.set("x-request-id", requestId);
    app.metrics.requests.inc({ route: route.kind, method: methodLabel(request.method), status: statusLabel(response.status) });
    log.info("request", {
      method: request.method,
      path: url.pathname,
      status: response.status,
      user: who.user,
      cache: response.headers.get("x-stowage-cache") ?? undefined,
      ms: Date.now() - started,
    });
    return response;
  };
}

/** `client`: the peer's address, which failed sign-ins are throttled by (null: unknown). */
async function dispatch(
  app: App,
  route: Route,
  request: Request,
  url: URL,
  log: App["log"],
  who: { user?: string },
  requestId: string,
  client: string | null,
  admin: AdminPage | null,
): Promise<Response> {
  const method = request.method;
  const readable = method === "GET" || method === "HEAD";
  // Access control (when on) comes before anything else, so a refused client learns nothing about the content.
  // Referrers are read like the manifests they list: the same pull right on the repository.
  if (app.access && (route.kind === "base" || route.kind === "manifest" || route.kind === "blob" || route.kind === "tags" || route.kind === "referrers")) {
    who.user = await app.access.authorize(request, url, route.kind === "base" ? null : route.name, client);
  }
  switch (route.kind) {
    case "base":
      if (!readable) throw readOnly(method);
      return jsonResponse({}, 200, method);
    case "manifest":
      if (!readable) throw readOnly(method);
      return getManifest(app, route.name, route.reference, method, url, log);
    case "blob":
      if (!readable) throw readOnly(method);
      return getBlob(app, route.name, route.digest, method, request, url, log);
    case "blob-upload":
      throw readOnly(method);
    case "tags":
      if (method !== "GET") throw readOnly(method);
      return listTags(app, route.name, url, log);
    case "referrers":
      if (!readable) throw readOnly(method);
      return getReferrers(app, route.name, route.digest, method, url, log);
    case "catalog":
      throw new RegistryError("UNSUPPORTED", "the catalog is not available through a pull-through cache", { status: 404 });
    case "healthz":
      return jsonResponse({ status: "ok" }, 200, method);
    case "metrics":
      // With --metrics-listen, the public listener has no /metrics at all.
      if (app.settings.separateMetricsListener) throw noSuchEndpoint(url);
      if (app.access) who.user = await authorizeMetrics(app.access, request, url, client);
      return metricsResponse(app, method);
    case "readyz":
      return readiness(app, method, log, requestId);
    case "token":
      if (!app.access) throw tokensOff(url);
      return handleTokenRequest(app.access, request, url, log, client);
    case "jwks":
      if (!app.access) throw tokensOff(url);
      if (!readable) throw readOnly(method);
      return handleJwks(app.access);
    case "admin": {
      // The page decides its own access (admins, loopback, --admin-page) and answers its failures in HTML.
      if (!admin) throw noSuchEndpoint(url);
      const answer = await admin.handle(request, url, client, log, requestId);
      if (answer.identity !== null) who.user = answer.identity;
      return answer.response;
    }
    case "not-found":
      throw noSuchEndpoint(url);
  }
}

/** The --metrics-listen listener: /metrics and /healthz, nothing of the registry. */
async function dispatchMetricsListener(app: App, route: Route, method: string, url: URL): Promise<Response> {
  if (route.kind === "metrics") return metricsResponse(app, method);
  if (route.kind === "healthz") return jsonResponse({ status: "ok" }, 200, method);
  throw new RegistryError("UNSUPPORTED", `no such endpoint on the metrics listener: ${url.pathname} (it serves /metrics and /healthz)`, { status: 404 });
}

function metricsResponse(app: App, method: string): Response {
  const body = app.metrics.registry.render();
  return new Response(method === "HEAD" ? null : body, {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
  });
}

/** /metrics on the public listener with access control on: a known identity (Basic login or its token), never anonymous. */
async function authorizeMetrics(access: NonNullable<App["access"]>, request: Request, url: URL, client: string | null): Promise<string> {
  const user = await access.authorize(request, url, null, client);
  if (user === ANONYMOUS) {
    throw new RegistryError("UNAUTHORIZED", "/metrics needs the credentials of a user or robot (Basic login or a token issued for one), not an anonymous token", {
      headers: { "www-authenticate": access.challenge(url, null) },
    });
  }
  return user;
}

function noSuchEndpoint(url: URL): RegistryError {
  return new RegistryError("UNSUPPORTED", `no such endpoint: ${url.pathname}`, { status: 404 });
}

function tokensOff(url: URL): RegistryError {
  return new RegistryError("UNSUPPORTED", `${url.pathname}: access control is off, so this Stowage issues no tokens (pulls are anonymous)`, { status: 404 });
}

/** Says which check failed, never how: the error (paths, endpoints) goes to the log with the request id. */
async function readiness(app: App, method: string, log: Logger, requestId: string): Promise<Response> {
  const checks: Record<string, string> = {};
  let ok = true;
  for (const [name, check] of [["kv", () => app.kv.ping()], ["store", () => app.store.check()]] as const) {
    try {
      await check();
      checks[name] = "ok";
    } catch (err) {
      ok = false;
      checks[name] = `failing (request id ${requestId}; the Stowage log has the detail)`;
      log.warn("readiness check failed", { check: name, error: describeError(err) });
    }
  }
  return jsonResponse({ status: ok ? "ready" : "not ready", checks, ...(ok ? {} : { requestId }) }, ok ? 200 : 503, method);
}
