// Requirement 2: CLIENTS clients pull the same uncached image at the same moment, each as a
// container runtime would (manifest by tag, then config and layers in parallel). A cache should
// fetch each blob from the upstream once and feed all clients from that one download, and the
// burst should take little longer than one client alone. The same burst is then repeated on the
// now cached image, so that a miss of the target can be put down to sharing the cold fetch or to
// handing out CLIENTS copies at all (which on 2 cores takes far longer than one pull, cached or not).
import { curlBlob } from "../curl.ts";
import { diskWriteSpeed } from "../disk.ts";
import type { UpstreamCounter } from "../counters.ts";
import { CALL_TIMEOUT_MS } from "../deadline.ts";
import { blobPath, measure, sleep, trafficOf, untilCached, type Metrics } from "../measure.ts";
import type { Peer } from "../peers.ts";

export const CLIENTS = 20;

export type PullableImage = { repo: string; tag: string; mediaType: string; blobs: Array<{ digest: string; size: number }> };

export const imageBytes = (img: PullableImage) => img.blobs.reduce((s, b) => s + b.size, 0);

/** One client's pull; resolves to the blob bytes it received. */
async function pullImage(peerUrl: string, img: PullableImage): Promise<number> {
  const res = await fetch(`${peerUrl}/v2/${img.repo}/manifests/${img.tag}`, { headers: { accept: img.mediaType }, signal: AbortSignal.timeout(CALL_TIMEOUT_MS.small) });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`GET manifest ${img.repo}:${img.tag}: ${res.status}`);
  const got = await Promise.all(img.blobs.map((b) => curlBlob(peerUrl + blobPath({ repo: img.repo, digest: b.digest }), b.size)));
  return got.reduce((s, d) => s + d.bytes, 0);
}

const burst = (peer: Peer, img: PullableImage, clients: number) => Promise.all(Array.from({ length: clients }, () => pullImage(peer.url, img)));

/** Until every blob is committed, so that a peer's background fetches are counted too. */
async function untilAllCached(peer: Peer, img: PullableImage): Promise<void> {
  for (const b of img.blobs) await untilCached(peer, { repo: img.repo, ...b });
}

const blobPaths = (img: PullableImage) => img.blobs.map((b) => blobPath({ repo: img.repo, digest: b.digest }));

/** The reference: one client pulling the image from an empty cache. */
export async function singlePull(peer: Peer, counter: UpstreamCounter, img: PullableImage): Promise<Metrics> {
  // The peer stores the image next: pages the VM has backed for it (bench/disk.ts).
  const diskWrite = await diskWriteSpeed(imageBytes(img));
  const run = await measure(peer, () => burst(peer, img, 1));
  await untilAllCached(peer, img);
  return { "single.wall": run.wallSeconds, "single.rss": run.peakRss, "single.upBytes": (await trafficOf(counter, blobPaths(img))).bytes, "single.diskWrite": diskWrite };
}

export async function concurrentPull(peer: Peer, counter: UpstreamCounter, img: PullableImage): Promise<Metrics> {
  const diskWrite = await diskWriteSpeed(imageBytes(img));
  const cold = await measure(peer, () => burst(peer, img, CLIENTS));
  await untilAllCached(peer, img);
  await sleep(250);
  const up = await trafficOf(counter, blobPaths(img));
  const warm = await measure(peer, () => burst(peer, img, CLIENTS));
  return {
    "burst.wall": cold.wallSeconds,
    "burst.served": cold.value.reduce((s, n) => s + n, 0),
    "burst.upBytes": up.bytes,
    "burst.upGets": up.gets,
    "burst.rss": cold.peakRss,
    "burst.cpu": cold.cpuSeconds,
    "burst.diskWrite": diskWrite,
    "burstWarm.wall": warm.wallSeconds,
    "burstWarm.rss": warm.peakRss,
  };
}
