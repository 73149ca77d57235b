// Requirement 3: a cached manifest asked for by tag, as fast as wrk can ask, with the Accept
// header a container runtime sends. Tags are revalidated with the upstream when their TTL runs
// out, so this is the steady state of a busy cache, not a pure in-memory lookup.
import { CALL_TIMEOUT_MS } from "../deadline.ts";
import { measure, type Metrics } from "../measure.ts";
import type { Peer } from "../peers.ts";
import { runWrk } from "../wrk.ts";

export const WRK = { threads: 2, connections: 32, seconds: 10 };

const ACCEPT = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

export async function manifestRate(peer: Peer, img: { repo: string; tag: string; manifestDigest: string }): Promise<Metrics> {
  const url = `${peer.url}/v2/${img.repo}/manifests/${img.tag}`;
  // The first GET puts it in the cache; wrk only sees the cached answer.
  const first = await fetch(url, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(CALL_TIMEOUT_MS.small) });
  await first.arrayBuffer();
  const served = first.headers.get("docker-content-digest");
  if (first.status !== 200 || served !== img.manifestDigest) throw new Error(`GET ${url}: ${first.status}, digest ${served}`);
  const run = await measure(peer, () => runWrk(url, { ...WRK, headers: { Accept: ACCEPT } }));
  return {
    "manifest.rps": run.value.requestsPerSecond,
    "manifest.p50": run.value.p50,
    "manifest.p99": run.value.p99,
    "manifest.errors": run.value.non2xx + run.value.socketErrors,
    "manifest.rss": run.peakRss,
    "manifest.cpu": run.cpuSeconds,
  };
}
