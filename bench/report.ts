// The printed report: what each scenario does, then one table of every figure for Stowage next to
// the same figure for the distribution proxy, with the target each is held to. Stdout only.
import type { HashedDownload } from "./curl.ts";
import type { ProxiedRequest } from "./fault-proxy.ts";
import type { Metrics } from "./measure.ts";
import { PEER_NAMES, type PeerKind } from "./peers.ts";
import { CLIENTS } from "./scenarios/concurrent-pull.ts";
import { WARM_REPEATS } from "./scenarios/large-blob.ts";
import { WRK } from "./scenarios/manifests.ts";

export type Results = {
  rounds: number;
  blobBytes: number;
  burstImage: { name: string; bytes: number };
  counter: string;
  /** One Metrics per round per peer, every scenario's figures merged. */
  peers: Record<PeerKind, Metrics[]>;
  faults: Array<{ kind: PeerKind; faulty: HashedDownload; upstreamRequests: ProxiedRequest[] }>;
  s3Skipped: string | null;
  errors: string[];
  load: { before: string; after: string; cpus: number };
};

const MB = 1e6;
const MiB = 1024 * 1024;
const mbps = (v: number) => `${(v / MB).toFixed(1)} MB/s`;
const mib = (v: number) => `${(v / MiB).toFixed(1)} MiB`;
const mb = (v: number) => `${(v / MB).toFixed(1)} MB`;
const secs = (v: number) => `${v.toFixed(2)} s`;
const ms = (v: number) => `${(v * 1000).toFixed(2)} ms`;
const times = (v: number) => `${v.toFixed(2)}×`;
const count = (v: number) => Math.round(v).toLocaleString("en-US");
const yesNo = (v: number) => (v ? "yes" : "NO");

function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

type Target = { text: string; met: boolean | null };
type Row =
  | { section: string }
  | { note: string }
  | {
      label: string;
      key: string;
      fmt: (v: number) => string;
      /** Whose figure the Stowage column shows. */
      peer?: PeerKind;
      /** A reference measured next to each peer: the two columns differ by drift alone. */
      reference?: true;
      target?: (v: number) => Target;
    };

