// The upstream registry of the unit tests: manifests and blobs from memory, a
// token endpoint, optional bearer auth and a blob CDN, every request recorded
// (with its Authorization), and per-request behaviour hooks through which a
// test makes it misbehave: wrong bytes, broken connections, stalls, error
// statuses, redirects. Everything listens on a loopback address and is closed
// at the test's teardown.
import type { Test } from "tap";
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { sendOciError, sha256 } from "./oci.ts";
import { sleep, waitFor } from "./wait.ts";

/** One request as the server saw it. */
export type Seen = { method: string; path: string; search: string; authorization: string | undefined };

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

export type HttpServer = { url: string; seen: Seen[]; stop(): Promise<void> };

const seenOf = (req: IncomingMessage, url: URL): Seen => ({ method: req.method ?? "", path: url.pathname, search: url.search, authorization: req.headers.authorization });

/** A small HTTP server on a loopback address whose every answer `handle` decides; it records each request. */
export async function startHttpServer(t: Test, handle: Handler, opts: { host?: string } = {}): Promise<HttpServer> {
  const host = opts.host ?? "127.0.0.1";
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", `http://${host}`);
    seen.push(seenOf(req, url));
    void handle(req, res, url);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  let stopping: Promise<void> | undefined;
  // Closes the listener and every connection: afterwards the server refuses connections.
  const stop = () =>
    (stopping ??= new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }));
  t.teardown(stop);
  return { url: `http://${host}:${(server.address() as AddressInfo).port}`, seen, stop };
}

/** JSON with a Content-Length. */
export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/**
 * How the registry answers one request. `bytes` is what it holds under the
 * key (the blob, the manifest, or the default token body), empty if nothing.
 */
export type Behaviour = (req: IncomingMessage, res: ServerResponse, bytes: Buffer, url: URL) => void | Promise<void>;

/** Writes the body in pieces, with an optional pause between them, with a Content-Length or chunked. */
export function inPieces(opts: { chunk?: number; pauseMs?: number; length?: boolean; onProgress?: (sent: number) => void } = {}): Behaviour {
  const chunk = opts.chunk ?? 256 * 1024;
  return async (req, res, bytes) => {
    res.writeHead(200, { "content-type": "application/octet-stream", ...(opts.length === false ? {} : { "content-length": bytes.length }) });
    if (req.method === "HEAD") return void res.end();
    for (let at = 0; at < bytes.length; at += chunk) {
      if (res.destroyed) return;
      res.write(bytes.subarray(at, at + chunk));
      opts.onProgress?.(Math.min(at + chunk, bytes.length));
      if (opts.pauseMs) await sleep(opts.pauseMs);
    }
    res.end();
  };
}

/** Another host that blob downloads are redirected to (/data/<digest>); it must never see the upstream's credentials. */
export class FakeCdn {
  readonly blobs = new Map<string, Buffer>();
  seen: Seen[] = [];
  url = "";

  async start(t: Test, host = "127.0.0.1"): Promise<this> {
    const server = await startHttpServer(t, (req, res, url) => {
      const blob = this.blobs.get(url.pathname.replace(/^\/data\//, ""));
      if (!blob) return void res.writeHead(404).end("no such object");
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.length });
      res.end(req.method === "HEAD" ? undefined : blob);
    }, { host });
    this.url = server.url;
    this.seen = server.seen;
    return this;
  }
}

export type Manifest = { bytes: Buffer; mediaType: string; digest: Digest };

export type FakeRegistryOptions = {
  /** The loopback address it listens on (127.0.0.1 unless said). */
  host?: string;
  /** Every /v2/ request needs a bearer token from the token endpoint; without one: 401 and a challenge. */
  auth?: boolean;
  /** The token the endpoint issues; a new one per request unless said. */
  token?: string;
  /** Where the challenge sends clients for a token (its own /token unless said). */
  realm?: () => string;
  /** Blob requests are redirected there, as Docker Hub does to its CDN. */
  cdn?: FakeCdn;
};

type Hook = { behaviour: Behaviour; methods: string[] | null; once: boolean };

