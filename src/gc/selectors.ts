// Which tags and manifests a purge names. Pure: no I/O.
import type { Digest } from "../registry/reference.ts";

export type PurgeSelector =
  | { kind: "image"; upstream: string; repo: string; tag: string | null; digest: Digest | null }
  /** Matched against "<upstream name>/<repo>" and "<registry host>/<repo>"; `*` is any run of characters but "/", `**` any run including "/". */
  | { kind: "repository"; glob: string }
  | { kind: "upstream"; name: string };

/** A repository glob as a regular expression over the whole name. */
export function globPattern(glob: string): RegExp {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      out += ".*";
      i++;
    } else if (c === "*") out += "[^/]*";
    else out += c.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${out}$`);
}

export type RepoOf = { upstream: string; repo: string };

/**
 * The selectors compiled once per run. `hostOf` gives an upstream's registry host (for
 * globs written with the name a client pulls by, e.g. ghcr.io/owner/*).
 */
export class PurgeMatcher {
  private readonly images: Array<Extract<PurgeSelector, { kind: "image" }>>;
  private readonly globs: RegExp[];
  private readonly upstreams: Set<string>;

  constructor(selectors: readonly PurgeSelector[], private readonly hostOf: (upstream: string) => string | undefined) {
    this.images = selectors.filter((s) => s.kind === "image");
    this.globs = selectors.flatMap((s) => (s.kind === "repository" ? [globPattern(s.glob)] : []));
    this.upstreams = new Set(selectors.flatMap((s) => (s.kind === "upstream" ? [s.name] : [])));
  }

  get empty(): boolean {
    return this.images.length === 0 && this.globs.length === 0 && this.upstreams.size === 0;
  }

  /** Every tag and manifest of the repository is selected. */
  wholeRepo(r: RepoOf): boolean {
    if (this.upstreams.has(r.upstream)) return true;
    if (this.images.some((s) => s.tag === null && s.digest === null && s.upstream === r.upstream && s.repo === r.repo)) return true;
    if (this.globs.length === 0) return false;
    const host = this.hostOf(r.upstream);
    const names = [`${r.upstream}/${r.repo}`, ...(host ? [`${host}/${r.repo}`] : [])];
    return this.globs.some((g) => names.some((n) => g.test(n)));
  }

  /** A tag named by a selector (by name, or as naming a selected digest). */
  tag(r: RepoOf & { tag: string; digest: Digest }): boolean {
    if (this.wholeRepo(r)) return true;
    return this.images.some((s) => s.upstream === r.upstream && s.repo === r.repo && (s.tag === r.tag || (s.digest !== null && s.digest === r.digest)));
  }

  /** A manifest record named by digest. */
  manifest(r: RepoOf & { digest: Digest }): boolean {
    if (this.wholeRepo(r)) return true;
    return this.images.some((s) => s.upstream === r.upstream && s.repo === r.repo && s.digest === r.digest);
  }
}
