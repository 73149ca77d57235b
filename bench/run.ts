// `npm run bench [-- --profile]`: Stowage against CNCF distribution in proxy mode, both pulling
// the 268 MB big-layer blob from the same local upstream registry. Each peer reaches the upstream
// through its own recording proxy, so the bytes it fetched can be counted.
//
// Measured per peer: cold GET (empty cache, after a warm-up pull of small blobs so JIT warm-up
// is not counted), warm GET (best of 3), 10 concurrent cold GETs on a fresh cache, peak RSS and
// CPU time per thread in each. --profile adds a CPU profile of Stowage's cold path.
import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../test/e2e/images.ts";
import { makeTempDir, pushTestImages, startRecordingProxy, startRegistry } from "../test/e2e/servers.ts";
import { summarizeProfile } from "./cpuprofile.ts";
import { curlBlob, type Download } from "./curl.ts";
import { PEER_NAMES, startPeer, type Peer, type PeerKind } from "./peers.ts";
import { cpuBetween, PeakRss, pidListeningOn, rssBytes, threadTimes, totalCpu, type CpuByThread } from "./proc.ts";

const CONCURRENT_CLIENTS = 10;
const WARM_REPEATS = 3;
const MB = 1e6;
const MiB = 1024 * 1024;
const PEERS: PeerKind[] = ["stowage", "distribution"];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)} s`;
const progress = (msg: string) => console.error(`[bench ${elapsed()}] ${msg}`);

type RecordingProxy = Awaited<ReturnType<typeof startRecordingProxy>>;
type Blob = { repo: string; digest: string; size: number };

function imageNamed(images: TestImage[], name: string): TestImage {
  const img = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!img) throw new Error(`no test image ${name}`);
  return img;
}

function blobUrl(base: string, b: Blob): string {
  return `${base}/v2/${b.repo}/blobs/${b.digest}`;
}

/** Upstream traffic for one blob as the recording proxy saw it. */
function upstreamFor(rp: RecordingProxy, b: Blob): { gets: number; bytes: number; allBytes: number } {
  const gets = rp.requests.filter((r) => r.method === "GET" && r.path === `/v2/${b.repo}/blobs/${b.digest}`);
  return {
    gets: gets.length,
    bytes: gets.reduce((s, r) => s + r.bytes, 0),
    allBytes: rp.requests.reduce((s, r) => s + r.bytes, 0),
  };
}

/**
 * Pulls every blob of a small image through the peer: the request path, the upstream client and
 * the store all run (and get compiled) before anything is timed. Same for every peer.
 */
async function warmUp(peer: Peer, img: TestImage): Promise<void> {
  const blobs = img.blobs;
  for (let i = 0; i < blobs.length; i += 5) {
    await Promise.all(
      blobs.slice(i, i + 5).map(async (b) => {
        const res = await fetch(blobUrl(peer.url, { repo: img.repo, digest: b.digest, size: b.size }));
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status !== 200 || body.byteLength !== b.size) throw new Error(`warm-up GET ${b.digest} from ${peer.kind}: ${res.status}, ${body.byteLength} bytes`);
      }),
    );
  }
}

type Measured<T> = {
  value: T;
  wallSeconds: number;
  peakRss: number;
  peerCpu: CpuByThread;
  upstreamCpu: number;
  /** CPU of this process, i.e. mostly the recording proxies (curl runs in its own processes). */
  benchCpu: number;
};

/** Runs `fn` while watching the peer's memory and the CPU time of everything on the data path. */
async function measure<T>(peer: Peer, upstreamPid: number, fn: () => Promise<T>): Promise<Measured<T>> {
  const rss = await PeakRss.start(peer.pid);
  const peerBefore = await threadTimes(peer.pid);
  const upBefore = await threadTimes(upstreamPid);
  const benchBefore = process.cpuUsage();
  const t0 = performance.now();
  const value = await fn();
  const wallSeconds = (performance.now() - t0) / 1000;
  // Work that finishes just after the last byte (commit, bookkeeping) belongs to the scenario.
  await sleep(250);
  const bench = process.cpuUsage(benchBefore);
  return {
    value,
    wallSeconds,
    peakRss: await rss.stop(),
    peerCpu: cpuBetween(peerBefore, await threadTimes(peer.pid)),
    upstreamCpu: totalCpu(cpuBetween(upBefore, await threadTimes(upstreamPid))),
    benchCpu: (bench.user + bench.system) / 1e6,
  };
}

type SequentialResult = {
  idleRss: number;
  cold: Measured<Download>;
  coldUpstream: { gets: number; bytes: number };
  warm: Measured<Download[]>;
  warmUpstream: { gets: number; bytes: number };
};

type ConcurrentResult = {
  run: Measured<Download[]>;
  upstream: { gets: number; bytes: number };
};

/** Cold GET on an empty cache, then warm GETs of the now cached blob, on one peer process. */
async function sequential(kind: PeerKind, upstreamUrl: string, upstreamPid: number, big: Blob, warmImg: TestImage): Promise<SequentialResult> {
  const rp = await startRecordingProxy(upstreamUrl);
  const peer = await startPeer(kind, rp.url);
  try {
    await warmUp(peer, warmImg);
    await sleep(500); // let the warm-up's own after-work (commits, GC) finish before measuring
    const idleRss = await rssBytes(peer.pid);
    rp.reset();
    const cold = await measure(peer, upstreamPid, () => curlBlob(blobUrl(peer.url, big), big.size));
    const coldUpstream = upstreamFor(rp, big);
    // distribution finishes writing its copy in the background; give both a moment to settle.
    await sleep(1000);
    rp.reset();
    const warm = await measure(peer, upstreamPid, async () => {
      const runs: Download[] = [];
      for (let i = 0; i < WARM_REPEATS; i++) runs.push(await curlBlob(blobUrl(peer.url, big), big.size));
      return runs;
    });
    return { idleRss, cold, coldUpstream, warm, warmUpstream: upstreamFor(rp, big) };
  } finally {
    await peer.stop();
    await rp.stop();
  }
}

/** CONCURRENT_CLIENTS simultaneous GETs of the same uncached blob on a fresh, empty peer. */
async function concurrent(kind: PeerKind, upstreamUrl: string, upstreamPid: number, big: Blob, warmImg: TestImage): Promise<ConcurrentResult> {
  const rp = await startRecordingProxy(upstreamUrl);
  const peer = await startPeer(kind, rp.url);
  try {
    await warmUp(peer, warmImg);
    await sleep(500);
    rp.reset();
    const run = await measure(peer, upstreamPid, () =>
      Promise.all(Array.from({ length: CONCURRENT_CLIENTS }, () => curlBlob(blobUrl(peer.url, big), big.size))),
    );
    return { run, upstream: upstreamFor(rp, big) };
  } finally {
    await peer.stop();
    await rp.stop();
  }
}

async function bestOf(n: number, url: string, size: number): Promise<Download> {
  let best: Download | null = null;
  for (let i = 0; i < n; i++) {
    const d = await curlBlob(url, size);
    if (!best || d.speed > best.speed) best = d;
  }
  return best!;
}

// ---------------------------------------------------------------------------
// Output

type Row = { label: string; s: number; p: number; fmt: (v: number) => string; better: "higher" | "lower" | "" };

const mbps = (v: number) => `${(v / MB).toFixed(1)} MB/s`;
const mib = (v: number) => `${(v / MiB).toFixed(1)} MiB`;
const mb = (v: number) => `${(v / MB).toFixed(1)} MB`;
const secs = (v: number) => `${v.toFixed(2)} s`;
const count = (v: number) => String(v);

function printTable(rows: Row[]): void {
  const header = ["scenario", PEER_NAMES.stowage, PEER_NAMES.distribution, "ratio (S/peer)", "better"];
  const cells = rows.map((r) => [r.label, r.fmt(r.s), r.fmt(r.p), r.p === 0 ? (r.s === 0 ? "=" : "n/a") : `${(r.s / r.p).toFixed(2)}×`, r.better]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i] ?? 0) : x.padStart(widths[i] ?? 0))).join(" | ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const c of cells) console.log(line(c));
}

function cpuLine(m: Measured<unknown>): string {
  const threads = [...m.peerCpu.entries()].sort((a, b) => b[1] - a[1]).filter(([, s]) => s >= 0.01);
  const parts = threads.map(([name, s]) => `${name} ${s.toFixed(2)}`).join(", ");
  return `${totalCpu(m.peerCpu).toFixed(2)} s CPU in ${m.wallSeconds.toFixed(2)} s wall (${parts || "-"}); upstream registry ${m.upstreamCpu.toFixed(2)} s, recording proxy (bench process) ${m.benchCpu.toFixed(2)} s`;
}

// ---------------------------------------------------------------------------
// Optional CPU profile of Stowage's cold path

async function profileCold(upstreamUrl: string, big: Blob, warmImg: TestImage): Promise<void> {
  const dir = await makeTempDir("bench-cpuprof");
  await mkdir(dir, { recursive: true });
  const rp = await startRecordingProxy(upstreamUrl);
  const nodeOptions = `${process.env.NODE_OPTIONS ?? ""} --cpu-prof --cpu-prof-dir=${dir}`.trim();
  const peer = await startPeer("stowage", rp.url, { env: { NODE_OPTIONS: nodeOptions } });
  let d: Download;
  try {
    await warmUp(peer, warmImg);
    await sleep(500);
    d = await curlBlob(blobUrl(peer.url, big), big.size);
    await sleep(500);
  } finally {
    await peer.stop(); // profiles are written as the process exits
    await rp.stop();
  }
  console.log(`\nCPU profile of Stowage's cold GET (${mbps(d.speed)} under the profiler; the profile covers the whole process life, warm-up included):`);
  // One file per thread: CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile; thread 0 is the main thread.
  const files = (await readdir(dir)).filter((f) => f.endsWith(".cpuprofile")).sort();
  for (const f of files) {
    const tid = f.split(".")[4] ?? "?";
    const s = await summarizeProfile(join(dir, f));
    const busy = s.totalMs - (s.byArea.find(([a]) => a === "idle")?.[1] ?? 0);
    if (busy < 50) continue; // threads that barely ran (e.g. the loader) say nothing here
    console.log(`\n  thread ${tid}${tid === "0" ? " (main)" : ""}: ${(s.totalMs / 1000).toFixed(2)} s profiled, ${(busy / 1000).toFixed(2)} s busy`);
    console.log(`    by area: ${s.byArea.map(([a, ms]) => `${a} ${(ms / 1000).toFixed(2)} s`).join(", ")}`);
    console.log("    top self time:");
    for (const [fn, ms] of s.topSelf) console.log(`      ${(ms / 1000).toFixed(3).padStart(7)} s  ${fn}`);
  }
  console.log(`  (profiles kept until exit in ${dir})`);
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const profile = process.argv.includes("--profile");

  progress("building test images");
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const bigImg = imageNamed(images, "big-layer");
  const bigDesc = [...bigImg.blobs].sort((a, b) => b.size - a.size)[0];
  if (!bigDesc) throw new Error("big-layer image has no blobs");
  const big: Blob = { repo: bigImg.repo, digest: bigDesc.digest, size: bigDesc.size };
  const warmImg = imageNamed(images, "many-layers");

  progress("starting the upstream registry and pushing the images");
  const upstream = await startRegistry();
  try {
    await pushTestImages(upstream.url, images);
    const upstreamPid = await pidListeningOn(upstream.port);

    progress("baseline: direct downloads from the upstream");
    const direct = await bestOf(WARM_REPEATS, blobUrl(upstream.url, big), big.size);
    const viaProxy = await (async () => {
      const rp = await startRecordingProxy(upstream.url);
      try {
        return await bestOf(WARM_REPEATS, blobUrl(rp.url, big), big.size);
      } finally {
        await rp.stop();
      }
    })();

    const seq = {} as Record<PeerKind, SequentialResult>;
    const conc = {} as Record<PeerKind, ConcurrentResult>;
    for (const kind of PEERS) {
      progress(`${PEER_NAMES[kind]}: cold then warm GETs`);
      seq[kind] = await sequential(kind, upstream.url, upstreamPid, big, warmImg);
    }
    for (const kind of PEERS) {
      progress(`${PEER_NAMES[kind]}: ${CONCURRENT_CLIENTS} concurrent cold GETs`);
      conc[kind] = await concurrent(kind, upstream.url, upstreamPid, big, warmImg);
    }

    const s = { seq: seq.stowage, conc: conc.stowage };
    const p = { seq: seq.distribution, conc: conc.distribution };
    const warmBest = (r: SequentialResult) => Math.max(...r.warm.value.map((d) => d.speed));
    const served = (r: ConcurrentResult) => r.run.value.reduce((sum, d) => sum + d.bytes, 0);
    const rows: Row[] = [
      { label: "cold GET", s: s.seq.cold.value.speed, p: p.seq.cold.value.speed, fmt: mbps, better: "higher" },
      { label: "cold GET time to first byte", s: s.seq.cold.value.ttfb, p: p.seq.cold.value.ttfb, fmt: secs, better: "lower" },
      { label: "cold GET upstream bytes", s: s.seq.coldUpstream.bytes, p: p.seq.coldUpstream.bytes, fmt: mb, better: "lower" },
      { label: `warm GET (best of ${WARM_REPEATS})`, s: warmBest(s.seq), p: warmBest(p.seq), fmt: mbps, better: "higher" },
      { label: "warm GETs upstream bytes", s: s.seq.warmUpstream.bytes, p: p.seq.warmUpstream.bytes, fmt: mb, better: "lower" },
      { label: `${CONCURRENT_CLIENTS}× concurrent cold: wall time`, s: s.conc.run.wallSeconds, p: p.conc.run.wallSeconds, fmt: secs, better: "lower" },
      { label: `${CONCURRENT_CLIENTS}× concurrent cold: served/wall`, s: served(s.conc) / s.conc.run.wallSeconds, p: served(p.conc) / p.conc.run.wallSeconds, fmt: mbps, better: "higher" },
      { label: `${CONCURRENT_CLIENTS}× concurrent cold: bytes served`, s: served(s.conc), p: served(p.conc), fmt: mb, better: "" },
      { label: `${CONCURRENT_CLIENTS}× concurrent cold: upstream bytes`, s: s.conc.upstream.bytes, p: p.conc.upstream.bytes, fmt: mb, better: "lower" },
      { label: `${CONCURRENT_CLIENTS}× concurrent cold: upstream GETs`, s: s.conc.upstream.gets, p: p.conc.upstream.gets, fmt: count, better: "lower" },
      { label: "RSS idle after warm-up", s: s.seq.idleRss, p: p.seq.idleRss, fmt: mib, better: "lower" },
      { label: "peak RSS: cold GET", s: s.seq.cold.peakRss, p: p.seq.cold.peakRss, fmt: mib, better: "lower" },
      { label: "peak RSS: warm GETs", s: s.seq.warm.peakRss, p: p.seq.warm.peakRss, fmt: mib, better: "lower" },
      { label: `peak RSS: ${CONCURRENT_CLIENTS}× concurrent cold`, s: s.conc.run.peakRss, p: p.conc.run.peakRss, fmt: mib, better: "lower" },
      { label: "CPU: cold GET", s: totalCpu(s.seq.cold.peerCpu), p: totalCpu(p.seq.cold.peerCpu), fmt: secs, better: "lower" },
      { label: `CPU: warm GETs (${WARM_REPEATS})`, s: totalCpu(s.seq.warm.peerCpu), p: totalCpu(p.seq.warm.peerCpu), fmt: secs, better: "lower" },
      { label: `CPU: ${CONCURRENT_CLIENTS}× concurrent cold`, s: totalCpu(s.conc.run.peerCpu), p: totalCpu(p.conc.run.peerCpu), fmt: secs, better: "lower" },
    ];

    console.log(`\nBlob ${big.repo}@${big.digest.slice(0, 19)}…, ${mb(big.size)}; MB = 1e6 bytes, MiB = 2^20 bytes; downloads by curl to /dev/null.\n`);
    printTable(rows);
    console.log(`\nbaseline, direct from the upstream registry (best of ${WARM_REPEATS}): ${mbps(direct.speed)}`);
    console.log(`baseline, upstream through a recording proxy (best of ${WARM_REPEATS}): ${mbps(viaProxy.speed)}  (the path each peer's cold fetch takes)`);

    console.log("\nCPU time by thread (seconds; user+system, from /proc/<pid>/task/*/stat):");
    for (const kind of PEERS) {
      console.log(`  ${PEER_NAMES[kind]} cold GET:        ${cpuLine(seq[kind].cold)}`);
      console.log(`  ${PEER_NAMES[kind]} warm GETs:       ${cpuLine(seq[kind].warm)}`);
      console.log(`  ${PEER_NAMES[kind]} concurrent cold: ${cpuLine(conc[kind].run)}`);
    }
    const spread = (r: ConcurrentResult) => {
      const t = r.run.value.map((d) => d.total).sort((a, b) => a - b);
      return `${secs(t[0] ?? 0)} … ${secs(t[t.length - 1] ?? 0)}`;
    };
    console.log(`\nper-client time in the concurrent run: Stowage ${spread(s.conc)}, distribution proxy ${spread(p.conc)}`);

    if (profile) {
      progress("profiling Stowage's cold path");
      await profileCold(upstream.url, big, warmImg);
    }
  } finally {
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
