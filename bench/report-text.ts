// The report's prose: what each scenario does (before the table) and the notes after it (fault
// runs, failed or timed-out scenarios, fallbacks, machine load).
import { FS_PEERS, PEER_NAMES } from "./peers.ts";
import type { Results } from "./results.ts";
import { CLIENTS } from "./scenarios/concurrent-pull.ts";
import { WARM_REPEATS } from "./scenarios/large-blob.ts";
import { WRK } from "./scenarios/manifests.ts";

const count = (v: number) => Math.round(v).toLocaleString("en-US");

export function explanations(r: Results): string {
  const node = r.nodeRuntime === "node-built" ? "the built JavaScript (node bin/stowage.js, as npm start and the image run it)" : "TypeScript through tsx (no build: see the notes)";
  const text = `Stowage on Node (${node}) and on Deno, against CNCF distribution in proxy mode and nginx as a pull-through cache (proxy_cache, proxy_cache_lock on, blobs kept 30 days, manifests 60 s, like the nginx-based registry mirrors). All pull from the same local upstream (a distribution registry); each reaches it through its own counting proxy (${r.counter}), so the bytes each fetched upstream are counted. Every scenario starts each peer afresh with an empty cache, warmed up on 50 small blobs first. Clients are curl to /dev/null unless said otherwise. Peak RSS is the peer process's high-water mark during the scenario. MB = 1e6 bytes, MiB = 2^20. Targets (issue 11) apply to Stowage on Node and are ratios to figures of the same run; "ahead?" says whether it beat both other peers (distribution, nginx) on that row. Deno's figures have no targets yet.

Start-up: from spawning a peer's process to its first answered GET /v2/ (a probe every 5 ms), over every start in the run; RSS is read right after the warm-up of each start, and idle RSS once more after the first start of the start-up scenario has been left alone for a while (Stowage's hashing threads have stopped by then).

1 GiB blob: one client GETs a 1 GiB incompressible blob from the empty cache (cold: the peer fetches it while serving it; the figure is curl's mean rate, and "committed" is how long after the last byte the peer's own copy appeared), then ${WARM_REPEATS} more times (warm, from the peer's store; best rate shown). The "ref" rows are measured next to each peer's own GETs (nginx sending the file alternating with the warm GETs, the upstream and a disk write just before the cold GET), in each peer's column, and the targets use the ones next to Stowage: this machine's speed drifts too much for a reference taken at another moment. Every cold measurement (here, in the pulls and in the fault runs) comes right after writing and removing a file as large as what the peer will store: on a VM that hands free memory back to its host, the first write to a page costs a host fault, and this gives each peer pages the host has backed (bench/disk.ts).

${CLIENTS} clients: ${CLIENTS} simultaneous pulls of one uncached image (manifest by tag, then config and layer in parallel, like a container runtime) on a fresh peer, then the same burst once the image is cached; one client pulling it on another fresh peer is shown for reference. Targets: one copy fetched from the upstream, every client served in full, the cold burst within 1.1× of the cached one, and the cached burst no slower than the distribution proxy's.

Cached manifest GET: wrk (${WRK.threads} threads, ${WRK.connections} connections, ${WRK.seconds} s) on GET /v2/<repo>/manifests/<tag> with a runtime's Accept header, after one GET put it in the cache.

Fault: the peer reaches the upstream through a node proxy (bench/fault-proxy.ts) that destroys the connection after exactly half of the first GET of the 1 GiB blob's body; everything else, retries included, passes. One cold GET, body hashed with openssl; compared with the same cold GET through the same proxy with no fault (that path tops out near 400 MB/s, so compare the two fault runs with each other).

S3: Stowage with --storage s3://… on a Ceph RGW the bench starts (objects in memory), cold and warm 1 GiB GETs and manifest rate as above; the target compares its cold GET with Stowage's on the filesystem store in the same run.
`;
  return wrap(text, 110);
}

