import type { App } from "../app.ts";
import { handleJwks, handleTokenRequest } from "../auth/token-service.ts";
import { RegistryError } from "../registry/errors.ts";
import { getBlob, getManifest, listTags, readOnly } from "./registry-api.ts";
import { errorResponse, jsonResponse } from "./responses.ts";
import { matchRoute, type Route } from "./routes.ts";

/** What the runtime knows of the connection (optional, so in-process callers can pass nothing). */
export type PeerInfo = { remoteAddress?: string | null };

export type FetchHandler = (request: Request, peer?: PeerInfo) => Promise<Response>;

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * The whole server as one fetch handler (Request -> Response), so it runs
 * unchanged under Deno.serve and @hono/node-server. Every failure becomes an
 * OCI JSON error; nothing ever answers HTML.
 */
export function createHandler(app: App): FetchHandler {
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
      response = await dispatch(app, route, request, url, log, who, peer?.remoteAddress ?? null);
    } catch (err) {
      const error = err instanceof RegistryError
        ? err
        : new RegistryError("UNAVAILABLE", "internal error: see the Stowage log for this request id", {
          status: 500,
          detail: { requestId },
        });
      if (!(err instanceof RegistryError) || error.status >= 500) {
        log.error("request failed", { method: request.method, path: url.pathname, error: err });
      }
      response = errorResponse(error, request.method);
    }
    response.headers.set("x-request-id", requestId);
    app.metrics.requests.inc({ route: route.kind, method: request.method, status: String(response.status) });
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
async function dispatch(app: App, route: Route, request: Request, url: URL, log: App["log"], who: { user?: string }, client: string | null): Promise<Response> {
  const method = request.method;
  const readable = method === "GET" || method === "HEAD";
  // Access control (when on) comes before anything else, so a refused client learns nothing about the content.
  if (app.access && (route.kind === "base" || route.kind === "manifest" || route.kind === "blob" || route.kind === "tags")) {
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
      throw new RegistryError("UNSUPPORTED", "the referrers API is not supported by this cache", { status: 404 });
    case "catalog":
      throw new RegistryError("UNSUPPORTED", "the catalog is not available through a pull-through cache", { status: 404 });
    case "healthz":
      return jsonResponse({ status: "ok" }, 200, method);
    case "metrics": {
      const body = app.metrics.registry.render();
      return new Response(method === "HEAD" ? null : body, {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    case "readyz":
      return readiness(app, method);
    case "token":
      if (!app.access) throw tokensOff(url);
      return handleTokenRequest(app.access, request, url, log, client);
    case "jwks":
      if (!app.access) throw tokensOff(url);
      if (!readable) throw readOnly(method);
      return handleJwks(app.access);
    case "not-found":
      throw new RegistryError("UNSUPPORTED", `no such endpoint: ${url.pathname}`, { status: 404 });
  }
}

function tokensOff(url: URL): RegistryError {
  return new RegistryError("UNSUPPORTED", `${url.pathname}: access control is off, so this Stowage issues no tokens (pulls are anonymous)`, { status: 404 });
}

async function readiness(app: App, method: string): Promise<Response> {
  const checks: Record<string, string> = {};
  let ok = true;
  for (const [name, check] of [["kv", () => app.kv.ping()], ["store", () => app.store.check()]] as const) {
    try {
      await check();
      checks[name] = "ok";
    } catch (err) {
      ok = false;
      checks[name] = err instanceof Error ? err.message : String(err);
    }
  }
  return jsonResponse({ status: ok ? "ready" : "not ready", checks }, ok ? 200 : 503, method);
}
