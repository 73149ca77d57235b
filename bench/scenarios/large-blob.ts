// Requirement 1 (and 6 on the S3 peer): one client GETs the 1 GiB blob from an empty cache (cold:
// the peer fetches it from the upstream while serving it), then again three times (warm: from the
// peer's own store). The cold speed is the client's download rate alone; the time from its last
// byte until the peer has committed its copy is a figure of its own ("cold.stored"), since a
// cache that serves fast but stores slowly will go upstream again for the next client.
//
// The references the targets compare with are measured right next to the peer's own GETs, not
// once at the start: on a shared 2-core machine the speed of everything drifts by 2× within
// minutes, and a reference taken at another moment would judge the drift, not the peer.
import { curlBlob, type Download } from "../curl.ts";
import { diskWriteSpeed } from "../disk.ts";
import type { UpstreamCounter } from "../counters.ts";
import { blobPath, measure, untilCached, type Blob, type Metrics } from "../measure.ts";
import type { Peer } from "../peers.ts";

export const WARM_REPEATS = 3;

/** Where the same bytes can be had without the peer: the ceilings the targets are set against. */
export type References = {
  /** nginx sending the blob's file: the most any server can do for a warm read here. */
  fileUrl: string;
  /** The upstream registry itself. */
  upstreamUrl: string;
};

const best = (ds: Download[]) => Math.max(...ds.map((d) => d.speed));

export async function largeBlob(peer: Peer, counter: UpstreamCounter, blob: Blob, refs: References): Promise<Metrics> {
  const url = peer.url + blobPath(blob);

  const direct = await curlBlob(refs.upstreamUrl + blobPath(blob), blob.size);
  // The path every cold fetch takes: what the counter costs shows here.
  const viaCounter = await curlBlob(counter.url + blobPath(blob), blob.size);
  await counter.reset();
  // Last before the cold GET: it also leaves the peer pages the VM has backed (bench/disk.ts).
  const diskWrite = await diskWriteSpeed(blob.size);
  const cold = await measure(peer, async () => {
    const download = await curlBlob(url, blob.size);
    return { download, storedAfter: await untilCached(peer, blob) };
  });
  const coldUp = await counter.traffic(blobPath(blob));
  await counter.reset();

  const ceiling: Download[] = [];
  const warm = await measure(peer, async () => {
    const runs: Download[] = [];
    for (let i = 0; i < WARM_REPEATS; i++) {
      // nginx's GETs run inside the measured stretch; it is another process, so the peer's
      // figures do not include them, and they interleave with the peer's like for like.
      ceiling.push(await curlBlob(refs.fileUrl, blob.size));
      runs.push(await curlBlob(url, blob.size));
    }
    return runs;
  });
  const warmUp = await counter.traffic(blobPath(blob));
  return {
    "ref.direct": direct.speed,
    "ref.diskWrite": diskWrite,
    "ref.viaCounter": viaCounter.speed,
    "ref.ceiling": best(ceiling),
    "cold.speed": cold.value.download.speed,
    "cold.ttfb": cold.value.download.ttfb,
    "cold.stored": cold.value.storedAfter,
    "cold.upBytes": coldUp.bytes,
    "cold.rss": cold.peakRss,
    "cold.cpu": cold.cpuSeconds,
    "warm.speed": best(warm.value),
    "warm.upBytes": warmUp.bytes,
    "warm.rss": warm.peakRss,
    "warm.cpu": warm.cpuSeconds / WARM_REPEATS,
  };
}
