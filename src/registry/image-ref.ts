// Image references as people write them (`alpine`, `alpine:3.20`, `ghcr.io/o/i:tag`,
// `127.0.0.1:5000/team/app@sha256:...`): in Kubernetes manifests, Compose files, CI configs
// and on the command line. Pure: which upstream a reference means is decided in
// upstream/target.ts.
import { isValidRepositoryName, isValidTag, parseDigest, type Digest } from "./reference.ts";

export type ImageRef = {
  /** Everything before the tag or digest, as written (it may start with a registry host). */
  name: string;
  /** The tag, or null when the reference names a digest (a digest wins over a tag, as in docker pull). */
  tag: string | null;
  digest: Digest | null;
};

export class ImageRefError extends Error {}

/** Parses `NAME[:TAG][@DIGEST]`; no tag and no digest means `latest`. */
export function parseImageRef(text: string): ImageRef {
  const s = text.trim();
  const shown = JSON.stringify(s.slice(0, 200));
  if (s === "") throw new ImageRefError("an empty image reference");
  let rest = s;
  let digest: Digest | null = null;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = parseDigest(rest.slice(at + 1));
    if (!digest) throw new ImageRefError(`${shown}: the part after "@" is not a sha256 or sha512 digest`);
    rest = rest.slice(0, at);
  }
  // A ":" after the last "/" starts the tag; one before it is a registry port.
  const colon = rest.lastIndexOf(":");
  let tag: string | null = null;
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw new ImageRefError(`${shown}: ${JSON.stringify(tag)} is not a valid tag`);
  }
  const name = rest;
  const slash = name.indexOf("/");
  const first = slash > 0 ? name.slice(0, slash) : null;
  const path = first !== null && looksLikeRegistryHost(first) ? name.slice(slash + 1) : name;
  if (!isValidRepositoryName(path)) {
    throw new ImageRefError(`${shown}: ${JSON.stringify(path.slice(0, 200))} is not a valid repository name (lower-case letters, digits, and . _ - / between them)`);
  }
  return { name, tag: digest ? null : (tag ?? "latest"), digest };
}

/** As Docker decides: a first component with a "." or ":" (or `localhost`) is a registry, not a repository. */
export function looksLikeRegistryHost(component: string): boolean {
  return component.includes(".") || component.includes(":") || component === "localhost";
}
