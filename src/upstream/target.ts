import type { Upstream } from "./upstream.ts";
import { RegistryError } from "../registry/errors.ts";
import { looksLikeRegistryHost, ImageRefError, parseImageRef } from "../registry/image-ref.ts";
import { dockerHubRepository, isValidRepositoryName, type Digest } from "../registry/reference.ts";

export type Target = { upstream: Upstream; repo: string };

/** The upstream a mirror request's `?ns=<registry host>` names (by host or by name), if it is one of ours. */
export function mirroredUpstream(upstreams: readonly Upstream[], ns: string): Upstream | undefined {
  const host = ns.toLowerCase();
  return upstreams.find((u) => u.aliases.includes(host) || u.name === host);
}

/**
 * Which upstream and repository a request means:
 *  - mirror mode: containerd adds `?ns=<registry host>`; that host must be one
 *    of ours, else 404 (containerd then tries its next host) — never a silent
 *    fetch from some other registry;
 *  - `/v2/<upstream name>/<repo>/…` picks that upstream;
 *  - anything else goes to the default upstream.
 * Docker Hub's single-component names get `library/`.
 */
export function resolveTarget(
  upstreams: readonly Upstream[],
  defaultUpstream: string,
  name: string,
  ns: string | null,
): Target {
  if (!isValidRepositoryName(name)) {
    throw new RegistryError("NAME_INVALID", `invalid repository name "${name}"`, {
      detail: { name },
    });
  }
  let upstream: Upstream | undefined;
  let repo = name;
  if (ns !== null) {
    upstream = mirroredUpstream(upstreams, ns);
    if (!upstream) {
      // Which registries are mirrored is the operator's business, not a caller's: no list here.
      throw new RegistryError("NAME_UNKNOWN", `this cache does not mirror registry ${JSON.stringify(ns.slice(0, 255))}`);
    }
  } else {
    const slash = name.indexOf("/");
    const first = slash > 0 ? name.slice(0, slash) : null;
    upstream = first ? upstreams.find((u) => u.name === first) : undefined;
    if (upstream) repo = name.slice(slash + 1);
    else upstream = upstreams.find((u) => u.name === defaultUpstream);
    if (!upstream) throw new Error(`default upstream ${defaultUpstream} is not configured`);
  }
  if (upstream.dockerHub) repo = dockerHubRepository(repo);
  return { upstream, repo };
}

/** An image reference resolved to one of our upstreams: what prefill fetches and a bundle names. */
export type ImageTarget = Target & { tag: string | null; digest: Digest | null };

/**
 * Which upstream an image reference (`[UPSTREAM/]REPO[:TAG|@DIGEST]`) means, as a pull through
 * Stowage would: a first component naming an upstream (by name, host or alias) picks it; a
 * first component that is a registry host we do not mirror is an error; anything else goes
 * to the default upstream. Docker Hub's single-component names get `library/`.
 */
export function resolveImageRef(upstreams: readonly Upstream[], defaultUpstream: string, text: string): ImageTarget {
  const ref = parseImageRef(text);
  const slash = ref.name.indexOf("/");
  const first = slash > 0 ? ref.name.slice(0, slash) : null;
  let upstream: Upstream | undefined;
  let repo = ref.name;
  if (first !== null) {
    upstream = upstreams.find((u) => u.name === first) ?? mirroredUpstream(upstreams, first);
    if (upstream) repo = ref.name.slice(slash + 1);
    else if (looksLikeRegistryHost(first)) {
      throw new ImageRefError(
        `${JSON.stringify(text.slice(0, 200))}: registry ${first} is not one of the configured upstreams (${upstreams.map((u) => u.name).join(", ")}); ` +
          `add it with --upstream NAME=https://${first}`,
      );
    }
  }
  upstream ??= upstreams.find((u) => u.name === defaultUpstream);
  if (!upstream) throw new Error(`default upstream ${defaultUpstream} is not configured`);
  if (upstream.dockerHub) repo = dockerHubRepository(repo);
  if (!isValidRepositoryName(repo)) throw new ImageRefError(`${JSON.stringify(text.slice(0, 200))}: ${JSON.stringify(repo)} is not a valid repository name`);
  return { upstream, repo, tag: ref.tag, digest: ref.digest };
}

/** The full name of a repository, registry host included (`docker.io/library/alpine`), as a bundle records it. */
export function fullRepositoryName(upstream: Upstream, repo: string): string {
  return `${upstream.dockerHub ? "docker.io" : upstream.host}/${repo}`;
}

/** The full reference of an image: `host/repo:tag` or `host/repo@digest`. */
export function fullImageRef(upstream: Upstream, repo: string, ref: { tag: string | null; digest: Digest | null }): string {
  const name = fullRepositoryName(upstream, repo);
  return ref.digest ? `${name}@${ref.digest}` : `${name}:${ref.tag ?? "latest"}`;
}
