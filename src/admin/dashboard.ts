/** The admin page itself (GET /-/): every section, from a view the request handler gathered. */
import type { CollectReport } from "../gc/collector.ts";
import type { UpstreamStatus } from "../upstream/upstream-health.ts";
import type { DownloadInfo } from "./deps.ts";
import { Html, html } from "./html.ts";
import type { ImageSize } from "./image-size.ts";
import type { InventoryPage, RepoSummary, TagRow } from "./inventory.ts";
import { repoKey } from "./inventory.ts";
import { ago, formatBytes, formatCount, page, when } from "./layout.ts";
import { LIVE_DOWNLOADS_SCRIPT } from "./live-script.ts";
import type { RecentError } from "./recent-errors.ts";

export type UpstreamView = { name: string; url: string; offline: boolean; status: UpstreamStatus | null };

export type DashboardView = {
  now: number;
  nonce: string;
  identity: string;
  csrf: string;
  upstreams: UpstreamView[];
  store: { blobs: number; blobBytes: number; maxBytes: number | null; lastReport: CollectReport | null };
  traffic: { hits: number; misses: number; coalesced: number; fromCache: number; fromUpstream: number };
  downloads: DownloadInfo[];
  query: string;
  tags: InventoryPage;
  totalTags: number;
  repos: ReadonlyMap<string, RepoSummary>;
  sizes: ReadonlyMap<TagRow, ImageSize>;
  listMs: number;
  errors: RecentError[] | null;
};

export function dashboard(v: DashboardView): Html {
  const content = html`
${summary(v)}
${upstreams(v)}
${downloads(v)}
${repositories(v)}
${errors(v)}`;
  return page("cache", v.nonce, v.identity, content, LIVE_DOWNLOADS_SCRIPT);
}

function summary(v: DashboardView): Html {
  const { hits, misses, coalesced, fromCache, fromUpstream } = v.traffic;
  const requests = hits + misses + coalesced;
  const ratio = requests === 0 ? "–" : `${((hits / requests) * 100).toFixed(1)}%`;
  const { blobBytes, blobs, maxBytes, lastReport } = v.store;
  const limit = maxBytes === null
    ? html`<span class="muted">no limit (--max-size)</span>`
    : html`of ${formatBytes(maxBytes)} (--max-size), ${((blobBytes / maxBytes) * 100).toFixed(1)}%<meter min="0" max="${maxBytes}" high="${maxBytes * 0.9}" value="${Math.min(blobBytes, maxBytes)}"></meter>`;
  const gc = lastReport === null
    ? html`<b>&ndash;</b><span class="muted">none since start</span>`
    : html`<b>${when(lastReport.startedAt + lastReport.durationMs, v.now)}</b>${lastReport.dryRun ? "a dry run: would free " : "freed "}${formatBytes(lastReport.bytesFreed)} (${formatCount(lastReport.removed.length)} removed), took ${(lastReport.durationMs / 1000).toFixed(1)} s; store ${formatBytes(lastReport.storeBytesAfter)} after`;
  return html`<h2>Store and traffic</h2>
<div class="cards">
<div class="card" id="store-size">Store <b>${formatBytes(blobBytes)}</b>${formatCount(blobs)} blobs ${limit}</div>
<div class="card" id="hit-ratio">Hit ratio <b>${ratio}</b>${formatCount(hits)} hits, ${formatCount(misses)} misses, ${formatCount(coalesced)} joined a download (since start)</div>
<div class="card" id="bytes-saved">Upstream bytes saved <b>${formatBytes(fromCache)}</b>served from the store; ${formatBytes(fromUpstream)} streamed while fetched (since start)</div>
<div class="card" id="last-gc">Last collection ${gc}</div>
</div>`;
}

