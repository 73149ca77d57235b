import type { Upstream } from "./upstream.ts";
import { RegistryError } from "../registry/errors.ts";
import { dockerHubRepository, isValidRepositoryName } from "../registry/reference.ts";

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
