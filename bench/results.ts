// Everything the bench measured, kept as it goes: after each scenario the whole of it is written
// to bench/results/bench-<ISO time>.json (git-ignored), so a run that is stopped or crashes
// half-way still leaves every figure it got. The printed report is made from the same object.
import { mkdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { HashedDownload } from "./curl.ts";
import type { ProxiedRequest } from "./fault-proxy.ts";
import type { Metrics } from "./measure.ts";
import type { NodeRuntime, PeerKind } from "./peers.ts";
import type { AirgapResults } from "./scenarios/airgap.ts";

export type ScenarioRecord = { scenario: string; peer?: PeerKind; round: number; status: "ok" | "failed" | "timed out"; seconds: number; error?: string };

export type Results = {
  startedAt: string;
  args: string[];
  rounds: number;
  blobBytes: number;
  burstImage: { name: string; bytes: number };
  counter: string;
  nodeRuntime: NodeRuntime;
  /** Things the reader must know (a fallback, a skipped part). */
  notes: string[];
  /** One Metrics per round per peer, every scenario's figures merged. */
  peers: Partial<Record<PeerKind, Metrics[]>>;
  /** Figures taken at every start of a peer (start-up ms, idle RSS), across scenarios. */
  samples: Partial<Record<PeerKind, Record<string, number[]>>>;
  /** The command line each peer ran, as the kernel had it. */
  commands: Partial<Record<PeerKind, string>>;
  scenarios: ScenarioRecord[];
  faults: Array<{ kind: PeerKind; faulty: HashedDownload; upstreamRequests: ProxiedRequest[] }>;
  s3Skipped: string | null;
  errors: string[];
  storm: { metrics: Metrics; attack: { sent: number; byStatus: Record<string, number> } } | null;
  airgap: AirgapResults | null;
  /** The --profile summary, as printed. */
  profile: string[] | null;
  load: { before: string; after?: string; cpus: number };
};

export function resultsPath(dir: string, startedAt: string): string {
  return join(dir, `bench-${startedAt.replace(/[:.]/g, "-")}.json`);
}

/** Writes the whole object anew (temp file, then rename, so a reader never sees half a file). */
export async function saveResults(path: string, r: Results): Promise<void> {
  await mkdir(join(path, ".."), { recursive: true });
  const tmp = `${path}.tmp`;
  await writeFile(tmp, JSON.stringify(r, null, 1) + "\n");
  await rename(tmp, path);
}

export function addSample(r: Results, kind: PeerKind, key: string, value: number): void {
  if (!Number.isFinite(value)) return;
  const bag = (r.samples[kind] ??= {});
  (bag[key] ??= []).push(value);
}
