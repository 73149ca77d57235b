// `npm run bench [-- --counter nginx|harness] [--rounds N] [--profile]`
//
// Stowage against CNCF distribution in proxy mode, both pulling the 268 MB big-layer blob from
// the same local upstream registry. Each peer reaches the upstream through its own counting proxy
// (nginx if installed, else test/e2e's recording proxy), so the bytes each fetched can be counted.
//
// Per peer: cold GET (empty cache, after a warm-up pull of small blobs so JIT warm-up is not
// counted), warm GET (best of 3), 10 concurrent cold GETs on a fresh cache; in each, peak RSS, CPU
// time and minor page faults. With --rounds N every scenario runs N times (peer order alternating)
// and the table shows medians. --profile adds a V8 + perf profile of Stowage's cold path.
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../test/e2e/images.ts";
import { pushTestImages, startRegistry } from "../test/e2e/servers.ts";
import { nginxInstalled, startCounter, type CounterKind, type Traffic, type UpstreamCounter } from "./counters.ts";
import { curlBlob, type Download } from "./curl.ts";
import { PEER_NAMES, startPeer, type Peer, type PeerKind } from "./peers.ts";
import { cpuBetween, PeakRss, pidListeningOn, processCpuSeconds, rssBytes, threadTimes, type CpuUse } from "./proc.ts";
import { printProfile, profiled, profilingEnv, removePerfMap } from "./profile.ts";

const CONCURRENT_CLIENTS = 10;
const WARM_REPEATS = 3;
const MB = 1e6;
const MiB = 1024 * 1024;
const PEERS: PeerKind[] = ["stowage", "distribution"];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const started = performance.now();
const progress = (msg: string) => console.error(`[bench ${((performance.now() - started) / 1000).toFixed(1)} s] ${msg}`);

type Blob = { repo: string; digest: string; size: number };

function imageNamed(images: TestImage[], name: string): TestImage {
  const img = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!img) throw new Error(`no test image ${name}`);
  return img;
}

const blobPath = (b: { repo: string; digest: string }) => `/v2/${b.repo}/blobs/${b.digest}`;

/**
 * Pulls every blob of a small image through the peer: the request path, the upstream client and
 * the store all run (and get compiled) before anything is timed. Same for every peer.
 */
async function warmUp(peer: Peer, img: TestImage): Promise<void> {
  for (let i = 0; i < img.blobs.length; i += 5) {
    await Promise.all(
      img.blobs.slice(i, i + 5).map(async (b) => {
        const res = await fetch(peer.url + blobPath({ repo: img.repo, digest: b.digest }));
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status !== 200 || body.byteLength !== b.size) throw new Error(`warm-up GET ${b.digest} from ${peer.kind}: ${res.status}, ${body.byteLength} bytes`);
      }),
    );
  }
  // Let the warm-up's after-work (commits, GC) finish before anything is measured.
  await sleep(500);
}

type Measured<T> = {
  value: T;
  wallSeconds: number;
  peakRss: number;
  peer: CpuUse;
  upstreamCpu: number;
  counterCpu: number;
};

type Context = { upstreamPid: number; counter: UpstreamCounter };

/** Runs `fn` while watching the peer's memory and the CPU time of everything on the data path. */
async function measure<T>(peer: Peer, ctx: Context, fn: () => Promise<T>): Promise<Measured<T>> {
  const rss = await PeakRss.start(peer.pid);
  const peerBefore = await threadTimes(peer.pid);
  const upBefore = await processCpuSeconds(ctx.upstreamPid);
  const counterBefore = await ctx.counter.cpuSeconds();
  const t0 = performance.now();
  const value = await fn();
  const wallSeconds = (performance.now() - t0) / 1000;
  // Work that finishes just after the last byte (commit, bookkeeping, access log) belongs to the scenario.
  await sleep(250);
  return {
    value,
    wallSeconds,
    peakRss: await rss.stop(),
    peer: cpuBetween(peer.pid, peerBefore, await threadTimes(peer.pid)),
    upstreamCpu: (await processCpuSeconds(ctx.upstreamPid)) - upBefore,
    counterCpu: (await ctx.counter.cpuSeconds()) - counterBefore,
  };
}

type SequentialResult = { idleRss: number; cold: Measured<{ download: Download; storedAfter: number }>; coldUp: Traffic; warm: Measured<Download[]>; warmUp: Traffic };
type ConcurrentResult = { run: Measured<Download[]>; up: Traffic };

