/**
 * Everything under /-/: the operator's page, its live downloads feed and its purge forms.
 * Every answer is HTML (or JSON for the feed) with the page's security headers; failures are
 * HTML pages too, so a browser shows them, while the registry API keeps its JSON errors.
 */
import { TagRecord } from "../cache/records.ts";
import type { PurgeSelector } from "../gc/collector.ts";
import type { Logger } from "../log.ts";
import { isValidRepositoryName, isValidTag } from "../registry/reference.ts";
import { readLimited } from "../util/streams.ts";
import { AdminGate, AdminRefusal } from "./admin-access.ts";
import { CsrfGuard } from "./csrf.ts";
import { dashboard, type DashboardView } from "./dashboard.ts";
import type { AdminDeps } from "./deps.ts";
import { ImageSizes } from "./image-size.ts";
import { InventoryCache, pageOf } from "./inventory.ts";
import { htmlResponse, newNonce, securityHeaders } from "./layout.ts";
import { confirmPage, describePurge, errorPage, type PurgeRequest, resultPage } from "./purge-pages.ts";

const MAX_FORM_BYTES = 16 * 1024;
const MAX_QUERY = 200;

export type AdminAnswer = { response: Response; identity: string | null };

export class AdminPage {
  private readonly gate: AdminGate;
  private readonly csrf: CsrfGuard;
  private readonly inventory: InventoryCache;
  private readonly sizes: ImageSizes;
  private readonly now: () => number;

  constructor(private readonly deps: AdminDeps, opts: { now?: () => number; csrfSecret?: Uint8Array } = {}) {
    this.now = opts.now ?? Date.now;
    this.gate = new AdminGate(deps.settings.adminPage, deps.access);
    this.csrf = new CsrfGuard(opts.csrfSecret);
    this.inventory = new InventoryCache(deps.kv, this.now);
    this.sizes = new ImageSizes(deps.kv, deps.store);
  }

  /** `client`: the peer address (null: unknown). Never throws: every failure is an HTML page. */
  async handle(request: Request, url: URL, client: string | null, log: Logger, requestId: string): Promise<AdminAnswer> {
    const nonce = newNonce();
    let identity: string | null = null;
    try {
      identity = await this.gate.identify(request, client);
      const response = await this.route(request, url, identity, nonce, log);
      return { response, identity };
    } catch (err) {
      if (err instanceof AdminRefusal) {
        if (err.status === 403 && identity !== null) log.warn("admin page refused a request", { by: identity, path: url.pathname, why: err.message });
        return { response: htmlResponse(errorPage(nonce, identity, err.status, err.message), err.status, nonce, request.method, err.headers), identity };
      }
      log.error("admin page failed", { path: url.pathname, error: err instanceof Error ? err.message : String(err) });
      const message = `the admin page failed (request id ${requestId}; the Stowage log has the detail)`;
      return { response: htmlResponse(errorPage(nonce, identity, 500, message), 500, nonce, request.method), identity };
    }
  }

  private async route(request: Request, url: URL, identity: string, nonce: string, log: Logger): Promise<Response> {
    const method = request.method;
    switch (url.pathname) {
      case "/-":
        return new Response(null, { status: 308, headers: { location: "/-/", ...securityHeaders(null) } });
      case "/-/":
        if (method !== "GET" && method !== "HEAD") throw notAllowed(method, "GET");
        return this.dashboard(request, url, identity, nonce);
      case "/-/downloads.json":
        if (method !== "GET" && method !== "HEAD") throw notAllowed(method, "GET");
        return new Response(method === "HEAD" ? null : JSON.stringify({ now: this.now(), downloads: this.deps.blobs.downloads() }), {
          headers: { "content-type": "application/json", ...securityHeaders(null) },
        });
      case "/-/purge":
        if (method !== "POST") throw notAllowed(method, "POST", "a purge is a form sent from the admin page's buttons");
        return this.purge(request, url, identity, nonce, log);
      default:
        throw new AdminRefusal(404, `no such page: ${url.pathname}`);
    }
  }