export function printReport(r: Results): void {
  const values = (kind: PeerKind, key: string) => r.peers[kind].map((m) => m[key]).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const med = (kind: PeerKind, key: string) => median(values(kind, key));
  const info = (text: string): Target => ({ text, met: null });
  const blob = r.blobBytes;
  const burst = r.burstImage.bytes;

  const rows: Row[] = [
    { section: `1 GiB blob (${count(blob)} bytes), one client` },
    { label: "ref: nginx sending the blob file (page cache), best of 3", key: "ref.ceiling", fmt: mbps, reference: true },
    { label: "ref: direct from the upstream registry", key: "ref.direct", fmt: mbps, reference: true },
    { label: "ref: upstream through the counter (the cold fetch's path)", key: "ref.viaCounter", fmt: mbps, reference: true },
    { label: "ref: writing 1 GiB to the peers' disk (1 MiB writes, no fsync)", key: "ref.diskWrite", fmt: mbps, reference: true },
    {
      label: `warm GET (best of ${WARM_REPEATS})`,
      key: "warm.speed",
      fmt: mbps,
      target: (v) => {
        const ceiling = med("stowage", "ref.ceiling");
        return { text: `≥ ${mbps(0.8 * ceiling)} (80% of nginx)`, met: v >= 0.8 * ceiling };
      },
    },
    {
      label: "cold GET",
      key: "cold.speed",
      fmt: mbps,
      target: (v) => {
        const direct = med("stowage", "ref.direct");
        return { text: `≥ ${mbps(direct)} (direct)`, met: v >= direct };
      },
    },
    { label: "cold GET: time to first byte", key: "cold.ttfb", fmt: secs },
    { label: "cold GET: committed, after the last byte", key: "cold.stored", fmt: secs },
    { label: "cold GET: upstream bytes", key: "cold.upBytes", fmt: mb, target: (v) => ({ text: `one copy (${mb(blob)})`, met: v === blob }) },
    { label: "warm GETs: upstream bytes", key: "warm.upBytes", fmt: mb, target: (v) => ({ text: "0", met: v === 0 }) },
    { label: "RSS idle, after warm-up", key: "idle.rss", fmt: mib },
    { label: "peak RSS: cold GET", key: "cold.rss", fmt: mib },
    { label: "peak RSS: warm GETs", key: "warm.rss", fmt: mib },
    { label: "CPU: cold GET", key: "cold.cpu", fmt: secs },
    { label: "CPU: one warm GET", key: "warm.cpu", fmt: secs },

    { section: `${CLIENTS} clients pull the same cold image at once (${r.burstImage.name}, ${mb(burst)})` },
    { label: "1 client, cold: wall time", key: "single.wall", fmt: secs },
    { label: "1 client, cold: peak RSS", key: "single.rss", fmt: mib },
    {
      label: `${CLIENTS} clients, cold: wall time`,
      key: "burst.wall",
      fmt: secs,
      target: (v) => {
        const limit = 1.5 * med("stowage", "single.wall");
        return { text: `≤ ${secs(limit)} (1.5× 1 client)`, met: v <= limit };
      },
    },
    { label: `${CLIENTS} clients, cold: upstream blob bytes`, key: "burst.upBytes", fmt: mb, target: (v) => ({ text: `one copy (${mb(burst)})`, met: v === burst }) },
    { label: `${CLIENTS} clients, cold: upstream blob GETs`, key: "burst.upGets", fmt: count },
    { label: `${CLIENTS} clients, cold: blob bytes served`, key: "burst.served", fmt: mb, target: (v) => ({ text: `${CLIENTS} copies (${mb(CLIENTS * burst)})`, met: v === CLIENTS * burst }) },
    { label: `${CLIENTS} clients, cold: peak RSS`, key: "burst.rss", fmt: mib },
    { label: `${CLIENTS} clients, cold: CPU`, key: "burst.cpu", fmt: secs },
    { label: `${CLIENTS} clients, image cached: wall time`, key: "burstWarm.wall", fmt: secs, target: () => info("same burst, no upstream fetch") },
    { label: `${CLIENTS} clients, image cached: peak RSS`, key: "burstWarm.rss", fmt: mib },

    { section: `cached manifest GET by tag (wrk -t${WRK.threads} -c${WRK.connections} -d${WRK.seconds}s)` },
    { label: "requests/s", key: "manifest.rps", fmt: count, target: () => info("higher is better") },
    { label: "p99 latency", key: "manifest.p99", fmt: ms, target: () => info("lower is better") },
    { label: "p50 latency", key: "manifest.p50", fmt: ms },
    { label: "non-2xx answers + socket errors", key: "manifest.errors", fmt: count, target: (v) => ({ text: "0", met: v === 0 }) },
    { label: "peak RSS", key: "manifest.rss", fmt: mib },
    { label: "CPU", key: "manifest.cpu", fmt: secs },

    { section: "upstream drops the connection once at 50% of the 1 GiB blob (cold GET)" },
    { label: "pull succeeded (200, all bytes, sha256)", key: "fault.ok", fmt: yesNo, target: (v) => ({ text: "yes", met: v === 1 }) },
    { label: "bytes the client received", key: "fault.bytes", fmt: mb, target: (v) => ({ text: mb(blob), met: v === blob }) },
    { label: "wall time with the fault", key: "fault.wall", fmt: secs },
    { label: "wall time, same path without fault", key: "fault.clean.wall", fmt: secs },
    { label: "with fault / without", key: "fault.slowdown", fmt: times, target: () => info("how much the fault costs") },
    { label: "upstream bytes with the fault", key: "fault.upBytes", fmt: mb, target: () => info(`ideally ${mb(blob)}`) },
    { label: "peak RSS with the fault", key: "fault.rss", fmt: mib },

    { section: "S3 store (Ceph RGW, memstore): Stowage column is Stowage on S3, distribution on its filesystem" },
  ];
  if (r.s3Skipped === null) {
    const fs = (key: string, fmt: (v: number) => string) => () => info(`ref: Stowage on fs ${fmt(med("stowage", key))}`);
    rows.push(
      { label: "S3: warm GET 1 GiB (best of 3)", key: "warm.speed", fmt: mbps, peer: "stowage-s3", target: fs("warm.speed", mbps) },
      { label: "S3: cold GET 1 GiB", key: "cold.speed", fmt: mbps, peer: "stowage-s3", target: fs("cold.speed", mbps) },
      { label: "S3: cold GET committed, after the last byte", key: "cold.stored", fmt: secs, peer: "stowage-s3", target: fs("cold.stored", secs) },
      { label: "S3: cold GET upstream bytes", key: "cold.upBytes", fmt: mb, peer: "stowage-s3", target: (v) => ({ text: `one copy (${mb(blob)})`, met: v === blob }) },
      { label: "S3: peak RSS, cold GET", key: "cold.rss", fmt: mib, peer: "stowage-s3", target: fs("cold.rss", mib) },
      { label: "S3: peak RSS, warm GETs", key: "warm.rss", fmt: mib, peer: "stowage-s3", target: fs("warm.rss", mib) },
      { label: "S3: CPU, cold GET", key: "cold.cpu", fmt: secs, peer: "stowage-s3", target: fs("cold.cpu", secs) },
      { label: "S3: cached manifest GET requests/s", key: "manifest.rps", fmt: count, peer: "stowage-s3", target: fs("manifest.rps", count) },
      { label: "S3: cached manifest GET p99", key: "manifest.p99", fmt: ms, peer: "stowage-s3", target: fs("manifest.p99", ms) },
    );
  } else {
    rows.push({ note: `  skipped: ${r.s3Skipped}` });
  }

  printExplanations(r);

  const header = ["scenario", PEER_NAMES.stowage, PEER_NAMES.distribution, "ratio S/d", "target (Stowage)", "met?"];
  const cells: Array<string[] | string> = rows.map((row) => {
    if ("section" in row) return row.section;
    if ("note" in row) return row.note;
    const s = med(row.peer ?? "stowage", row.key);
    const d = med("distribution", row.key);
    const show = (v: number) => (Number.isFinite(v) ? row.fmt(v) : "—");
    const ratio = !row.reference && Number.isFinite(s) && Number.isFinite(d) && d !== 0 && row.fmt !== yesNo ? times(s / d) : "";
    const t = Number.isFinite(s) ? row.target?.(s) : undefined;
    return [`  ${row.label}`, show(s), show(d), ratio, t?.text ?? "", t?.met === undefined || t.met === null ? "" : t.met ? "yes" : "NO"];
  });
  const tableRows = cells.filter((c): c is string[] => Array.isArray(c));
  const widths = header.map((h, i) => Math.max(h.length, ...tableRows.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 || i === 4 ? x.padEnd(widths[i] ?? 0) : x.padStart(widths[i] ?? 0))).join(" | ");
  if (r.rounds > 1) console.log(`Figures are medians of ${r.rounds} rounds (peer order alternating); ratios and targets use the medians.\n`);
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const c of cells) console.log(typeof c === "string" ? c : line(c));

  printNotes(r);
}

