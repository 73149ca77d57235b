// `npm run bench [-- --rounds N] [--counter nginx|harness] [--profile]`
//
// Stowage against CNCF distribution in proxy mode, both pulling from the same local upstream
// registry, each through its own counting proxy. Scenarios (bench/scenarios/*): a 1 GiB blob cold
// and warm with the cached manifest rate on the same peer, one and 20 clients pulling a cold
// image, a connection drop at 50% of the 1 GiB blob, the 1 GiB blob on Stowage's S3 store, and
// the p99 of cached manifest GETs during 200 clients' failed logins (access control on), and
// prefill, export and import of the test images next to skopeo doing the same (air gap).
// The report (bench/report.ts) goes to stdout; progress to stderr. With --rounds N every
// scenario runs N times, peer order alternating, and the table shows medians.
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../test/harness/images.ts";
import { rgwUnavailable, startRgw } from "../test/harness/rgw.ts";
import { pushTestImages, startRegistry } from "../test/harness/registry.ts";
import { ensureBigBlob, pushBigBlobImage } from "./big-blob.ts";
import type { CounterKind } from "./counters.ts";
import { curlBlob } from "./curl.ts";
import { blobPath, progress, withPeer, type Blob, type Metrics, type Setup } from "./measure.ts";
import { nginxInstalled, startFileServer } from "./nginx.ts";
import { PEER_NAMES, type PeerKind } from "./peers.ts";
import { printProfile, profiled, profilingEnv, removePerfMap } from "./profile.ts";
import { printReport, type Results } from "./report.ts";
import { CLIENTS, concurrentPull, imageBytes, singlePull } from "./scenarios/concurrent-pull.ts";
import { airgapTransfers, printAirgap } from "./scenarios/airgap.ts";
import { faultRun } from "./scenarios/fault.ts";
import { largeBlob, type References } from "./scenarios/large-blob.ts";
import { loginStorm, printLoginStorm } from "./scenarios/login-storm.ts";
import { manifestRate } from "./scenarios/manifests.ts";
import { wrkInstalled } from "./wrk.ts";

const PEERS: PeerKind[] = ["stowage", "distribution"];

function imageNamed(images: TestImage[], name: string): TestImage {
  const img = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!img) throw new Error(`no test image ${name}`);
  return img;
}

