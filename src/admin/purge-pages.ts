/** The confirmation and result pages of a purge, and the HTML error page of every /-/ route. */
import type { CollectReport, RemovedItem } from "../gc/collector.ts";
import { type Html, html } from "./html.ts";
import { formatBytes, formatCount, page } from "./layout.ts";

/** What the operator asked to purge, as the forms send it. */
export type PurgeRequest =
  | { what: "tag"; upstream: string; repo: string; tag: string }
  | { what: "repository"; upstream: string; repo: string };

export function describePurge(p: PurgeRequest): string {
  return p.what === "tag" ? `tag ${p.upstream}/${p.repo}:${p.tag}` : `repository ${p.upstream}/${p.repo} (every tag)`;
}

function fields(p: PurgeRequest): Record<string, string> {
  return p.what === "tag" ? { what: "tag", upstream: p.upstream, repo: p.repo, tag: p.tag } : { what: "repository", upstream: p.upstream, repo: p.repo };
}

function backLink(p: PurgeRequest): string {
  return `/-/?${new URLSearchParams({ q: `${p.upstream}/${p.repo}` })}#repositories`;
}

function removedTable(items: readonly RemovedItem[]): Html {
  if (items.length === 0) return html`<p class="muted">Nothing.</p>`;
  const shown = items.slice(0, 500);
  return html`<table class="stack" id="removed"><thead><tr><th>Kind</th><th>Name</th><th class="num">Bytes</th><th>Why</th></tr></thead><tbody>
${shown.map((i) => html`<tr><td data-label="Kind">${i.kind}</td><td data-label="Name"><code>${i.name}</code></td><td data-label="Bytes" class="num">${formatBytes(i.bytes)}</td><td data-label="Why">${i.reason}</td></tr>`)}
</tbody></table>${items.length > shown.length ? html`<p class="muted">and ${formatCount(items.length - shown.length)} more (the log lists every one).</p>` : ""}`;
}

export function confirmPage(nonce: string, identity: string, csrf: string, p: PurgeRequest, preview: CollectReport): Html {
  const content = preview.ran
    ? html`<h2>Purge ${describePurge(p)}?</h2>
<p>This removes the tag records and, once nothing else refers to them, their manifests and blobs. The next pull fetches the image again from its upstream.</p>
<p>A dry run now would remove ${formatCount(preview.removed.length)} item${preview.removed.length === 1 ? "" : "s"} and free <b>${formatBytes(preview.bytesFreed)}</b>:</p>
${removedTable(preview.removed)}
<p><form method="post" action="/-/purge" class="inline" id="confirm-purge">
<input type="hidden" name="csrf" value="${csrf}">${Object.entries(fields(p)).map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">`)}
<input type="hidden" name="confirm" value="yes">
<button type="submit" class="danger strong">Purge now</button></form> <a href="${backLink(p)}">Cancel</a></p>`
    : busy(p);
  return page("confirm purge", nonce, identity, content);
}

export function resultPage(nonce: string, identity: string, p: PurgeRequest, report: CollectReport): Html {
  const content = report.ran
    ? html`<div class="notice" id="purge-result"><b>Purged ${describePurge(p)}</b>: removed ${formatCount(report.removed.length)} item${report.removed.length === 1 ? "" : "s"}, freed ${formatBytes(report.bytesFreed)} in ${(report.durationMs / 1000).toFixed(1)} s (logged as done by ${identity}).</div>
${removedTable(report.removed)}
<p><a href="${backLink(p)}">Back to the cache</a></p>`
    : busy(p);
  return page("purge", nonce, identity, content);
}

function busy(p: PurgeRequest): Html {
  return html`<div class="notice error" id="purge-busy">Nothing was purged: another Stowage instance is running a collection right now (one runs at a time). Try again in a minute.</div>
<p><a href="${backLink(p)}">Back to the cache</a></p>`;
}

export function errorPage(nonce: string, identity: string | null, status: number, message: string): Html {
  return page(status === 404 ? "not found" : status === 401 ? "sign-in needed" : status >= 500 ? "failed" : "refused", nonce, identity, html`<div class="notice error" id="error"><b>${status}</b> ${message}</div>
<p><a href="/-/">Back to the admin page</a></p>`);
}