function printExplanations(r: Results): void {
  const text = `Stowage against CNCF distribution in proxy mode. Both pull from the same local upstream (a distribution registry); each reaches it through its own counting proxy (${r.counter}), so the bytes each fetched upstream are counted. Every scenario starts each peer afresh with an empty cache, warmed up on 50 small blobs first. Clients are curl to /dev/null unless said otherwise. Peak RSS is the peer process's high-water mark during the scenario. MB = 1e6 bytes, MiB = 2^20.

1 GiB blob: one client GETs a 1 GiB incompressible blob from the empty cache (cold: the peer fetches it while serving it; the figure is curl's mean rate, and "committed" is how long after the last byte the peer's own copy appeared), then ${WARM_REPEATS} more times (warm, from the peer's store; best rate shown). Targets: warm ≥ 80% of nginx sending the same file from the page cache (the ceiling for serving a stored file here); cold ≥ a direct GET from the upstream. A cache that keeps memory bounded and fetches once cannot serve a cold blob faster than its disk takes it (Stowage paces the client to its store writes; the distribution proxy instead fetches the blob twice), so the disk's own write speed is shown as a reference too: on this machine it swings from about 0.4 to 4 GB/s from one minute to the next. The "ref" rows are measured next to each peer's own GETs (nginx alternating with the warm GETs, the upstream just before the cold GET), in each peer's column, and the targets use the ones next to Stowage: this machine's speed drifts too much for a reference taken at another moment.

${CLIENTS} clients: ${CLIENTS} simultaneous pulls of one uncached image (manifest by tag, then config and layer in parallel, like a container runtime) on a fresh peer, compared with one client pulling it on another fresh peer. Targets: one copy fetched from the upstream, every client served in full, the burst within 1.5× of the single pull. The burst is repeated once the image is cached, so that the cost of handing out ${CLIENTS} copies can be told apart from the cost of sharing one cold fetch. (The 268 MB test image, not the 1 GiB blob, keeps four bursts of ${CLIENTS} copies within the bench's time budget.)

Cached manifest GET: wrk (${WRK.threads} threads, ${WRK.connections} connections, ${WRK.seconds} s) on GET /v2/<repo>/manifests/<tag> with a runtime's Accept header, after one GET put it in the cache.

Fault: the peer reaches the upstream through a node proxy (bench/fault-proxy.ts) that destroys the connection after exactly half of the first GET of the 1 GiB blob's body; everything else, retries included, passes. One cold GET, body hashed with openssl; compared with the same cold GET through the same proxy with no fault. That path (node proxy, hashing) tops out near 400 MB/s on an idle machine, so compare the two fault runs with each other, not with the cold GET above.

S3: Stowage with --storage s3://… on a Ceph RGW the bench starts (objects in memory), cold and warm 1 GiB GETs and manifest rate as above, next to Stowage on its filesystem store and the distribution proxy (on its filesystem).
`;
  console.log(wrap(text, 110));
}