async function loadAverage(): Promise<string> {
  return (await readFile("/proc/loadavg", "utf8")).split(" ")[0] ?? "?";
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err)).split("\n").slice(0, 6).join(" / ");

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      // nginx when installed: test/e2e's recording proxy costs ~2 CPU s per 268 MB here and caps
      // every cold fetch at 100–170 MB/s, which would measure the harness more than the peers.
      counter: { type: "string", default: nginxInstalled() ? "nginx" : "harness" },
      rounds: { type: "string", default: "1" },
      profile: { type: "boolean", default: false },
    },
  });
  if (values.counter !== "harness" && values.counter !== "nginx") throw new Error(`--counter must be harness or nginx, not ${values.counter}`);
  const counter: CounterKind = values.counter;
  const roundCount = Number(values.rounds);
  if (!Number.isInteger(roundCount) || roundCount < 1) throw new Error(`--rounds must be a positive integer, not ${values.rounds}`);
  if (!nginxInstalled()) throw new Error("nginx is needed for the warm-read ceiling (apt-get install nginx)");
  if (!wrkInstalled()) throw new Error("wrk is needed for the manifest rate (apt-get install wrk)");
  const loadBefore = await loadAverage();

  progress("building test images and the 1 GiB blob");
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const burstImg = imageNamed(images, "big-layer");
  const warmImg = imageNamed(images, "many-layers");
  const bigBlob = await ensureBigBlob(DEFAULT_IMAGE_CACHE_DIR);

  progress("starting the upstream registry and pushing the images");
  const upstream = await startRegistry();
  // Serves the blob's file for the warm-read ceiling, measured next to each peer's warm GETs.
  const files = await startFileServer(bigBlob.path);
  try {
    // Only the images the scenarios read: pushing the others costs time and measures nothing.
    await pushTestImages(upstream.url, [burstImg, warmImg]);
    const bigImg = await pushBigBlobImage(upstream.url, bigBlob);
    const big: Blob = { repo: bigImg.repo, digest: bigBlob.digest, size: bigBlob.size };

    const refs: References = { fileUrl: files.fileUrl, upstreamUrl: upstream.url };

    const setup: Setup = { counter, upstreamUrl: upstream.url, warmImg };
    const peers: Record<PeerKind, Metrics[]> = { stowage: [], distribution: [], "stowage-s3": [] };
    const faults: Results["faults"] = [];
    const errors: string[] = [];
    /** A scenario that fails for one peer is reported as such; the rest of the bench goes on. */
    const attempt = async (kind: PeerKind, round: number, what: string, fn: () => Promise<Metrics>) => {
      const tag = roundCount > 1 ? ` (round ${round + 1}/${roundCount})` : "";
      progress(`${PEER_NAMES[kind]}: ${what}${tag}`);
      try {
        Object.assign(peers[kind][round]!, await fn());
      } catch (err) {
        errors.push(`${PEER_NAMES[kind]}, ${what}${tag}: ${message(err)}`);
        progress(`  failed: ${message(err)}`);
      }
    };

    for (let round = 0; round < roundCount; round++) {
      for (const kind of Object.keys(peers) as PeerKind[]) peers[kind].push({});
      // Alternating who goes first spreads slow drift on the machine over both peers.
      const order = round % 2 === 0 ? PEERS : [...PEERS].reverse();
      for (const kind of order) {
        await attempt(kind, round, "1 GiB blob cold and warm, then the cached manifest rate", () =>
          withPeer(kind, setup, async (peer, cnt) => ({ ...(await largeBlob(peer, cnt, big, refs)), ...(await manifestRate(peer, bigImg)) })),
        );
      }
      for (const kind of order) {
        await attempt(kind, round, `one client pulls ${burstImg.repo}, cold`, () => withPeer(kind, setup, (peer, cnt) => singlePull(peer, cnt, burstImg)));
        await attempt(kind, round, `${CLIENTS} clients pull ${burstImg.repo} at once, cold then cached`, () =>
          withPeer(kind, setup, (peer, cnt) => concurrentPull(peer, cnt, burstImg)),
        );
      }
      for (const kind of order) {
        await attempt(kind, round, "1 GiB blob cold, without and with a connection drop at 50%", async () => {
          const f = await faultRun(kind, setup, big);
          faults.push({ kind, faulty: f.faulty, upstreamRequests: f.upstreamRequests });
          return f.metrics;
        });
      }
    }

    let s3Skipped = rgwUnavailable();
    if (s3Skipped === null) {
      progress("starting Ceph RGW for the S3 store");
      // The SDK in this process (the bench's own bucket client) would warn about node 20 on stderr.
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";
      const rgw = await startRgw().catch((err: unknown) => {
        s3Skipped = `Ceph RGW did not start: ${message(err)}`;
        return null;
      });
      if (rgw) {
        try {
          for (let round = 0; round < roundCount; round++) {
            await attempt("stowage-s3", round, "1 GiB blob cold and warm, then the cached manifest rate", () =>
              withPeer("stowage-s3", { ...setup, s3: rgw }, async (peer, cnt) => ({ ...(await largeBlob(peer, cnt, big, refs)), ...(await manifestRate(peer, bigImg)) })),
            );
          }
        } finally {
          await rgw.stop();
        }
      }
    }

    progress("failed logins: cached manifest latency without and during a login storm");
    const storm = await loginStorm().catch((err: unknown) => {
      errors.push(`login storm: ${message(err)}`);
      return null;
    });

    progress("air gap: prefill, export and import of the test images and the 1 GiB image, and skopeo doing the same");
    const others = images.filter((i) => i !== burstImg && i !== warmImg);
    const airgap = await pushTestImages(upstream.url, others)
      .then(() => {
        const all = [...images.map((i) => ({ ref: `${i.repo}:${i.tag}`, blobs: i.blobs })), { ref: `${bigImg.repo}:${bigImg.tag}`, blobs: bigImg.blobs }];
        const unique = new Map(all.flatMap((i) => i.blobs.map((b) => [b.digest, b.size] as const)));
        return airgapTransfers(upstream.url, all.map((i) => i.ref), [...unique.values()].reduce((a, b) => a + b, 0));
      })
      .catch((err: unknown) => {
        errors.push(`air gap: ${message(err)}`);
        return null;
      });

    printReport({
      rounds: roundCount,
      blobBytes: big.size,
      burstImage: { name: `${burstImg.repo}:${burstImg.tag}`, bytes: imageBytes(burstImg) },
      counter: counter === "nginx" ? "nginx, one process" : "test/e2e's recording proxy, in the bench process",
      peers,
      faults,
      s3Skipped,
      errors,
      load: { before: loadBefore, after: await loadAverage(), cpus: availableParallelism() },
    });
    if (storm) {
      console.log("");
      printLoginStorm(storm);
    }
    if (airgap) {
      console.log("");
      printAirgap(airgap);
    }

    if (values.profile) {
      progress("profiling Stowage's cold path");
      const { env, profilePath } = await profilingEnv();
      await withPeer("stowage", { ...setup, env }, async (peer) => {
        try {
          const run = await profiled(peer.pid, profilePath, () => curlBlob(peer.url + blobPath(big), big.size));
          console.log(`\nProfile of one Stowage cold GET of the 1 GiB blob (${(run.value.speed / 1e6).toFixed(1)} MB/s with the profilers on):`);
          await printProfile(run);
        } finally {
          await removePerfMap(peer.pid);
        }
      });
    }
  } finally {
    await files.stop();
    await upstream.stop();
  }
  progress("done");
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(1);
  },
);
