// `npm run bench [-- FLAGS]`: Stowage on Node (the built JavaScript) and on Deno against CNCF
// distribution in proxy mode and nginx as a pull-through cache (proxy_cache, proxy_cache_lock),
// all pulling from the same local upstream registry, each through its own counting proxy.
//
// Scenarios (bench/scenarios/*, run in this order; names for --only):
//   startup      each peer started 3 times: spawn to first answered GET /v2/, RSS after warm-up,
//                and idle RSS once settled (the first start, left alone for SETTLE_MS)
//                (every other scenario's starts count too)
//   large-blob   a 1 GiB blob cold and warm, then the cached manifest rate (wrk), on one peer
//   pull         one client, then 20 clients at once, pull a cold image; the 20 again once cached
//   fault        the 1 GiB blob cold, without and with the upstream connection dropped at 50%
//   s3           large-blob on Stowage's S3 store (Ceph RGW started by the bench), Node and Deno
//   login-storm  p99 of cached manifest GETs during 200 clients' failed logins (Stowage only)
//   airgap       prefill, export and import of the test images next to skopeo doing the same
//   profile      main-thread CPU per GiB of one Stowage (Node) cold GET, by function (V8 profile,
//                and perf when installed); off unless named in --only or --profile is given
//
// Flags:
//   --only a,b,...        run only these scenarios (default: all but profile)
//   --peers a,b,...       stowage, deno, distribution, nginx (default: all four; the S3 scenario
//                         runs the Stowage ones among them)
//   --profile             add the profile scenario
//   --rounds N            every peer scenario N times, peer order alternating; medians shown
//   --counter nginx|harness  the upstream counting proxy (default nginx when installed)
//   --scenario-timeout S  every scenario's deadline in seconds (default: per scenario, 3-40 min)
//   --s3-endpoint URL     an S3 endpoint with a bucket "stowage-bench" instead of starting RGW
//   --no-build            do not run `npm run build` first (use the dist/ there is)
//   e.g. `npx tsx bench/run.ts --only large-blob,profile --peers stowage,nginx`
//
// Never hangs: every HTTP and S3 call the bench makes has a deadline, every scenario has one
// (bench/deadline.ts); a scenario that fails or times out is reported as such with its processes
// stopped, and the rest goes on. All results so far are written to bench/results/bench-<time>.json
// after each scenario (path printed at the start and under the report). The report goes to stdout
// (bench/report.ts); progress to stderr.
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../test/harness/images.ts";
import { pushTestImages, startRegistry } from "../test/harness/registry.ts";
import { ensureBigBlob, pushBigBlobImage } from "./big-blob.ts";
import { prepareNodeRuntime } from "./build.ts";
import { progress } from "./measure.ts";
import { nginxInstalled, startFileServer } from "./nginx.ts";
import { parseOptions } from "./options.ts";
import { runPlan } from "./plan.ts";
import { printReport } from "./report.ts";
import { resultsPath, saveResults, type Results } from "./results.ts";
import { imageBytes } from "./scenarios/concurrent-pull.ts";
import { wrkInstalled } from "./wrk.ts";

function imageNamed(images: TestImage[], name: string): TestImage {
  const img = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!img) throw new Error(`no test image ${name}`);
  return img;
}

async function loadAverage(): Promise<string> {
  return (await readFile("/proc/loadavg", "utf8")).split(" ")[0] ?? "?";
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  if (!nginxInstalled()) throw new Error("nginx is needed for the nginx peer and the warm-read ceiling (apt-get install nginx)");
  if (!wrkInstalled()) throw new Error("wrk is needed for the manifest rate (apt-get install wrk)");
  const startedAt = new Date().toISOString();
  const path = resultsPath(join(import.meta.dirname, "results"), startedAt);
  progress(`results so far are written after each scenario to ${path}`);
  const results: Results = {
    startedAt,
    args: process.argv.slice(2),
    rounds: opts.rounds,
    blobBytes: 0,
    burstImage: { name: "", bytes: 0 },
    counter: opts.counter === "nginx" ? "nginx, one process" : "test/e2e's recording proxy, in the bench process",
    nodeRuntime: "node",
    notes: [],
    peers: {},
    samples: {},
    commands: {},
    scenarios: [],
    faults: [],
    s3Skipped: null,
    errors: [],
    storm: null,
    airgap: null,
    profile: null,
    load: { before: await loadAverage(), cpus: availableParallelism() },
  };

  try {
    progress(opts.build ? "npm run build (Stowage on Node runs the built JavaScript)" : "using the dist/ there is (--no-build)");
    const node = await prepareNodeRuntime(opts.build);
    results.nodeRuntime = node.runtime;
    if (node.note) {
      results.notes.push(node.note);
      progress(node.note);
    }

    progress("building test images and the 1 GiB blob");
    const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
    const burstImg = imageNamed(images, "big-layer");
    const warmImg = imageNamed(images, "many-layers");
    const bigBlob = await ensureBigBlob(DEFAULT_IMAGE_CACHE_DIR);
    results.blobBytes = bigBlob.size;
    results.burstImage = { name: `${burstImg.repo}:${burstImg.tag}`, bytes: imageBytes(burstImg) };

    progress("starting the upstream registry and pushing the images");
    const upstream = await startRegistry();
    // Serves the blob's file for the warm-read ceiling, measured next to each peer's warm GETs.
    const files = await startFileServer(bigBlob.path);
    try {
      // Only the images the scenarios read: pushing the others costs time and measures nothing.
      await pushTestImages(upstream.url, [burstImg, warmImg]);
      const bigImg = await pushBigBlobImage(upstream.url, bigBlob);
      await runPlan({
        opts,
        results,
        path,
        setup: { counter: opts.counter, upstreamUrl: upstream.url, warmImg, nodeRuntime: node.runtime },
        images,
        burstImg,
        warmImg,
        bigImg,
        big: { repo: bigImg.repo, digest: bigBlob.digest, size: bigBlob.size },
        refs: { fileUrl: files.fileUrl, upstreamUrl: upstream.url },
        upstreamUrl: upstream.url,
      });
    } finally {
      await files.stop();
      await upstream.stop();
    }
  } catch (err) {
    // Whatever was measured before this still gets reported.
    const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
    results.errors.push(`the bench stopped early: ${msg.split("\n").slice(0, 4).join(" / ")}`);
    progress(`stopped early: ${msg}`);
  } finally {
    results.load.after = await loadAverage();
    await saveResults(path, results).catch((err: unknown) => progress(`could not write ${path}: ${String(err)}`));
    printReport(results, path);
    progress("done");
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(1);
  },
);
