// Tag list pagination (distribution spec, "Listing Tags"): a registry that
// returns one page says where the next starts in a Link header such as
// `</v2/library/alpine/tags/list?n=100&last=3.19>; rel="next"`.

/**
 * The target of the rel="next" link of a Link header, resolved against a placeholder origin
 * (callers use its path and query only); null when there is none or it is not a URL.
 */
export function nextLinkTarget(link: string | null): URL | null {
  if (!link) return null;
  // Several links may share the header, separated by commas (URLs here have none unescaped).
  for (const part of link.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>\s*((?:;[^;]*)*)$/.exec(part);
    if (!m) continue;
    const params = (m[2] ?? "").split(";").map((p) => p.trim().toLowerCase());
    if (!params.some((p) => /^rel\s*=\s*"?(?:[^"]*\s)?next(?:\s[^"]*)?"?$/.test(p))) continue;
    try {
      return new URL(m[1] ?? "", "http://upstream.invalid");
    } catch {
      return null;
    }
  }
  return null;
}

/** The query of the next page (`n` and `last` only), from an upstream's Link header; null when there is none. */
export function nextPageQuery(link: string | null): { n?: string; last?: string } | null {
  const target = nextLinkTarget(link);
  if (target === null) return null;
  const out: { n?: string; last?: string } = {};
  const n = target.searchParams.get("n");
  const last = target.searchParams.get("last");
  if (n !== null && /^\d{1,9}$/.test(n)) out.n = n;
  if (last !== null) out.last = last;
  return out.last === undefined ? null : out; // without `last` the "next" page is the same page
}

/**
 * One page of a tag list we hold ourselves (offline), as the spec pages: tags in lexical
 * order, those after `last`, at most `n` (a malformed `n` is ignored); `next` is the query of
 * the following page, null on the last one.
 */
export function pageOfTags(tags: readonly string[], n: string | null, last: string | null): { tags: string[]; next: { n?: string; last?: string } | null } {
  const sorted = [...new Set(tags)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const after = last === null ? sorted : sorted.filter((tag) => tag > last);
  const limit = n !== null && /^\d{1,9}$/.test(n) ? Number(n) : null;
  if (limit === null || after.length <= limit) return { tags: after, next: null };
  const page = after.slice(0, limit);
  const lastShown = page.at(-1);
  return { tags: page, next: lastShown === undefined ? null : { n: String(limit), last: lastShown } };
}

/** Our own Link header for the next page, on our path for the repository as the client named it. */
export function nextPageLink(name: string, page: { n?: string; last?: string }, ns: string | null): string {
  const query = new URLSearchParams();
  if (page.n !== undefined) query.set("n", page.n);
  if (page.last !== undefined) query.set("last", page.last);
  if (ns !== null) query.set("ns", ns);
  return `</v2/${name}/tags/list?${query}>; rel="next"`;
}
