import type { Upstream } from "./upstream.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import { base64 } from "../util/encoding.ts";
import { within } from "../util/deadline.ts";
import { retryAfterSeconds } from "../util/http-headers.ts";
import { readLimited } from "../util/streams.ts";
import { parseWwwAuthenticate, type Challenge } from "../registry/challenge.ts";
import { MANIFEST_ACCEPT, OCI_INDEX } from "../registry/media-types.ts";
import type { Digest } from "../registry/reference.ts";
import { issuedToken } from "../registry/token-response.ts";
import { credentialsMayGo } from "./credential-policy.ts";
import { networkRefusal } from "./network-guard.ts";
import { redirectRefusal } from "./redirect-policy.ts";
import type { UpstreamTokenCache } from "./token-cache.ts";
import { Semaphore } from "./semaphore.ts";
import { releasingWhenDone } from "./slot-release.ts";
import { describeNetworkError, offlineError, UpstreamError } from "./upstream-error.ts";
import { UpstreamHealth, type UpstreamStatus } from "./upstream-health.ts";

/** Backoff after a 429 without a usable Retry-After, and the most we honour. */
const DEFAULT_BACKOFF_SECONDS = 60;
const MAX_BACKOFF_SECONDS = 3600;
/** Real token responses are a few KiB (Docker Hub's ~4); a bigger one is refused unread. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

/** One registry API request to this upstream, on behalf of a client's pull of `repo`. */
type UpstreamRequest = { method: "GET" | "HEAD"; path: string; repo: string; headers: Record<string, string>; log: Logger };

/** A successful upstream response whose body is still to be read, and the way to cut it off. */
export type UpstreamReply = { response: Response; abort(reason?: unknown): void };

export type UpstreamClientOptions = {
  tokens: UpstreamTokenCache;
  metrics: StowageMetrics;
  /** Requests in flight to this upstream at once; a body counts until it ends. */
  concurrency: number;
  timeoutMs: number;
  /** The runtime's upstream fetch (address policy, --resolve); tests inject failure modes with it. */
  fetch?: typeof fetch;
};

/**
 * Talks to one upstream registry: the token dance (anonymous or with the
 * configured credentials), redirects without leaking Authorization to other
 * hosts, timeouts, and a classification of every failure (UpstreamError).
 */
export class UpstreamClient {
  private scheme: "unknown" | "bearer" | "basic" | "none" = "unknown";
  private readonly fetch: typeof fetch;
  private readonly slots: Semaphore;
  /** After a 429, the upstream is left alone until this time (ms since epoch), as its Retry-After asked. */
  private blockedUntil = 0;

  private readonly origin: string;
  private readonly health = new UpstreamHealth();

  constructor(readonly upstream: Upstream, private readonly opts: UpstreamClientOptions) {
    this.fetch = opts.fetch ?? globalThis.fetch;
    this.slots = new Semaphore(opts.concurrency);
    this.origin = new URL(upstream.url).origin;
  }

  manifest(repo: string, reference: string, method: "GET" | "HEAD", log: Logger): Promise<UpstreamReply> {
    return this.send({ method, path: `/v2/${repo}/manifests/${reference}`, repo, headers: { accept: MANIFEST_ACCEPT }, log });
  }

  blob(repo: string, digest: Digest, method: "GET" | "HEAD", log: Logger, fromByte = 0): Promise<UpstreamReply> {
    const headers: Record<string, string> = {};
    if (fromByte > 0) headers.range = `bytes=${fromByte}-`;
    return this.send({ method, path: `/v2/${repo}/blobs/${digest}`, repo, headers, log });
  }

  tags(repo: string, query: string, log: Logger): Promise<UpstreamReply> {
    return this.send({ method: "GET", path: `/v2/${repo}/tags/list${query}`, repo, headers: { accept: "application/json" }, log });
  }

