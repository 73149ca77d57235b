/**
 * The image references in a file a team already has: a plain list, or what it deploys
 * (Kubernetes manifests, Compose files, CI configs). Pure: the caller reads the file.
 *
 * Which kind a text is: it is a plain list when every line that is not blank or a `#` comment
 * is a single token (no whitespace inside, after an optional trailing ` # comment`) that starts
 * with a letter or digit and does not end with `:`, as image references do. Anything else
 * (a `key: value` line, a `- item`, `---`, a JSON brace) makes it YAML, which JSON also is.
 *
 * In YAML, every mapping at any depth of every document is looked at:
 *  - `image:` with a string names an image (Kubernetes containers and initContainers,
 *    Compose services, GitHub Actions `container:` and `services:`, GitLab CI jobs);
 *    with a mapping, its `name:` does (GitLab CI's `image: {name: ..., entrypoint: ...}`);
 *  - GitLab CI's `services:` list: its strings, and the `name:` of its mappings;
 *  - GitHub Actions' `container:` given as a string (`container: node:20`).
 * A value with an unexpanded variable (`$X`, `${X}`) or template (`{{ ... }}`) is not an
 * image yet; it is returned in `skipped` with the reason, as is an `image:` mapping without
 * a name (a Helm values file: render it first).
 */
import { parseAllDocuments } from "yaml";

export type SkippedImage = { value: string; reason: string };
export type ImageList = { refs: string[]; skipped: SkippedImage[] };

export class ImageListError extends Error {}

export function imageRefsFromText(text: string): ImageList {
  const found = plainList(text) ?? fromYaml(text);
  const refs: string[] = [];
  const skipped: SkippedImage[] = [];
  const seen = new Set<string>();
  for (const { value, reason } of found) {
    if (seen.has(value)) continue;
    seen.add(value);
    if (reason) skipped.push({ value, reason });
    else refs.push(value);
  }
  return { refs, skipped };
}

/** The lines of a plain list, or null when the text is not one (see the rule above). */
type Found = { value: string; reason: string | null };

function plainList(text: string): Found[] | null {
  const refs: Found[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/\s+#.*$/, "").trim();
    if (line === "" || line.startsWith("#")) continue;
    if (!/^[A-Za-z0-9$][^\s]*$/.test(line) || line.endsWith(":")) return null;
    add(line, refs);
  }
  return refs;
}

function fromYaml(text: string): Found[] {
  const docs = parseAllDocuments(text);
  const found: Found[] = [];
  // parseAllDocuments returns an EmptyStream (not an array) for a text with no documents.
  if (!Array.isArray(docs)) return found;
  for (const [i, doc] of docs.entries()) {
    const error = doc.errors[0];
    if (error) {
      // The parser's first line names the problem and where it is ("... at line 3, column 1:").
      const what = (error.message.split("\n")[0] ?? "").replace(/:$/, "");
      throw new ImageListError(`not a list of image references (one a line) and not valid YAML or JSON${docs.length > 1 ? ` (document ${i + 1})` : ""}: ${what}`);
    }
    // Aliases are resolved by toJS; a bound keeps a "billion laughs" document from blowing up.
    walk(doc.toJS({ maxAliasCount: 1000 }), found);
  }
  return found;
}

function walk(node: unknown, found: Found[]): void {
  if (Array.isArray(node)) {
    for (const item of node) walk(item, found);
    return;
  }
  if (!isMapping(node)) return;
  for (const [key, value] of Object.entries(node)) {
    if (key === "image") {
      if (typeof value === "string") add(value, found);
      else if (isMapping(value)) {
        if (typeof value.name === "string") add(value.name, found);
        else if (value.name === undefined && ("repository" in value || "tag" in value)) {
          found.push({
            value: `image: ${JSON.stringify(value)}`,
            reason: "an image: mapping with repository/tag but no name, as in a Helm values file; render the chart (helm template) and prefill from its output",
          });
        }
      }
    } else if (key === "services" && Array.isArray(value)) {
      for (const s of value) {
        if (typeof s === "string") add(s, found);
        else if (isMapping(s) && typeof s.name === "string") add(s.name, found);
      }
    } else if (key === "container" && typeof value === "string") {
      add(value, found);
    }
    walk(value, found);
  }
}

function add(value: string, found: Found[]): void {
  const v = value.trim();
  if (v !== "") found.push({ value: v, reason: notYetAnImage(v) });
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Why a value is not an image reference yet, or null when it may be one. */
function notYetAnImage(value: string): string | null {
  const variable = /\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*/.exec(value);
  if (variable) {
    return `it has the unexpanded variable ${variable[0]}; expand it first (docker compose config, envsubst, or the CI's own rendering)`;
  }
  if (/\{\{.*\}\}/.test(value)) return "it is an unrendered template; render it first (helm template)";
  return null;
}