/** Each paragraph broken into lines of at most `width` characters, at spaces. */
export function wrap(text: string, width: number): string {
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

export function notes(r: Results): string[] {
  const out: string[] = [];
  for (const f of r.faults) {
    const d = f.faulty;
    const outcome = d.ok
      ? "client got every byte, sha256 correct"
      : `client got status ${d.status ?? "?"}, ${count(d.bytes ?? 0)} bytes, sha256 ${d.sha256 === "sha256:" ? "none" : d.sha256.slice(0, 19) + "…"}, curl exit ${d.curlExit}${d.error ? ` (${d.error})` : ""}`;
    const ups = f.upstreamRequests.map((q) => `${q.method}${q.range ? ` [${q.range}]` : ""} → ${q.status}, ${count(q.bytes)} B${q.cut ? " (cut)" : ""}`).join("; ");
    out.push(`fault run, ${PEER_NAMES[f.kind]}: ${outcome}. Its upstream GETs of the blob: ${ups || "none"}`);
  }
  for (const [kind, cmd] of Object.entries(r.commands)) out.push(`${PEER_NAMES[kind as keyof typeof PEER_NAMES]} ran: ${cmd.slice(0, 200)}`);
  for (const n of r.notes) out.push(`NOTE: ${n}`);
  if (r.s3Skipped !== null) out.push(`S3 rows skipped: ${r.s3Skipped}`);
  const bad = r.scenarios.filter((s) => s.status !== "ok");
  const ok = r.scenarios.length - bad.length;
  out.push(`scenarios: ${ok} of ${r.scenarios.length} finished${bad.length ? `; ${bad.length} failed or timed out (their figures show as —):` : ""}`);
  for (const e of r.errors) out.push(`  ERROR: ${e}`);
  const swing = diskSwing(r);
  if (swing) out.push(`WARNING: ${swing}`);
  const noisy = Number(r.load.before) > 0.5 ? "; something else was running, so expect noise" : "";
  out.push(`machine load average (1 min) before/after: ${r.load.before}/${r.load.after ?? "?"} on ${r.load.cpus} CPUs${noisy}`);
  return out;
}

/** Cold runs are held against each other only when the disk wrote at a similar speed for each. */
export const DISK_SWING_RATIO = 2;

/**
 * When the disk's write speed, measured next to each peer's cold GET, differs by more than
 * DISK_SWING_RATIO between peers, says so: on a shared or virtual machine the page cache's cost
 * can change several-fold within minutes, and the cold rows then compare the machine's moments
 * as much as the peers. Null when the speeds agree (or fewer than two peers have one).
 */
export function diskSwing(r: Results): string | null {
  const speeds = FS_PEERS.map((kind): [string, number] => {
    const xs = (r.peers[kind] ?? []).map((m) => m?.["ref.diskWrite"]).filter((v): v is number => v !== undefined && Number.isFinite(v) && v > 0).sort((a, b) => a - b);
    return [PEER_NAMES[kind], xs.length ? xs[Math.floor(xs.length / 2)]! : NaN];
  }).filter(([, v]) => Number.isFinite(v));
  if (speeds.length < 2) return null;
  const slow = speeds.reduce((a, b) => (b[1] < a[1] ? b : a));
  const fast = speeds.reduce((a, b) => (b[1] > a[1] ? b : a));
  if (fast[1] <= DISK_SWING_RATIO * slow[1]) return null;
  const mbps = (v: number) => `${(v / 1e6).toFixed(0)} MB/s`;
  return `the disk wrote at ${mbps(slow[1])} next to ${slow[0]}'s cold GET and at ${mbps(fast[1])} next to ${fast[0]}'s ` +
    `(the "writing 1 GiB" row): the cold rows compare the machine's moments as much as the peers (on a VM, often its host faulting in pages the guest had given back); run the bench again, or with --rounds 3`;
}