/** A fresh counter and an empty peer behind it, warmed up; both stopped after `fn`. */
async function withPeer<T>(
  kind: PeerKind,
  opts: { counter: CounterKind; upstreamUrl: string; upstreamPid: number; warmImg: TestImage; env?: Record<string, string> },
  fn: (peer: Peer, ctx: Context) => Promise<T>,
): Promise<T> {
  const counter = await startCounter(opts.counter, opts.upstreamUrl);
  try {
    const peer = await startPeer(kind, counter.url, { env: opts.env });
    try {
      await warmUp(peer, opts.warmImg);
      await counter.reset();
      return await fn(peer, { upstreamPid: opts.upstreamPid, counter });
    } finally {
      await peer.stop();
    }
  } finally {
    await counter.stop();
  }
}

/** Polls until the peer has committed the blob; resolves to the seconds that took. */
async function untilCached(peer: Peer, big: Blob, timeoutMs = 60_000): Promise<number> {
  const t0 = performance.now();
  while (!(await peer.hasBlob(big.digest, big.size))) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`${PEER_NAMES[peer.kind]} had not stored ${big.digest} ${timeoutMs} ms after serving it`);
    await sleep(20);
  }
  return (performance.now() - t0) / 1000;
}

/** Cold GET on an empty cache, then warm GETs of the now cached blob, on one peer process. */
async function sequential(peer: Peer, ctx: Context, big: Blob): Promise<SequentialResult> {
  const url = peer.url + blobPath(big);
  const idleRss = await rssBytes(peer.pid);
  // distribution stores its copy from a second, background upstream GET; warm GETs before that
  // lands would go upstream again, so wait for the blob file (and time how long it took). The
  // storing is part of the cold GET's cost, so it runs inside the measurement.
  const cold = await measure(peer, ctx, async () => {
    const download = await curlBlob(url, big.size);
    return { download, storedAfter: await untilCached(peer, big) };
  });
  const coldUp = await ctx.counter.traffic(blobPath(big));
  await ctx.counter.reset();
  const warm = await measure(peer, ctx, async () => {
    const runs: Download[] = [];
    for (let i = 0; i < WARM_REPEATS; i++) runs.push(await curlBlob(url, big.size));
    return runs;
  });
  return { idleRss, cold, coldUp, warm, warmUp: await ctx.counter.traffic(blobPath(big)) };
}

/** CONCURRENT_CLIENTS simultaneous GETs of the same uncached blob on a fresh, empty peer. */
async function concurrent(peer: Peer, ctx: Context, big: Blob): Promise<ConcurrentResult> {
  const url = peer.url + blobPath(big);
  const run = await measure(peer, ctx, () => Promise.all(Array.from({ length: CONCURRENT_CLIENTS }, () => curlBlob(url, big.size))));
  await sleep(500);
  return { run, up: await ctx.counter.traffic(blobPath(big)) };
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

type Round = { seq: SequentialResult; conc: ConcurrentResult };
type Row = { label: string; get: (r: Round) => number; fmt: (v: number) => string; better: "higher" | "lower" | "" };

const mbps = (v: number) => `${(v / MB).toFixed(1)} MB/s`;
const mib = (v: number) => `${(v / MiB).toFixed(1)} MiB`;
const mb = (v: number) => `${(v / MB).toFixed(1)} MB`;
const secs = (v: number) => `${v.toFixed(2)} s`;
const count = (v: number) => Math.round(v).toLocaleString("en-US");

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

/** The median, and with several rounds the range too, as the column shows it. */
function cell(xs: number[], fmt: (v: number) => string): string {
  if (xs.length < 2) return fmt(median(xs));
  const bare = (v: number) => fmt(v).split(" ")[0] ?? "";
  return `${fmt(median(xs))} (${bare(Math.min(...xs))}–${bare(Math.max(...xs))})`;
}

function printTable(rows: Row[], rounds: Record<PeerKind, Round[]>): void {
  const multi = rounds.stowage.length > 1;
  const header = ["scenario", PEER_NAMES.stowage, PEER_NAMES.distribution, "ratio S/peer", "better"];
  const cells = rows.map((r) => {
    const s = rounds.stowage.map(r.get);
    const p = rounds.distribution.map(r.get);
    const ms = median(s);
    const mp = median(p);
    const ratio = mp === 0 ? (ms === 0 ? "=" : "n/a") : `${(ms / mp).toFixed(2)}×`;
    return [r.label, cell(s, r.fmt), cell(p, r.fmt), ratio, r.better];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i] ?? 0) : x.padStart(widths[i] ?? 0))).join(" | ");
  if (multi) console.log(`Medians of ${rounds.stowage.length} rounds (min–max in parentheses); the ratio is of the medians.\n`);
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const c of cells) console.log(line(c));
}

