// Tag list pagination (distribution spec, "Listing Tags"): a registry that
// returns one page says where the next starts in a Link header such as
// `</v2/library/alpine/tags/list?n=100&last=3.19>; rel="next"`.

/** The query of the next page (`n` and `last` only), from an upstream's Link header; null when there is none. */
export function nextPageQuery(link: string | null): { n?: string; last?: string } | null {
  if (!link) return null;
  // Several links may share the header, separated by commas (URLs here have none unescaped).
  for (const part of link.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>\s*((?:;[^;]*)*)$/.exec(part);
    if (!m) continue;
    const params = (m[2] ?? "").split(";").map((p) => p.trim().toLowerCase());
    if (!params.some((p) => /^rel\s*=\s*"?(?:[^"]*\s)?next(?:\s[^"]*)?"?$/.test(p))) continue;
    let target: URL;
    try {
      target = new URL(m[1] ?? "", "http://upstream.invalid");
    } catch {
      return null;
    }
    const out: { n?: string; last?: string } = {};
    const n = target.searchParams.get("n");
    const last = target.searchParams.get("last");
    if (n !== null && /^\d{1,9}$/.test(n)) out.n = n;
    if (last !== null) out.last = last;
    return out.last === undefined ? null : out; // without `last` the "next" page is the same page
  }
  return null;
}

/** Our own Link header for the next page, on our path for the repository as the client named it. */
export function nextPageLink(name: string, page: { n?: string; last?: string }, ns: string | null): string {
  const query = new URLSearchParams();
  if (page.n !== undefined) query.set("n", page.n);
  if (page.last !== undefined) query.set("last", page.last);
  if (ns !== null) query.set("ns", ns);
  return `</v2/${name}/tags/list?${query}>; rel="next"`;
}