/**
 * A registry serving from memory. Requests go to `seen`, token requests to
 * `tokenRequests`. A hook (`on`) answers instead of the registry for one key:
 * a request path ("/token", "/v2/app/tags/list"), or a manifest reference or
 * blob digest in any repository. Auth, when on, comes before the hooks.
 */
export class FakeRegistry {
  readonly seen: Seen[] = [];
  readonly tokenRequests: Seen[] = [];
  readonly manifests = new Map<string, Manifest>(); // "repo\nreference"
  /** Blobs by digest, each visible only in the repositories listed with it. */
  readonly blobs = new Map<string, { bytes: Buffer; repos: string[] }>();
  /** Tag lists by repository; a repository without one is unknown. */
  readonly tagLists = new Map<string, string[]>();
  /** Body bytes written so far per blob digest (for clients that must join mid-way). */
  readonly progress = new Map<string, number>();
  private readonly hooks = new Map<string, Hook>();
  private readonly tokens = new Set<string>();
  private server: HttpServer | null = null;

  url = "";

  constructor(private readonly opts: FakeRegistryOptions = {}) {
    // A fixed token is good wherever it was issued (a realm elsewhere may hand it out).
    if (opts.token) this.tokens.add(opts.token);
  }

  async start(t: Test): Promise<this> {
    this.server = await startHttpServer(t, (req, res, url) => this.handle(req, res, url), { host: this.opts.host });
    this.url = this.server.url;
    return this;
  }

  /** Closes the listener and every connection: afterwards the upstream refuses connections. */
  stop(): Promise<void> {
    return this.server?.stop() ?? Promise.resolve();
  }

  addBlob(bytes: Buffer, repos = ["app"]): Digest {
    const digest = sha256(bytes);
    this.blobs.set(digest, { bytes, repos });
    this.opts.cdn?.blobs.set(digest, bytes);
    return digest;
  }

  /** Serves `bytes` under the tag and under its digest. */
  addManifest(tag: string, bytes: Buffer, opts: { repo?: string; mediaType?: string } = {}): Manifest {
    const repo = opts.repo ?? "app";
    const m = { bytes, mediaType: opts.mediaType ?? OCI_MANIFEST, digest: sha256(bytes) };
    this.manifests.set(`${repo}\n${tag}`, m);
    this.manifests.set(`${repo}\n${m.digest}`, m);
    return m;
  }

  /** Answers requests for `key` with `behaviour` (only those with one of `methods`, if given) until `off`. */
  on(key: string, behaviour: Behaviour, opts: { methods?: string[] } = {}): void {
    this.hooks.set(key, { behaviour, methods: opts.methods ?? null, once: false });
  }

  /** Misbehaves for the next request only; later ones are answered correctly. */
  once(key: string, behaviour: Behaviour, opts: { methods?: string[] } = {}): void {
    this.hooks.set(key, { behaviour, methods: opts.methods ?? null, once: true });
  }

  off(key: string): void {
    this.hooks.delete(key);
  }

  /** Redirects requests for a path. */
  redirect(path: string, location: string, status = 307): void {
    this.on(path, (_req, res) => void res.writeHead(status, { location, "content-length": 0 }).end());
  }

  /** Serves the blob's GETs correctly, but in pieces with a pause between them. */
  slow(digest: string, chunk: number, pauseMs: number): void {
    this.on(digest, inPieces({ chunk, pauseMs, onProgress: (sent) => this.progress.set(digest, sent) }), { methods: ["GET"] });
  }

  async waitForProgress(digest: string, bytes: number): Promise<void> {
    await waitFor(`the upstream sending ${bytes} bytes of ${digest}`, () => (this.progress.get(digest) ?? 0) >= bytes, 10_000, 5);
  }

  /** Every request, token requests included, in order. */
  get requests(): readonly Seen[] {
    return this.server?.seen ?? [];
  }

  /** Registry requests (not token requests) made since `mark` (a length of `seen`). */
  since(mark: number): Seen[] {
    return this.seen.slice(mark);
  }

