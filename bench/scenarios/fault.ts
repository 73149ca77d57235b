// Requirement 5: the upstream connection drops once, at half of the 1 GiB blob. The peer fetches
// through bench/fault-proxy.ts; a client GETs the blob from an empty cache and the bytes it gets
// are hashed. A cache that resumes (Range) or retries hides the fault from the client at the cost
// of some time; one that does not hands the client a truncated body. The reference is the same
// cold GET through the same proxy with no fault, on another fresh peer, so the proxy's own cost
// is in both.
import { curlHashed, type HashedDownload } from "../curl.ts";
import { diskWriteSpeed } from "../disk.ts";
import { type ProxiedRequest, startFaultProxy } from "../fault-proxy.ts";
import { blobPath, measure, withPeer, type Blob, type Metrics, type Setup } from "../measure.ts";
import type { PeerKind } from "../peers.ts";

export type FaultResult = { metrics: Metrics; faulty: HashedDownload; upstreamRequests: ProxiedRequest[] };

async function coldThrough(kind: PeerKind, setup: Setup, blob: Blob, cut: boolean) {
  setup.scope.check();
  const proxy = await startFaultProxy(setup.upstreamUrl, cut ? { path: blobPath(blob), cutAt: Math.floor(blob.size / 2) } : null);
  const stopProxy = setup.scope.defer("fault proxy", () => proxy.stop());
  try {
    const run = await withPeer(kind, { ...setup, upstreamUrl: proxy.url }, async (peer) => {
      await diskWriteSpeed(blob.size); // pages the VM has backed for the peer's writes (bench/disk.ts)
      return measure(peer, () => curlHashed(peer.url + blobPath(blob), blob.size, blob.digest, 120));
    });
    return { run, requests: proxy.requests.filter((r) => r.path === blobPath(blob)) };
  } finally {
    await stopProxy();
  }
}

export async function faultRun(kind: PeerKind, setup: Setup, blob: Blob): Promise<FaultResult> {
  const clean = await coldThrough(kind, setup, blob, false);
  if (!clean.run.value.ok) throw new Error(`clean cold GET through the fault proxy failed: ${JSON.stringify(clean.run.value)}`);
  const faulty = await coldThrough(kind, setup, blob, true);
  const f = faulty.run.value;
  const metrics: Metrics = {
    "fault.clean.wall": clean.run.wallSeconds,
    "fault.ok": f.ok ? 1 : 0,
    "fault.bytes": f.bytes ?? 0,
    "fault.wall": faulty.run.wallSeconds,
    "fault.upBytes": faulty.requests.reduce((s, r) => s + r.bytes, 0),
    "fault.rss": faulty.run.peakRss,
  };
  if (f.ok) metrics["fault.slowdown"] = faulty.run.wallSeconds / clean.run.wallSeconds;
  return { metrics, faulty: f, upstreamRequests: faulty.requests };
}
