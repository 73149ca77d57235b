// The report's rows: which figure each shows, and the targets of issue 11 it is held to. Targets
// apply to Stowage on Node (the built JavaScript) and are ratios to figures measured in the same
// run; Deno's column has figures only. "ahead" rows also check Stowage beats both peers.
import { SETTLE_MS } from "./measure.ts";
import type { PeerKind } from "./peers.ts";
import { CLIENTS } from "./scenarios/concurrent-pull.ts";
import { WARM_REPEATS } from "./scenarios/large-blob.ts";
import { WRK } from "./scenarios/manifests.ts";

const MB = 1e6;
const MiB = 1024 * 1024;
export const fmt = {
  mbps: (v: number) => `${(v / MB).toFixed(1)} MB/s`,
  mib: (v: number) => `${(v / MiB).toFixed(1)} MiB`,
  mb: (v: number) => `${(v / MB).toFixed(1)} MB`,
  secs: (v: number) => `${v.toFixed(2)} s`,
  ms: (v: number) => `${(v * 1000).toFixed(2)} ms`,
  msInt: (v: number) => `${v.toFixed(0)} ms`,
  times: (v: number) => `${v.toFixed(2)}×`,
  count: (v: number) => Math.round(v).toLocaleString("en-US"),
  yesNo: (v: number) => (v ? "yes" : "NO"),
};

export type Target = { text: string; met: boolean | null };
/** The median of a figure for a peer over the run (NaN when not measured). */
export type Med = (kind: PeerKind, key: string) => number;

export type Row =
  | { section: string; scenario: string }
  | { note: string }
  | {
      label: string;
      key: string;
      fmt: (v: number) => string;
      /** The S3 section: the Stowage columns show the S3 peers, the other peers' columns stay empty. */
      s3?: true;
      /** A reference measured next to each peer: the columns differ by drift alone. */
      reference?: true;
      /** Which way is better, for rows where Stowage must be ahead of both peers. */
      ahead?: "higher" | "lower";
      target?: (v: number, med: Med) => Target;
    };

const info = (text: string): Target => ({ text, met: null });
const atMost = (limit: number, show: (v: number) => string) => (v: number): Target => ({ text: `≤ ${show(limit)}`, met: v <= limit });
const oneCopy = (bytes: number) => (v: number): Target => ({ text: `one copy (${fmt.mb(bytes)})`, met: v === bytes });
/** `v` against `factor` × a reference, showing the ratio reached. */
function ratioTarget(v: number, ref: number, factor: number, op: "≥" | "≤", what: string): Target {
  if (!Number.isFinite(ref) || ref === 0) return { text: `${op} ${factor}× ${what} (not measured)`, met: null };
  const r = v / ref;
  return { text: `${op} ${factor}× ${what}: ${r.toFixed(2)}×`, met: op === "≥" ? r >= factor : r <= factor };
}
const FS_PEAK = 128 * MiB;
const S3_PEAK = 160 * MiB;
const peak = atMost(FS_PEAK, fmt.mib);
const s3Peak = atMost(S3_PEAK, fmt.mib);

/** The rows of the scenarios in `ran` (start-up figures come from every scenario's starts). */
export function reportRows(blob: number, burst: { name: string; bytes: number }, s3Skipped: string | null, ran: Set<string>): Row[] {
  return allRows(blob, burst, s3Skipped).filter((_row, i, all) => ran.has(sectionOf(all, i)));
}

function sectionOf(rows: Row[], i: number): string {
  for (let j = i; j >= 0; j--) {
    const r = rows[j];
    if (r && "section" in r) return r.scenario;
  }
  return "";
}