  /** OCI 1.1 referrers of `subject`, unfiltered (`query`: a next page's, from the upstream's Link). */
  referrers(repo: string, subject: Digest, query: string, log: Logger): Promise<UpstreamReply> {
    return this.send({ method: "GET", path: `/v2/${repo}/referrers/${subject}${query}`, repo, headers: { accept: OCI_INDEX }, log });
  }

  /**
   * Runs `read`, which consumes a small body (a manifest, a tag list, a token),
   * under the upstream timeout. The request's own timer stops at the response
   * headers, so a body that stalls half way would otherwise hang for ever, and
   * with it every client waiting on the same manifest.
   */
  readWithin<T>(reply: UpstreamReply, read: () => Promise<T>): Promise<T> {
    const expire = () => reply.abort(new UpstreamError("timeout", `upstream ${this.upstream.name} did not finish sending a response within ${this.opts.timeoutMs / 1000} s`));
    return within(this.opts.timeoutMs, expire, read);
  }

  status(): UpstreamStatus {
    return this.health.status();
  }

  private async send(req: UpstreamRequest): Promise<UpstreamReply> {
    // The one way out to the upstream (token requests go from here too): offline, nothing leaves.
    if (this.upstream.offline) throw offlineError(this.upstream.name);
    const waitSeconds = Math.ceil((this.blockedUntil - Date.now()) / 1000);
    if (waitSeconds > 0) {
      throw new UpstreamError(
        "rate-limited",
        `upstream ${this.upstream.name} answered 429; not contacting it for another ${waitSeconds} s (its Retry-After)`,
        { status: 429, retryAfterSeconds: waitSeconds },
      );
    }
    const slot = await this.slots.acquire();
    const over = this.health.started();
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      over();
      slot();
    };
    try {
      const reply = await this.exchange(req);
      this.health.answered();
      return { response: releasingWhenDone(reply.response, release), abort: reply.abort };
    } catch (err) {
      release();
      this.health.failed(err);
      throw err;
    }
  }

  private async exchange({ method, path, repo, headers: extraHeaders, log }: UpstreamRequest): Promise<UpstreamReply> {
    const scope = `repository:${repo}:pull`;
    const url = this.upstream.url + path;
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(extraHeaders);
      const authorization = await this.authorizationFor(scope);
      if (authorization) headers.set("authorization", authorization);
      const started = Date.now();
      const { response, abort, url: answeredBy } = await this.fetchFollowingRedirects(method, url, headers, this.origin);
      log.debug("upstream response", {
        upstream: this.upstream.name,
        method,
        path,
        status: response.status,
        ms: Date.now() - started,
      });
      if (response.status === 401 && answeredBy.origin !== this.origin) {
        // A CDN or storage host does not decide how we authenticate to the registry:
        // following its challenge would send a token request wherever it names.
        await response.body?.cancel().catch(() => {});
        throw new UpstreamError(
          "unauthorized",
          `upstream ${this.upstream.name} redirected ${method} ${path} to ${answeredBy.origin}, which answered 401; challenges are only followed from the upstream itself`,
          { status: 401 },
        );
      }
      if (response.status === 401 && attempt === 0) {
        await response.body?.cancel().catch(() => {});
        await this.opts.tokens.drop(this.upstream.name, scope);
        await this.authenticate(parseWwwAuthenticate(response.headers.get("www-authenticate") ?? ""), scope, log);
        continue;
      }
      if (response.ok) return { response, abort };
      await response.body?.cancel().catch(() => {});
      throw this.failureFor(response, method, path);
    }
  }

  private async authorizationFor(scope: string): Promise<string | null> {
    if (this.scheme === "bearer" || this.scheme === "unknown") {
      const token = await this.opts.tokens.get(this.upstream.name, scope);
      if (token) return `Bearer ${token}`;
    }
    if (this.scheme === "basic" && this.upstream.credentials) return basicAuth(this.upstream.credentials);
    return null;
  }

  private async authenticate(challenges: Challenge[], scope: string, log: Logger): Promise<void> {
    const bearer = challenges.find((c) => c.scheme === "bearer" && c.params.realm);
    if (bearer) {
      this.scheme = "bearer";
      await this.fetchToken(bearer.params, scope, log);
      return;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      if (!this.upstream.credentials) {
        throw new UpstreamError(
          "unauthorized",
          `upstream ${this.upstream.name} requires a username and password: set --upstream-credentials ${this.upstream.name}=USER:PASSWORD`,
          { status: 401 },
        );
      }
      this.scheme = "basic";
      return;
    }
    throw new UpstreamError("unauthorized", `upstream ${this.upstream.name} answered 401 without a usable challenge`, {
      status: 401,
    });
  }

  private async fetchToken(params: Record<string, string>, scope: string, log: Logger): Promise<void> {
    let realm: URL;
    try {
      realm = new URL(params.realm ?? "");
    } catch {
      throw new UpstreamError("bad-response", `upstream ${this.upstream.name} sent an invalid token realm`);
    }
    // The realm is where the upstream sends us: the same rules as for a redirect from it.
    const refusal = redirectRefusal(new URL(this.upstream.url), realm, 0);
    if (refusal) {
      throw new UpstreamError("bad-response", `upstream ${this.upstream.name} named a token realm that Stowage does not follow: ${refusal}`);
    }
    if (params.service) realm.searchParams.set("service", params.service);
    realm.searchParams.set("scope", scope);
    const headers = new Headers();
    const creds = this.upstream.credentials;
    let credentialOrigin: string | null = null;
    if (creds) {
      const decision = await credentialsMayGo(this.upstream.url, realm.href);
      if (decision.ok) {
        headers.set("authorization", basicAuth(creds));
        credentialOrigin = realm.origin;
      } else {
        log.warn("not sending upstream credentials to this token realm; asking for an anonymous token instead", {
          upstream: this.upstream.name,
          realm: realm.origin,
          why: decision.reason,
        });
      }
    }
    const reply = await this.fetchFollowingRedirects("GET", realm.href, headers, credentialOrigin);
    const { response } = reply;
    if (!response.ok) {
      await response.body?.cancel().catch(() => {});
      if (response.status === 401 || response.status === 403) {
        throw new UpstreamError(
          "unauthorized",
          creds
            ? `upstream ${this.upstream.name} token service refused the configured credentials (HTTP ${response.status}): check --upstream-credentials`
            : `upstream ${this.upstream.name} token service refused anonymous access (HTTP ${response.status}): configure --upstream-credentials`,
          { status: response.status },
        );
      }
      throw this.failureFor(response, "GET", realm.pathname);
    }
    let body: unknown;
    try {
      const bytes = await this.readWithin(reply, () => readLimited(response, MAX_TOKEN_RESPONSE_BYTES));
      if (bytes === null) {
        throw new UpstreamError("bad-response", `upstream ${this.upstream.name} token service sent more than ${MAX_TOKEN_RESPONSE_BYTES / 1024} KiB`);
      }
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch (cause) {
      if (cause instanceof UpstreamError) throw cause;
      throw new UpstreamError("bad-response", `upstream ${this.upstream.name} token service sent invalid JSON`, { cause });
    }
    const issued = issuedToken(body);
    if (!issued) throw new UpstreamError("bad-response", `upstream ${this.upstream.name} token service sent no token`);
    await this.opts.tokens.put(this.upstream.name, scope, issued.token, issued.seconds);
  }

  /**
   * fetch() with our own redirect handling: blob downloads are usually
   * redirected to a CDN or object store. Authorization goes only to
   * `credentialOrigin` (null: nowhere), never to a redirect target elsewhere;
   * redirects must pass the redirect policy, and every connection the address
   * policy (the runtime's upstream fetch). Returns the URL that answered.
   */
  private async fetchFollowingRedirects(
    method: "GET" | "HEAD",
    url: string,
    headers: Headers,
    credentialOrigin: string | null,
  ): Promise<UpstreamReply & { url: URL }> {
    const controller = new AbortController();
    const abort = (reason?: unknown) => controller.abort(reason);
    const expire = () => abort(new UpstreamError("timeout", `upstream ${this.upstream.name} sent no response within ${this.opts.timeoutMs / 1000} s`));
    try {
      // The deadline covers the headers of every hop; the body has its own (readWithin, the blob's idle timer).
      return await within(this.opts.timeoutMs, expire, () => this.followRedirects(method, url, headers, credentialOrigin, controller.signal, abort));
    } catch (err) {
      if (err instanceof UpstreamError) throw err;
      const reason = controller.signal.reason;
      if (controller.signal.aborted && reason instanceof UpstreamError) throw reason;
      const refused = networkRefusal(err);
      if (refused) throw new UpstreamError("bad-response", `upstream ${this.upstream.name}: ${refused.message}`, { cause: err });
      throw new UpstreamError("unreachable", `upstream ${this.upstream.name} is unreachable: ${describeNetworkError(err)}`, {
        cause: err,
      });
    }
  }

  private async followRedirects(
    method: "GET" | "HEAD",
    url: string,
    headers: Headers,
    credentialOrigin: string | null,
    signal: AbortSignal,
    abort: (reason?: unknown) => void,
  ): Promise<UpstreamReply & { url: URL }> {
    let current = new URL(url);
    for (let hop = 0; ; hop++) {
      const sent = new Headers(headers);
      if (current.origin !== credentialOrigin) sent.delete("authorization");
      const response = await this.fetch(current, { method, headers: sent, redirect: "manual", signal });
      this.record(response, current);
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location) {
        await response.body?.cancel().catch(() => {});
        let next: URL;
        try {
          next = new URL(location, current);
        } catch {
          throw new UpstreamError("bad-response", `upstream ${this.upstream.name} sent a redirect with an invalid Location`);
        }
        const refusal = redirectRefusal(current, next, hop);
        if (refusal) throw new UpstreamError("bad-response", `upstream ${this.upstream.name} answered ${method} ${current.pathname} with ${refusal}: not followed`);
        current = next;
        continue;
      }
      return { response, abort, url: current };
    }
  }

  /** Counts the request and keeps Docker Hub's remaining pull allowance visible to the operator. */
  private record(response: Response, url: URL): void {
    const { metrics } = this.opts;
    const kind = /\/blobs\//.test(url.pathname) ? "blob" : /\/manifests\//.test(url.pathname) ? "manifest" : "other";
    metrics.upstreamRequests.inc({ upstream: this.upstream.name, kind, status: String(response.status) });
    // Docker Hub sends e.g. "ratelimit-remaining: 76;w=21600".
    const remaining = Number.parseInt(response.headers.get("ratelimit-remaining") ?? "", 10);
    if (Number.isFinite(remaining)) metrics.rateLimitRemaining.set({ upstream: this.upstream.name }, remaining);
  }

  private failureFor(response: Response, method: string, path: string): UpstreamError {
    const what = `upstream ${this.upstream.name} answered ${response.status} to ${method} ${path}`;
    const status = response.status;
    if (status === 404) return new UpstreamError("not-found", what, { status });
    if (status === 429) {
      const retryAfter = retryAfterSeconds(response.headers.get("retry-after"));
      // Honour it for every later request too, not just this one.
      this.blockedUntil = Date.now() + Math.min(retryAfter ?? DEFAULT_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS) * 1000;
      return new UpstreamError("rate-limited", what, { status, ...(retryAfter === undefined ? {} : { retryAfterSeconds: retryAfter }) });
    }
    if (status === 401 || status === 403) {
      const hint = this.upstream.credentials
        ? "; check that the configured --upstream-credentials may pull it"
        : `; if it is private, set --upstream-credentials ${this.upstream.name}=USER:PASSWORD`;
      return new UpstreamError("unauthorized", what + hint, { status });
    }
    if (status >= 500) return new UpstreamError("server-error", what, { status });
    return new UpstreamError("bad-response", what, { status });
  }
}

function basicAuth(creds: { username: string; password: string }): string {
  return `Basic ${base64(new TextEncoder().encode(`${creds.username}:${creds.password}`))}`;
}