function cpuLine(m: Measured<unknown>, counter: CounterKind): string {
  const others = m.peer.others;
  const top = others.slice(0, 3).map((s) => s.toFixed(2));
  const restSum = others.slice(3).reduce((a, b) => a + b, 0);
  const busiest = top.length ? ` + busiest other threads ${top.join(", ")}` : "";
  const rest = others.length > 3 ? ` + ${others.length - 3} more ${restSum.toFixed(2)}` : "";
  const counterName = counter === "harness" ? "recording proxy (this process)" : "nginx counter";
  return (
    `${m.peer.total.toFixed(2)} s in ${m.wallSeconds.toFixed(2)} s wall = main ${m.peer.main.toFixed(2)}${busiest}${rest}; ` +
    `${count(m.peer.minorFaults)} minor faults | upstream registry ${m.upstreamCpu.toFixed(2)} s, ${counterName} ${m.counterCpu.toFixed(2)} s`
  );
}

async function loadAverage(): Promise<string> {
  return (await readFile("/proc/loadavg", "utf8")).split(" ")[0] ?? "?";
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      // nginx when installed: test/e2e's recording proxy costs ~2 CPU s per 268 MB here and caps
      // every cold fetch at 100–170 MB/s, which would measure the harness more than the peers.
      counter: { type: "string", default: nginxInstalled() ? "nginx" : "harness" },
      rounds: { type: "string", default: "2" },
      profile: { type: "boolean", default: false },
    },
  });
  if (values.counter !== "harness" && values.counter !== "nginx") throw new Error(`--counter must be harness or nginx, not ${values.counter}`);
  const counterKind: CounterKind = values.counter;
  const roundCount = Number(values.rounds);
  if (!Number.isInteger(roundCount) || roundCount < 1) throw new Error(`--rounds must be a positive integer, not ${values.rounds}`);
  const loadBefore = await loadAverage();

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
    // Only the two images the scenarios read: pushing the other four costs time and measures nothing.
    await pushTestImages(upstream.url, [bigImg, warmImg]);
    const upstreamPid = await pidListeningOn(upstream.port);
    const opts = { counter: counterKind, upstreamUrl: upstream.url, upstreamPid, warmImg };

    progress("baseline: downloads straight from the upstream, and through a counter");
    const direct = await bestOf(WARM_REPEATS, upstream.url + blobPath(big), big.size);
    const viaCounter = await (async () => {
      const c = await startCounter(counterKind, upstream.url);
      try {
        return await bestOf(WARM_REPEATS, c.url + blobPath(big), big.size);
      } finally {
        await c.stop();
      }
    })();

    const rounds: Record<PeerKind, Round[]> = { stowage: [], distribution: [] };
    for (let round = 0; round < roundCount; round++) {
      // Alternating who goes first spreads slow drift on the machine over both peers.
      const order = round % 2 === 0 ? PEERS : [...PEERS].reverse();
      const tag = roundCount > 1 ? ` (round ${round + 1}/${roundCount})` : "";
      const seq = {} as Record<PeerKind, SequentialResult>;
      for (const kind of order) {
        progress(`${PEER_NAMES[kind]}: cold then warm GETs${tag}`);
        seq[kind] = await withPeer(kind, opts, (peer, ctx) => sequential(peer, ctx, big));
      }
      for (const kind of order) {
        progress(`${PEER_NAMES[kind]}: ${CONCURRENT_CLIENTS} concurrent cold GETs, fresh cache${tag}`);
        const conc = await withPeer(kind, opts, (peer, ctx) => concurrent(peer, ctx, big));
        rounds[kind].push({ seq: seq[kind], conc });
      }
    }

    const warmBest = (r: Round) => Math.max(...r.seq.warm.value.map((d) => d.speed));
    const served = (r: Round) => r.conc.run.value.reduce((sum, d) => sum + d.bytes, 0);
    const n = CONCURRENT_CLIENTS;
    const rows: Row[] = [
      { label: "cold GET", get: (r) => r.seq.cold.value.download.speed, fmt: mbps, better: "higher" },
      { label: "cold GET: time to first byte", get: (r) => r.seq.cold.value.download.ttfb, fmt: secs, better: "lower" },
      { label: "cold GET: upstream bytes", get: (r) => r.seq.coldUp.bytes, fmt: mb, better: "lower" },
      { label: "cold GET: in cache, after last byte", get: (r) => r.seq.cold.value.storedAfter, fmt: secs, better: "lower" },
      { label: `warm GET (best of ${WARM_REPEATS})`, get: warmBest, fmt: mbps, better: "higher" },
      { label: "warm GETs: upstream bytes", get: (r) => r.seq.warmUp.bytes, fmt: mb, better: "lower" },
      { label: `${n}× concurrent cold: wall time`, get: (r) => r.conc.run.wallSeconds, fmt: secs, better: "lower" },
      { label: `${n}× concurrent cold: served / wall`, get: (r) => served(r) / r.conc.run.wallSeconds, fmt: mbps, better: "higher" },
      { label: `${n}× concurrent cold: bytes served`, get: served, fmt: mb, better: "" },
      { label: `${n}× concurrent cold: upstream bytes`, get: (r) => r.conc.up.bytes, fmt: mb, better: "lower" },
      { label: `${n}× concurrent cold: upstream GETs`, get: (r) => r.conc.up.gets, fmt: count, better: "lower" },
      { label: "RSS idle after warm-up", get: (r) => r.seq.idleRss, fmt: mib, better: "lower" },
      { label: "peak RSS: cold GET", get: (r) => r.seq.cold.peakRss, fmt: mib, better: "lower" },
      { label: "peak RSS: warm GETs", get: (r) => r.seq.warm.peakRss, fmt: mib, better: "lower" },
      { label: `peak RSS: ${n}× concurrent cold`, get: (r) => r.conc.run.peakRss, fmt: mib, better: "lower" },
      { label: "CPU: cold GET", get: (r) => r.seq.cold.peer.total, fmt: secs, better: "lower" },
      { label: `CPU: warm GETs (${WARM_REPEATS})`, get: (r) => r.seq.warm.peer.total, fmt: secs, better: "lower" },
      { label: `CPU: ${n}× concurrent cold`, get: (r) => r.conc.run.peer.total, fmt: secs, better: "lower" },
      { label: "minor page faults: cold GET", get: (r) => r.seq.cold.peer.minorFaults, fmt: count, better: "lower" },
      { label: "minor page faults: warm GETs", get: (r) => r.seq.warm.peer.minorFaults, fmt: count, better: "lower" },
    ];

    console.log(`\nBlob ${big.repo}@${big.digest.slice(0, 19)}…, ${mb(big.size)}. MB = 1e6 bytes, MiB = 2^20 bytes. Downloads: curl to /dev/null.`);
    console.log(`Upstream counter in front of each peer: ${counterKind === "harness" ? "test/e2e recording proxy (node, in this process)" : "nginx, one process"}.\n`);
    printTable(rows, rounds);
    console.log(`\nbaseline: direct from the upstream registry, best of ${WARM_REPEATS}: ${mbps(direct.speed)}`);
    console.log(`baseline: upstream through the counter, best of ${WARM_REPEATS}: ${mbps(viaCounter.speed)}  (the path of every cold fetch: a ceiling for both peers)`);

    console.log("\nCPU seconds (user+system, /proc/<pid>/stat) and minor page faults of each peer process:");
    rounds.stowage.forEach((_, i) => {
      if (roundCount > 1) console.log(`  round ${i + 1}:`);
      for (const kind of PEERS) {
        const r = rounds[kind][i]!;
        const name = PEER_NAMES[kind].padEnd(18);
        console.log(`  ${name} cold:       ${cpuLine(r.seq.cold, counterKind)}`);
        console.log(`  ${name} warm (×${WARM_REPEATS}):   ${cpuLine(r.seq.warm, counterKind)}`);
        console.log(`  ${name} concurrent: ${cpuLine(r.conc.run, counterKind)}`);
      }
    });
    const spread = (r: Round) => {
      const t = r.conc.run.value.map((d) => d.total).sort((a, b) => a - b);
      return `${(t[0] ?? 0).toFixed(1)}…${(t[t.length - 1] ?? 0).toFixed(1)} s`;
    };
    const speeds = (r: Round) => r.seq.warm.value.map((d) => (d.speed / MB).toFixed(0)).join("/");
    console.log(`\nper-client time, concurrent run: Stowage ${rounds.stowage.map(spread).join("; ")}, distribution proxy ${rounds.distribution.map(spread).join("; ")}`);
    console.log(`each warm GET (MB/s): Stowage ${rounds.stowage.map(speeds).join("; ")}, distribution proxy ${rounds.distribution.map(speeds).join("; ")}`);
    const loadAfter = await loadAverage();
    console.log(`machine load average (1 min) before/after: ${loadBefore}/${loadAfter} on ${availableParallelism()} CPUs${Number(loadBefore) > 0.5 ? "; something else was running, so expect noise" : ""}`);

    if (values.profile) {
      progress("profiling Stowage's cold path");
      const { env, profilePath } = await profilingEnv();
      await withPeer("stowage", { ...opts, env }, async (peer) => {
        try {
          const run = await profiled(peer.pid, profilePath, () => curlBlob(peer.url + blobPath(big), big.size));
          console.log(`\nProfile of one Stowage cold GET (${mbps(run.value.speed)} with the profilers on):`);
          await printProfile(run);
        } finally {
          await removePerfMap(peer.pid);
        }
      });
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