function upstreams(v: DashboardView): Html {
  const rows = v.upstreams.map((u) => {
    const s = u.status;
    let health: Html;
    if (u.offline) health = html`<span class="muted">offline (by configuration)</span>`;
    else if (!s || (s.lastSuccessAt === null && s.lastFailureAt === null)) health = html`<span class="muted">not contacted yet</span>`;
    else if (s.lastFailureAt !== null && (s.lastSuccessAt === null || s.lastFailureAt > s.lastSuccessAt)) health = html`<span class="bad">failing</span>`;
    else health = html`<span class="ok">answering</span>`;
    const failure = s?.lastFailureAt == null ? html`<span class="muted">none</span>` : html`${when(s.lastFailureAt, v.now)}: ${s.lastFailure ?? ""}`;
    return html`<tr data-upstream="${u.name}">
<td data-label="Upstream"><b>${u.name}</b><div class="muted"><code>${u.url}</code></div></td>
<td data-label="Health">${health}</td>
<td data-label="Last answer">${when(s?.lastSuccessAt ?? null, v.now)}</td>
<td data-label="Last failure">${failure}</td>
<td data-label="In flight" class="num">${s?.inFlight ?? 0}</td>
</tr>`;
  });
  return html`<h2>Upstreams</h2>
<table class="stack" id="upstreams"><thead><tr><th>Upstream</th><th>Health</th><th>Last answer</th><th>Last failure</th><th class="num">In flight</th></tr></thead>
<tbody>${rows}</tbody></table>`;
}

function downloads(v: DashboardView): Html {
  const rows = v.downloads.map((d) => {
    const secs = Math.max(0.001, (v.now - d.startedAt) / 1000);
    const pct = d.size ? ` (${Math.floor((d.bytes * 100) / d.size)}%)` : "";
    return html`<tr>
<td data-label="Image"><code>${d.upstream}/${d.repo}</code><div class="muted" title="${d.digest}">${d.digest.slice(0, 19)}</div></td>
<td data-label="Progress">${d.size ? html`<progress max="${d.size}" value="${d.bytes}"></progress>` : html`<progress></progress>`}</td>
<td data-label="Received" class="num">${formatBytes(d.bytes)}${d.size ? ` of ${formatBytes(d.size)}${pct}` : ""}</td>
<td data-label="Rate" class="num">${formatBytes(Math.round(d.bytes / secs))}/s</td>
</tr>`;
  });
  return html`<h2>Downloads in progress <small class="muted" id="downloads-status"></small></h2>
<table class="stack" id="downloads"><thead><tr><th>Image</th><th>Progress</th><th class="num">Received</th><th class="num">Rate</th></tr></thead>
<tbody id="downloads-body">${rows}</tbody></table>
<p id="downloads-empty" class="muted"${v.downloads.length > 0 ? new Html(" hidden") : ""}>No downloads from upstreams right now.</p>`;
}

function purgeForm(v: DashboardView, fields: Record<string, string>, label: string, what: string): Html {
  return html`<form method="post" action="/-/purge" class="inline">
<input type="hidden" name="csrf" value="${v.csrf}">${Object.entries(fields).map(([k, val]) => html`<input type="hidden" name="${k}" value="${val}">`)}
<button type="submit" class="danger" aria-label="${label} ${what}">${label}</button></form>`;
}

