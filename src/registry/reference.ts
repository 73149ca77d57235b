// Names, tags, digests and manifest references as defined by the OCI distribution spec.

/** A content digest that has passed `parseDigest`; the brand stops raw strings from posing as one. */
export type Digest = string & { readonly __brand: "Digest" };
export type DigestAlgorithm = "sha256" | "sha512";

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };
const LOWER_HEX = /^[0-9a-f]+$/;

/** Strict: a known algorithm, the exact hex length for it, lowercase hex only. */
export function parseDigest(s: string): Digest | null {
  const colon = s.indexOf(":");
  if (colon < 0) return null;
  const algorithm = s.slice(0, colon);
  const hex = s.slice(colon + 1);
  if (algorithm !== "sha256" && algorithm !== "sha512") return null;
  if (hex.length !== HEX_LENGTH[algorithm] || !LOWER_HEX.test(hex)) return null;
  return s as Digest;
}

export function digestAlgorithm(d: Digest): DigestAlgorithm {
  return d.slice(0, d.indexOf(":")) as DigestAlgorithm;
}

export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(":") + 1);
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const MAX_NAME_LENGTH = 255;

export function isValidRepositoryName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return false;
  return name.split("/").every((component) => PATH_COMPONENT.test(component));
}

const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

export function isValidTag(s: string): boolean {
  return TAG.test(s);
}

export type Reference = { kind: "tag"; tag: string } | { kind: "digest"; digest: Digest };

/** A manifest reference from a URL path: a ":" can never occur in a tag, so it marks a digest. */
export function parseReference(s: string): Reference | null {
  if (s.includes(":")) {
    const digest = parseDigest(s);
    return digest === null ? null : { kind: "digest", digest };
  }
  return isValidTag(s) ? { kind: "tag", tag: s } : null;
}

/** Docker Hub keeps official images under "library/"; clients send the short name. */
export function dockerHubRepository(repo: string): string {
  return repo.includes("/") ? repo : `library/${repo}`;
}
