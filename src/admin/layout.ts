/**
 * The frame of every admin page: the document, its style sheet, the security headers, and the
 * small formatting helpers the sections share.
 */
import { base64url } from "../util/encoding.ts";
import { Html, html } from "./html.ts";

/** A fresh nonce per response: the page's own style and script run, nothing injected does. */
export function newNonce(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * Headers of every /-/ response: no framing, no caching, no resources from anywhere else. The
 * referrer policy is same-origin, not no-referrer: with no-referrer a browser sends `Origin: null`
 * on the page's own form posts, which the CSRF check must refuse.
 */
export function securityHeaders(nonce: string | null): Record<string, string> {
  const csp = nonce === null
    ? "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    : `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`;
  return {
    "content-security-policy": csp,
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
  };
}

export function htmlResponse(body: Html, status: number, nonce: string, method: string, headers: Record<string, string> = {}): Response {
  return new Response(method === "HEAD" ? null : body.text, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", ...securityHeaders(nonce), ...headers },
  });
}

const STYLE = `
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#5c6670;--line:#d7dce1;--accent:#0b63c5;--bad:#b3261e;--ok:#1e7b34;--warn:#8a5a00;--band:#f3f5f7}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ec;--bg:#14171a;--muted:#9aa4ad;--line:#333a41;--accent:#6aa9ff;--bad:#ff8a80;--ok:#7bd88f;--warn:#f0c060;--band:#1d2226}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:baseline;justify-content:space-between;padding:.75rem 1rem;border-bottom:1px solid var(--line)}
header h1{font-size:1.2rem;margin:0}
main{padding:0 1rem 2rem;max-width:80rem;margin:0 auto}
h2{font-size:1.05rem;margin:1.5rem 0 .5rem}
a{color:var(--accent)}
.muted{color:var(--muted)}
.bad{color:var(--bad)}.ok{color:var(--ok)}.warn{color:var(--warn)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{font-weight:600}
tr.repo th{background:var(--band);padding-top:.6rem}
.num{text-align:right;white-space:nowrap}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:.75rem}
.card{border:1px solid var(--line);border-radius:.5rem;padding:.6rem .8rem}
.card b{display:block;font-size:1.3rem}
progress,meter{width:100%;height:.8rem}
form.inline{display:inline}
button{font:inherit;padding:.25rem .7rem;border-radius:.35rem;border:1px solid var(--line);background:var(--band);color:var(--fg);cursor:pointer}
button.danger{border-color:var(--bad);color:var(--bad)}
button.danger.strong{background:var(--bad);color:var(--bg)}
.search{display:flex;gap:.5rem;flex-wrap:wrap;margin:.5rem 0}
.search input{flex:1 1 12rem;min-width:0;font:inherit;padding:.35rem .5rem;border:1px solid var(--line);border-radius:.35rem;background:var(--bg);color:var(--fg)}
.pager{display:flex;gap:1rem;flex-wrap:wrap;align-items:center;margin:.5rem 0}
ol.errors{list-style:none;padding:0;margin:0}
ol.errors li{border-bottom:1px solid var(--line);padding:.4rem 0;overflow-wrap:anywhere}
.notice{border:1px solid var(--line);border-left:4px solid var(--accent);padding:.6rem .8rem;border-radius:.35rem;margin:1rem 0}
.notice.error{border-left-color:var(--bad)}
@media (max-width:640px){
  table.stack thead{display:none}
  table.stack,table.stack tbody,table.stack tr,table.stack td,table.stack th{display:block;width:100%}
  table.stack tr{border-bottom:1px solid var(--line);padding:.3rem 0}
  table.stack td,table.stack th{border:0;padding:.15rem .25rem;text-align:left}
  table.stack td[data-label]::before{content:attr(data-label) ": ";color:var(--muted)}
  .num{text-align:left;white-space:normal}
}
`;

export function page(title: string, nonce: string, identity: string | null, content: Html, script: string | null = null): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>${title}</title>
<style nonce="${nonce}">${new Html(STYLE)}</style>
</head>
<body>
<header><h1><a href="/-/">Stowage</a> &middot; ${title}</h1>${identity === null ? "" : html`<span class="muted">signed in as ${identity}</span>`}</header>
<main>
${content}
</main>
${script === null ? "" : html`<script nonce="${nonce}">${new Html(script)}</script>`}
</body>
</html>
`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${UNITS[u]}`;
}

/** "3 min ago", with the exact time in the title. */
export function when(at: number | null, now: number): Html {
  if (at === null) return html`<span class="muted">never</span>`;
  return html`<time datetime="${new Date(at).toISOString()}" title="${new Date(at).toISOString()}">${ago(now - at)}</time>`;
}

export function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400 * 2) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} days ago`;
}

export function formatCount(n: number): string {
  return n.toLocaleString("en-US");
}
