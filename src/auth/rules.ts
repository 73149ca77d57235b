/**
 * Access rules: for an upstream and a repository glob, who may pull.
 * The first rule that matches a repository decides; when none matches, every
 * signed-in identity may pull and anonymous clients may not. Pure.
 */
export type Principal = { kind: "anonymous" } | { kind: "identity"; subject: string };

export type Rule = {
  /** Upstream name glob; "*" for every upstream. */
  upstream: string;
  /** Repository glob on the upstream's own name: `*` stays within one path component, `**` crosses `/`. */
  repository: string;
  /** Who may pull: subjects, "anonymous", or "*" for every signed-in identity. */
  pull: string[];
};

export const ANONYMOUS = "anonymous";
export const ANY_IDENTITY = "*";

const compiled = new Map<string, RegExp>();

export function globToRegExp(glob: string): RegExp {
  let re = compiled.get(glob);
  if (re) return re;
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      // "**/" may match nothing, so "**/x" also matches a top-level "x".
      if (glob[i + 2] === "/") {
        out += "(?:.*/)?";
        i += 2;
      } else {
        out += ".*";
        i++;
      }
    } else if (c === "*") out += "[^/]*";
    else if (c === "?") out += "[^/]";
    else out += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  re = new RegExp(`^${out}$`);
  compiled.set(glob, re);
  return re;
}

export function ruleFor(rules: readonly Rule[], upstream: string, repository: string): Rule | null {
  return rules.find((r) => globToRegExp(r.upstream).test(upstream) && globToRegExp(r.repository).test(repository)) ?? null;
}

export function mayPull(rules: readonly Rule[], who: Principal, upstream: string, repository: string): boolean {
  const rule = ruleFor(rules, upstream, repository);
  if (!rule) return who.kind === "identity";
  if (who.kind === "anonymous") return rule.pull.includes(ANONYMOUS);
  return rule.pull.includes(ANY_IDENTITY) || rule.pull.includes(who.subject);
}