/** Each paragraph broken into lines of at most `width` characters, at spaces. */
function wrap(text: string, width: number): string {
  return text
    .split("\n")
    .map((para) => {
      const lines: string[] = [];
      let line = "";
      for (const word of para.split(" ")) {
        if (line && line.length + 1 + word.length > width) {
          lines.push(line);
          line = word;
        } else line = line ? `${line} ${word}` : word;
      }
      return [...lines, line].join("\n");
    })
    .join("\n");
}

function printNotes(r: Results): void {
  console.log("");
  for (const f of r.faults) {
    const d = f.faulty;
    const outcome = d.ok
      ? "client got every byte, sha256 correct"
      : `client got status ${d.status ?? "?"}, ${count(d.bytes ?? 0)} bytes, sha256 ${d.sha256 === "sha256:" ? "none" : d.sha256.slice(0, 19) + "…"}, curl exit ${d.curlExit}${d.error ? ` (${d.error})` : ""}`;
    const ups = f.upstreamRequests.map((q) => `${q.method}${q.range ? ` [${q.range}]` : ""} → ${q.status}, ${count(q.bytes)} B${q.cut ? " (cut)" : ""}`).join("; ");
    console.log(`fault run, ${PEER_NAMES[f.kind]}: ${outcome}. Its upstream GETs of the blob: ${ups || "none"}`);
  }
  if (r.s3Skipped !== null) console.log(`S3 rows skipped: ${r.s3Skipped}`);
  for (const e of r.errors) console.log(`ERROR (its figures show as —): ${e}`);
  const noisy = Number(r.load.before) > 0.5 ? "; something else was running, so expect noise" : "";
  console.log(`machine load average (1 min) before/after: ${r.load.before}/${r.load.after} on ${r.load.cpus} CPUs${noisy}`);
}