function repositories(v: DashboardView): Html {
  const t = v.tags;
  const rows: Html[] = [];
  let current = "";
  for (const r of t.rows) {
    const key = repoKey(r.upstream, r.repo);
    if (key !== current) {
      current = key;
      const s = v.repos.get(key);
      rows.push(html`<tr class="repo" data-repo="${r.upstream}/${r.repo}"><th colspan="6">
<code>${r.upstream}/${r.repo}</code> <span class="muted">&middot; ${formatCount(s?.tags ?? 0)} tag${s?.tags === 1 ? "" : "s"} &middot; ${formatCount(s?.pulls ?? 0)} pulls &middot; last pulled ${s?.lastPulledAt == null ? "never" : ago(v.now - s.lastPulledAt)}</span>
${purgeForm(v, { what: "repository", upstream: r.upstream, repo: r.repo }, "Purge repository", `${r.upstream}/${r.repo}`)}</th></tr>`);
    }
    const size = v.sizes.get(r);
    rows.push(html`<tr class="tag" data-ref="${r.upstream}/${r.repo}:${r.tag}">
<td data-label="Tag"><b>${r.tag}</b></td>
<td data-label="Digest"><code title="${r.digest}">${r.digest.slice(0, 19)}</code></td>
<td data-label="Size" class="num">${size === undefined || size === null ? html`<span class="muted">&ndash;</span>` : html`${formatBytes(size.bytes)}${size.platforms > 1 ? html` <span class="muted">(${size.platforms} platforms)</span>` : ""}`}</td>
<td data-label="Last pulled">${when(r.lastPulledAt, v.now)}</td>
<td data-label="Pulls" class="num">${formatCount(r.pulls)}</td>
<td>${purgeForm(v, { what: "tag", upstream: r.upstream, repo: r.repo, tag: r.tag }, "Purge", `${r.upstream}/${r.repo}:${r.tag}`)}</td>
</tr>`);
  }
  const link = (p: number, label: string) => html`<a href="/-/?${new URLSearchParams({ ...(v.query ? { q: v.query } : {}), page: String(p) }).toString()}#repositories">${label}</a>`;
  const first = t.matching === 0 ? 0 : (t.page - 1) * t.pageSize + 1;
  const last = Math.min(t.page * t.pageSize, t.matching);
  const pager = html`<div class="pager" id="pager">
<span>${t.matching === 0 ? "No tags" : `Tags ${formatCount(first)}–${formatCount(last)} of ${formatCount(t.matching)}`}${v.query ? ` matching “${v.query}”` : ""}${v.query && t.matching !== v.totalTags ? ` (${formatCount(v.totalTags)} in all)` : ""}</span>
${t.page > 1 ? link(t.page - 1, "← Previous") : ""}
${t.page < t.pages ? link(t.page + 1, "Next →") : ""}
<span class="muted">page ${t.page} of ${t.pages}; listed in ${v.listMs} ms</span></div>`;
  return html`<h2 id="repositories">Repositories and tags</h2>
<form class="search" method="get" action="/-/" role="search">
<input type="search" name="q" value="${v.query}" placeholder="Search repositories and tags, e.g. alpine:3" aria-label="Search repositories and tags">
<button type="submit">Search</button>${v.query ? html` <a href="/-/#repositories">clear</a>` : ""}
</form>
${pager}
<table class="stack" id="tags"><thead><tr><th>Tag</th><th>Digest</th><th class="num">Size</th><th>Last pulled</th><th class="num">Pulls</th><th></th></tr></thead>
<tbody>${rows}</tbody></table>
${t.pages > 1 ? pager : ""}`;
}

function errors(v: DashboardView): Html {
  if (v.errors === null) return html`<h2>Recent errors</h2><p class="muted">Not collected by this server.</p>`;
  const items = v.errors.map((e) => html`<li><span class="${e.level === "error" ? "bad" : "warn"}">${e.level}</span> ${when(e.time, v.now)} <b>${e.msg}</b>
${Object.keys(e.fields).length > 0 ? html`<div><code>${fieldsText(e.fields)}</code></div>` : ""}</li>`);
  return html`<h2>Recent errors <small class="muted">(last ${v.errors.length} warnings and errors, newest first)</small></h2>
${items.length === 0 ? html`<p class="muted">None since start.</p>` : html`<ol class="errors" id="errors">${items}</ol>`}`;
}

/** Log fields as compact JSON, errors by their message, cut at a length a phone can show. */
function fieldsText(fields: Record<string, unknown>): string {
  let text: string;
  try {
    text = JSON.stringify(fields, (_k, value: unknown) => (value instanceof Error ? value.message : typeof value === "bigint" ? String(value) : value));
  } catch {
    text = "(fields not printable)";
  }
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}