  blobGets(digest: string): number {
    return this.seen.filter((s) => s.method === "GET" && s.path.endsWith(`/blobs/${digest}`)).length;
  }

  private hook(key: string, method: string): Behaviour | null {
    const hook = this.hooks.get(key);
    if (!hook || (hook.methods && !hook.methods.includes(method))) return null;
    if (hook.once) this.hooks.delete(key);
    return hook.behaviour;
  }

  private async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const method = req.method ?? "";
    const seen = seenOf(req, url);
    const path = url.pathname;
    if (path === "/token") {
      this.tokenRequests.push(seen);
      const token = this.opts.token ?? `tok-${this.tokenRequests.length}-${randomBytes(4).toString("hex")}`;
      this.tokens.add(token);
      const body = Buffer.from(JSON.stringify({ token, expires_in: 300 }));
      const hooked = this.hook(path, method);
      if (hooked) return hooked(req, res, body, url);
      res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
      return void res.end(body);
    }
    this.seen.push(seen);
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (this.opts.auth) {
      const given = req.headers.authorization?.replace(/^Bearer /, "");
      if (!given || !this.tokens.has(given)) {
        const realm = this.opts.realm?.() ?? `${this.url}/token`;
        const scope = m ? `,scope="repository:${m[1]}:pull"` : "";
        return sendOciError(res, 401, "UNAUTHORIZED", { "www-authenticate": `Bearer realm="${realm}",service="fake"${scope}` });
      }
    }
    const [, repo = "", kind, ref = ""] = m ?? [];
    const tagsOf = /^\/v2\/(.+)\/tags\/list$/.exec(path)?.[1];
    const tags = tagsOf === undefined ? undefined : this.tagLists.get(tagsOf);
    const stored = kind === "manifests"
      ? this.manifests.get(`${repo}\n${ref}`)?.bytes
      : kind === "blobs"
      ? this.blobs.get(ref)?.bytes
      : tags
      ? Buffer.from(JSON.stringify({ name: tagsOf, tags }))
      : undefined;
    const hooked = this.hook(path, method) ?? (m ? this.hook(ref, method) : null);
    if (hooked) return hooked(req, res, stored ?? Buffer.alloc(0), url);

    if (path === "/v2/") return sendJson(res, 200, {});
    if (tagsOf !== undefined) {
      if (!stored) return sendOciError(res, 404, "NAME_UNKNOWN");
      res.writeHead(200, { "content-type": "application/json", "content-length": stored.length });
      return void res.end(stored);
    }
    if (!m || (method !== "GET" && method !== "HEAD")) return sendOciError(res, 404, "NAME_UNKNOWN");
    if (kind === "manifests") {
      const manifest = this.manifests.get(`${repo}\n${ref}`);
      if (!manifest) return sendOciError(res, 404, "MANIFEST_UNKNOWN");
      res.writeHead(200, { "content-type": manifest.mediaType, "content-length": manifest.bytes.length, "docker-content-digest": manifest.digest });
      return void res.end(method === "HEAD" ? undefined : manifest.bytes);
    }
    const entry = this.blobs.get(ref);
    if (!entry || !entry.repos.includes(repo)) return sendOciError(res, 404, "BLOB_UNKNOWN");
    if (this.opts.cdn) return void res.writeHead(307, { location: `${this.opts.cdn.url}/data/${ref}?signature=abc`, "content-length": 0 }).end();
    const blob = entry.bytes;
    // Like real registries and CDNs, honour "bytes=N-" so that resumed downloads can continue.
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    const from = range ? Number(range[1]) : 0;
    const partial = range !== null && from < blob.length;
    const headers = { "content-type": "application/octet-stream", "docker-content-digest": ref };
    if (partial) res.writeHead(206, { ...headers, "content-length": blob.length - from, "content-range": `bytes ${from}-${blob.length - 1}/${blob.length}` });
    else res.writeHead(200, { ...headers, "content-length": blob.length });
    if (method === "HEAD") return void res.end();
    this.progress.set(ref, blob.length);
    res.end(partial ? blob.subarray(from) : blob);
  }
}
