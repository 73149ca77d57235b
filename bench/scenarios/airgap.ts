// Air-gapped transfers: Stowage's prefill, export and import of the test images and the 1 GiB
// image, next to skopeo doing the same work in the same run (copy to an OCI layout, to an
// oci-archive, and back). Every command runs under GNU time for its wall time and peak RSS;
// MB/s is the images' unique blob bytes over the wall time. Prints figures; asserts nothing.
//
// What each peer does:
//   prefill  Stowage: `stowage prefill REF... --jobs 4` into an empty store.
//            skopeo:  `skopeo copy --all docker://REF oci:DIR:REF`, 4 at a time (one layout each).
//   export   Stowage: `stowage export REF... -o FILE` (one tar).
//            skopeo:  `skopeo copy --all oci:DIR:REF oci-archive:FILE:REF`, one after another.
//   import   Stowage: `stowage import FILE` into an empty store (every blob verified).
//            skopeo:  `skopeo copy --all oci-archive:FILE:REF oci:DIR:REF`, one after another.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../test/harness/processes.ts";
import { NODE_FLAGS } from "../../test/harness/stowage.ts";
import { progress } from "../measure.ts";

export type Transfer = { seconds: number; peakRss: number; ok: boolean; detail?: string };
export type AirgapResults = {
  bytes: number;
  images: number;
  rows: Array<{ step: "prefill" | "export" | "import"; stowage: Transfer; skopeo: Transfer }>;
};

// The built JavaScript as the `stowage` bin runs it, or (when there is no build) the TypeScript through tsx.
const NODE = [process.execPath, ...NODE_FLAGS];
const STOWAGE = { built: [...NODE, "bin/stowage.js"], tsx: [...NODE, "--import", "tsx", "src/main.ts"] };
const COMMAND_TIMEOUT_MS = 15 * 60_000;

/** One command under GNU time: wall seconds and peak RSS from its last stderr line. */
function timed(cmd: string[], signal?: AbortSignal): Promise<Transfer> {
  return new Promise((resolve) => {
    execFile(
      "/usr/bin/time",
      ["-f", "TIMED %e %M", ...cmd],
      { cwd: PROJECT_ROOT, timeout: COMMAND_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, signal, killSignal: "SIGKILL" },
      (err, _stdout, stderr) => {
        const m = /TIMED ([\d.]+) (\d+)\s*$/.exec(stderr);
        const result: Transfer = { seconds: m ? Number(m[1]) : NaN, peakRss: m ? Number(m[2]) * 1024 : NaN, ok: !err };
        if (err) result.detail = stderr.split("\n").filter((l) => l && !l.startsWith("TIMED")).slice(-3).join(" / ").slice(0, 400);
        resolve(result);
      },
    );
  });
}

/** Several commands, `parallel` at a time: the whole wall time, the largest peak RSS of any. */
async function timedAll(cmds: string[][], parallel: number, signal?: AbortSignal): Promise<Transfer> {
  const started = Date.now();
  const results: Transfer[] = [];
  const queue = [...cmds];
  await Promise.all(Array.from({ length: parallel }, async () => {
    for (let cmd = queue.shift(); cmd && !signal?.aborted; cmd = queue.shift()) results.push(await timed(cmd, signal));
  }));
  const failed = results.find((r) => !r.ok);
  const out: Transfer = { seconds: (Date.now() - started) / 1000, peakRss: Math.max(...results.map((r) => r.peakRss)), ok: !failed };
  if (failed?.detail) out.detail = failed.detail;
  return out;
}

/**
 * `refs` are repository:tag on the upstream (`stowage-test/oci-index:v1`); `bytes` their unique
 * blob bytes. The upstream is plain HTTP on loopback.
 */