  private async dashboard(request: Request, url: URL, identity: string, nonce: string): Promise<Response> {
    let session = this.csrf.session(request);
    const headers: Record<string, string> = {};
    if (session === null) {
      session = this.csrf.newSession();
      headers["set-cookie"] = this.csrf.cookie(session, url.protocol === "https:");
    }
    const query = (url.searchParams.get("q") ?? "").slice(0, MAX_QUERY).trim();
    const started = this.now();
    const inv = await this.inventory.get();
    const tags = pageOf(inv, query, Number(url.searchParams.get("page") ?? "1"));
    const listMs = this.now() - started;
    const sizes = new Map(
      await Promise.all(tags.rows.map(async (r) => {
        const checked = TagRecord.safeParse({ digest: r.digest, mediaType: r.mediaType, size: 0, checkedAt: r.checkedAt });
        return [r, checked.success ? await this.sizes.of(r.upstream, r.repo, checked.data.digest, checked.data.mediaType) : null] as const;
      })),
    );
    const { metrics, settings, clients } = this.deps;
    const kinds = ["blob", "manifest", "referrers"];
    const view: DashboardView = {
      now: this.now(),
      nonce,
      identity,
      csrf: await this.csrf.token(identity, session),
      upstreams: settings.upstreams.map((u) => ({ name: u.name, url: u.url, offline: u.offline === true, status: clients.get(u.name)?.status() ?? null })),
      store: { blobs: inv.blobs, blobBytes: inv.blobBytes, maxBytes: settings.maxSizeBytes, lastReport: this.deps.collector.lastReport() },
      traffic: {
        hits: kinds.reduce((n, kind) => n + metrics.cacheHits.get({ kind }), 0),
        misses: kinds.reduce((n, kind) => n + metrics.cacheMisses.get({ kind }), 0),
        coalesced: metrics.coalesced.get(),
        fromCache: metrics.bytesFromCache.get(),
        fromUpstream: metrics.bytesFromUpstream.get(),
      },
      downloads: this.deps.blobs.downloads(),
      query,
      tags,
      totalTags: inv.rows.length,
      repos: inv.repos,
      sizes,
      listMs,
      errors: this.deps.recentErrors?.list() ?? null,
    };
    return htmlResponse(dashboard(view), 200, nonce, request.method, headers);
  }

  private async purge(request: Request, url: URL, identity: string, nonce: string, log: Logger): Promise<Response> {
    const type = request.headers.get("content-type") ?? "";
    if (!type.toLowerCase().startsWith("application/x-www-form-urlencoded")) {
      throw new AdminRefusal(415, "a purge is sent as a form (application/x-www-form-urlencoded) from the admin page's buttons");
    }
    const bytes = await readLimited(request, MAX_FORM_BYTES);
    if (bytes === null) throw new AdminRefusal(413, `the form is larger than ${MAX_FORM_BYTES / 1024} KiB`);
    const form = new URLSearchParams(new TextDecoder().decode(bytes));
    await this.csrf.check(request, url, identity, form.get("csrf"));
    const wanted = this.purgeRequest(form);
    const selector: PurgeSelector = wanted.what === "tag"
      ? { kind: "image", upstream: wanted.upstream, repo: wanted.repo, tag: wanted.tag, digest: null }
      : { kind: "repository", glob: `${wanted.upstream}/${wanted.repo}` };
    const session = this.csrf.session(request)!;
    const options = { purge: [selector], by: identity, cacheTtlMs: null, maxBytes: null };
    if (form.get("confirm") !== "yes") {
      const preview = await this.deps.collector.run({ ...options, dryRun: true });
      return htmlResponse(confirmPage(nonce, identity, await this.csrf.token(identity, session), wanted, preview), 200, nonce, "POST");
    }
    log.info("admin purge requested", { by: identity, what: describePurge(wanted) });
    const report = await this.deps.collector.run({ ...options, dryRun: false });
    this.inventory.invalidate();
    log.info(report.ran ? "admin purge done" : "admin purge not run: another instance holds the collector lease", {
      by: identity,
      what: describePurge(wanted),
      removed: report.removed.length,
      bytesFreed: report.bytesFreed,
    });
    return htmlResponse(resultPage(nonce, identity, wanted, report), report.ran ? 200 : 409, nonce, "POST");
  }

  /** The form's fields, checked: repository names and tags come from the page, but anyone can send a form. */
  private purgeRequest(form: URLSearchParams): PurgeRequest {
    const upstream = form.get("upstream") ?? "";
    const repo = form.get("repo") ?? "";
    if (!this.deps.settings.upstreams.some((u) => u.name === upstream)) throw new AdminRefusal(400, `no upstream is named ${JSON.stringify(upstream.slice(0, 100))}`);
    if (!isValidRepositoryName(repo)) throw new AdminRefusal(400, `not a repository name: ${JSON.stringify(repo.slice(0, 300))}`);
    const what = form.get("what");
    if (what === "repository") return { what, upstream, repo };
    if (what === "tag") {
      const tag = form.get("tag") ?? "";
      if (!isValidTag(tag)) throw new AdminRefusal(400, `not a tag: ${JSON.stringify(tag.slice(0, 200))}`);
      return { what, upstream, repo, tag };
    }
    throw new AdminRefusal(400, "the form names nothing to purge (what=tag or what=repository)");
  }
}

function notAllowed(method: string, allowed: string, why?: string): AdminRefusal {
  return new AdminRefusal(405, `${method} is not accepted here${why ? `: ${why}` : ""}`, { allow: allowed });
}