function allRows(blob: number, burst: { name: string; bytes: number }, s3Skipped: string | null): Row[] {
  const rows: Row[] = [
    { section: "start-up and footprint (every start of every scenario)", scenario: "startup" },
    { label: "start-up: spawn to first answered GET /v2/ (median)", key: "startup.ms", fmt: fmt.msInt, target: atMost(300, fmt.msInt) },
    { label: "RSS right after warm-up (median)", key: "idle.rss", fmt: fmt.mib },
    { label: `RSS idle: ${SETTLE_MS / 1000} s after warm-up, settled (first start)`, key: "idle.settledRss", fmt: fmt.mib, target: (v) => ({ text: "≤ 64.0 MiB", met: v <= 64 * MiB }) },

    { section: `1 GiB blob (${fmt.count(blob)} bytes), one client`, scenario: "large-blob" },
    { label: "ref: nginx sending the blob file (page cache), best of 3", key: "ref.ceiling", fmt: fmt.mbps, reference: true },
    { label: "ref: direct from the upstream registry", key: "ref.direct", fmt: fmt.mbps, reference: true },
    { label: "ref: upstream through the counter (the cold fetch's path)", key: "ref.viaCounter", fmt: fmt.mbps, reference: true },
    { label: "ref: writing 1 GiB to the peers' disk (1 MiB writes, no fsync)", key: "ref.diskWrite", fmt: fmt.mbps, reference: true },
    {
      label: "cold GET",
      key: "cold.speed",
      fmt: fmt.mbps,
      ahead: "higher",
      target: (v, med) => {
        const best = Math.max(med("distribution", "cold.speed"), med("nginx", "cold.speed"));
        const a = ratioTarget(v, best, 1.0, "≥", "best peer");
        const b = ratioTarget(v, med("stowage", "ref.direct"), 0.5, "≥", "direct");
        return { text: `${a.text}; ${b.text}`, met: a.met === null || b.met === null ? null : a.met && b.met };
      },
    },
    { label: "cold GET: time to first byte", key: "cold.ttfb", fmt: fmt.secs },
    { label: "cold GET: committed, after the last byte", key: "cold.stored", fmt: fmt.secs },
    { label: "cold GET: upstream bytes", key: "cold.upBytes", fmt: fmt.mb, target: oneCopy(blob) },
    {
      label: `warm GET (best of ${WARM_REPEATS})`,
      key: "warm.speed",
      fmt: fmt.mbps,
      ahead: "higher",
      target: (v, med) => ratioTarget(v, med("stowage", "ref.ceiling"), 0.8, "≥", "nginx file"),
    },
    { label: "warm GETs: upstream bytes", key: "warm.upBytes", fmt: fmt.mb, target: (v) => ({ text: "0", met: v === 0 }) },
    { label: "peak RSS: cold GET", key: "cold.rss", fmt: fmt.mib, target: peak },
    { label: "peak RSS: warm GETs", key: "warm.rss", fmt: fmt.mib, target: peak },
    { label: "CPU: cold GET", key: "cold.cpu", fmt: fmt.secs },
    { label: "CPU: one warm GET", key: "warm.cpu", fmt: fmt.secs },

    { section: `${CLIENTS} clients pull the same cold image at once (${burst.name}, ${fmt.mb(burst.bytes)})`, scenario: "pull" },
    { label: "ref: writing the image to the peers' disk, just before the 1 client", key: "single.diskWrite", fmt: fmt.mbps, reference: true },
    { label: `ref: the same, just before the ${CLIENTS} clients`, key: "burst.diskWrite", fmt: fmt.mbps, reference: true },
    { label: "1 client, cold: wall time", key: "single.wall", fmt: fmt.secs, ahead: "lower" },
    { label: "1 client, cold: peak RSS", key: "single.rss", fmt: fmt.mib, target: peak },
    {
      label: `${CLIENTS} clients, cold: wall time`,
      key: "burst.wall",
      fmt: fmt.secs,
      ahead: "lower",
      target: (v, med) => ratioTarget(v, med("stowage", "burstWarm.wall"), 1.1, "≤", "cached burst"),
    },
    { label: `${CLIENTS} clients, cold: upstream blob bytes`, key: "burst.upBytes", fmt: fmt.mb, target: oneCopy(burst.bytes) },
    { label: `${CLIENTS} clients, cold: upstream blob GETs`, key: "burst.upGets", fmt: fmt.count },
    { label: `${CLIENTS} clients, cold: blob bytes served`, key: "burst.served", fmt: fmt.mb, target: (v) => ({ text: `${CLIENTS} copies`, met: v === CLIENTS * burst.bytes }) },
    { label: `${CLIENTS} clients, cold: peak RSS`, key: "burst.rss", fmt: fmt.mib, target: peak },
    { label: `${CLIENTS} clients, cold: CPU`, key: "burst.cpu", fmt: fmt.secs },
    {
      label: `${CLIENTS} clients, image cached: wall time`,
      key: "burstWarm.wall",
      fmt: fmt.secs,
      ahead: "lower",
      target: (v, med) => ratioTarget(v, med("distribution", "burstWarm.wall"), 1.0, "≤", "distribution"),
    },
    { label: `${CLIENTS} clients, image cached: peak RSS`, key: "burstWarm.rss", fmt: fmt.mib, target: peak },

    { section: `cached manifest GET by tag (wrk -t${WRK.threads} -c${WRK.connections} -d${WRK.seconds}s)`, scenario: "large-blob" },
    { label: "requests/s", key: "manifest.rps", fmt: fmt.count, ahead: "higher", target: (v, med) => ratioTarget(v, med("distribution", "manifest.rps"), 3, "≥", "distribution") },
    { label: "p99 latency", key: "manifest.p99", fmt: fmt.ms, ahead: "lower" },
    { label: "p50 latency", key: "manifest.p50", fmt: fmt.ms },
    { label: "non-2xx answers + socket errors", key: "manifest.errors", fmt: fmt.count, target: (v) => ({ text: "0", met: v === 0 }) },
    { label: "peak RSS", key: "manifest.rss", fmt: fmt.mib, target: peak },
    { label: "CPU", key: "manifest.cpu", fmt: fmt.secs },

    { section: "upstream drops the connection once at 50% of the 1 GiB blob (cold GET)", scenario: "fault" },
    { label: "pull succeeded (200, all bytes, sha256)", key: "fault.ok", fmt: fmt.yesNo, target: (v) => ({ text: "yes", met: v === 1 }) },
    { label: "bytes the client received", key: "fault.bytes", fmt: fmt.mb, target: (v) => ({ text: fmt.mb(blob), met: v === blob }) },
    { label: "wall time with the fault", key: "fault.wall", fmt: fmt.secs },
    { label: "wall time, same path without fault", key: "fault.clean.wall", fmt: fmt.secs },
    { label: "with fault / without", key: "fault.slowdown", fmt: fmt.times, target: () => info("how much the fault costs") },
    { label: "upstream bytes with the fault", key: "fault.upBytes", fmt: fmt.mb, target: () => info(`ideally ${fmt.mb(blob)}`) },
    { label: "peak RSS with the fault", key: "fault.rss", fmt: fmt.mib, target: peak },

    { section: "S3 store (Ceph RGW, memstore): the Stowage columns are Stowage on S3", scenario: "s3" },
  ];
  if (s3Skipped !== null) return [...rows, { note: `  skipped: ${s3Skipped}` }];
  const fs = (key: string, show: (v: number) => string) => (_v: number, med: Med) => info(`ref: Stowage (Node) on fs ${show(med("stowage", key))}`);
  rows.push(
    { label: "S3: start-up to first answered GET /v2/", key: "startup.ms", fmt: fmt.msInt, s3: true, target: atMost(300, fmt.msInt) },
    { label: "S3: RSS idle, after warm-up", key: "idle.rss", fmt: fmt.mib, s3: true },
    { label: "S3: cold GET 1 GiB", key: "cold.speed", fmt: fmt.mbps, s3: true, target: (v, med) => ratioTarget(v, med("stowage", "cold.speed"), 0.8, "≥", "fs cold") },
    { label: "S3: warm GET 1 GiB (best of 3)", key: "warm.speed", fmt: fmt.mbps, s3: true, target: fs("warm.speed", fmt.mbps) },
    { label: "S3: cold GET committed, after the last byte", key: "cold.stored", fmt: fmt.secs, s3: true, target: fs("cold.stored", fmt.secs) },
    { label: "S3: cold GET upstream bytes", key: "cold.upBytes", fmt: fmt.mb, s3: true, target: oneCopy(blob) },
    { label: "S3: peak RSS, cold GET", key: "cold.rss", fmt: fmt.mib, s3: true, target: s3Peak },
    { label: "S3: peak RSS, warm GETs", key: "warm.rss", fmt: fmt.mib, s3: true, target: s3Peak },
    { label: "S3: peak RSS, manifest GETs", key: "manifest.rss", fmt: fmt.mib, s3: true, target: s3Peak },
    { label: "S3: CPU, cold GET", key: "cold.cpu", fmt: fmt.secs, s3: true, target: fs("cold.cpu", fmt.secs) },
    { label: "S3: cached manifest GET requests/s", key: "manifest.rps", fmt: fmt.count, s3: true, target: fs("manifest.rps", fmt.count) },
    { label: "S3: cached manifest GET p99", key: "manifest.p99", fmt: fmt.ms, s3: true, target: fs("manifest.p99", fmt.ms) },
  );
  return rows;
}