export async function airgapTransfers(
  upstreamUrl: string,
  refs: string[],
  bytes: number,
  opts: { built?: boolean; signal?: AbortSignal } = {},
): Promise<AirgapResults> {
  const { signal } = opts;
  const host = new URL(upstreamUrl).host;
  const dir = await mkdtemp(join(tmpdir(), "stowage-bench-airgap-"));
  const full = refs.map((r) => `${host}/${r}`);
  const layout = (i: number) => join(dir, `layout-${i}`);
  const archive = (i: number) => join(dir, `archive-${i}.tar`);
  // skopeo converts Docker-format images to OCI on the way into a layout (it cannot keep their
  // digests there); Stowage keeps every manifest byte for byte.
  const skopeo = (src: string, dst: string) => ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--src-tls-verify=false", src, dst];
  const stowage = (dataDir: string, ...args: string[]) => [...(opts.built ? STOWAGE.built : STOWAGE.tsx), ...args, "--data-dir", dataDir, "--upstream", `local=${upstreamUrl}`, "--log-level", "warn"];
  try {
    progress("air gap: prefill (Stowage) and copy to OCI layouts (skopeo)");
    const prefill = {
      stowage: await timed(stowage(join(dir, "connected"), "prefill", ...full, "--jobs", "4"), signal),
      skopeo: await timedAll(full.map((ref, i) => skopeo(`docker://${ref}`, `oci:${layout(i)}:${ref}`)), 4, signal),
    };
    progress("air gap: export (Stowage) and copy to oci-archives (skopeo)");
    const exported = {
      stowage: await timed(stowage(join(dir, "connected"), "export", ...full, "-o", join(dir, "bundle.tar")), signal),
      skopeo: await timedAll(full.map((ref, i) => skopeo(`oci:${layout(i)}:${ref}`, `oci-archive:${archive(i)}:${ref}`)), 1, signal),
    };
    progress("air gap: import (Stowage) and copy from oci-archives (skopeo)");
    const imported = {
      stowage: await timed(stowage(join(dir, "dark"), "import", join(dir, "bundle.tar"), "--offline"), signal),
      skopeo: await timedAll(full.map((ref, i) => skopeo(`oci-archive:${archive(i)}:${ref}`, `oci:${join(dir, `imported-${i}`)}:${ref}`)), 1, signal),
    };
    return {
      bytes,
      images: refs.length,
      rows: [
        { step: "prefill", ...prefill },
        { step: "export", ...exported },
        { step: "import", ...imported },
      ],
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function printAirgap(r: AirgapResults): void {
  const mbps = (t: Transfer) => (t.ok ? `${(r.bytes / t.seconds / 1e6).toFixed(1)} MB/s` : "FAILED");
  const rss = (t: Transfer) => (Number.isFinite(t.peakRss) ? `${(t.peakRss / 1024 / 1024).toFixed(0)} MiB` : "?");
  console.log(`Air gap: ${r.images} images (the test images and the 1 GiB image), ${(r.bytes / 1e6).toFixed(1)} MB of unique blobs, each step`);
  console.log("by Stowage and by skopeo doing the same work (prefill: 4 at a time; export, import: one after another for skopeo).");
  console.log("Goal: at least as fast as skopeo, with peak RSS under 256 MiB.");
  console.log(`  ${"step".padEnd(8)} | ${"Stowage".padStart(12)} | ${"skopeo".padStart(12)} | ${"ratio".padStart(6)} | ${"Stowage RSS".padStart(11)} | ${"skopeo RSS".padStart(10)} | goal`);
  for (const row of r.rows) {
    const ratio = row.skopeo.seconds / row.stowage.seconds;
    const met = row.stowage.ok && row.skopeo.ok && ratio >= 1 && row.stowage.peakRss < 256 * 1024 * 1024;
    console.log(
      `  ${row.step.padEnd(8)} | ${mbps(row.stowage).padStart(12)} | ${mbps(row.skopeo).padStart(12)} | ${(Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : "?").padStart(6)} | ` +
        `${rss(row.stowage).padStart(11)} | ${rss(row.skopeo).padStart(10)} | ${met ? "met" : "NOT met"}`,
    );
    for (const [who, t] of [["Stowage", row.stowage], ["skopeo", row.skopeo]] as const) if (!t.ok) console.log(`    ${who} ${row.step} failed: ${t.detail ?? "no detail"}`);
  }
}
