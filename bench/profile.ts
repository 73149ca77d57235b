// `--profile`: where Stowage's cold path spends its time, seen two ways during one cold GET:
//  - the V8 CPU profile of the main thread (JS view), via bench/cpu-profile-hook.mjs;
//  - perf, when installed, over every thread of the process (native and kernel view: copies,
//    hashing, page faults, syscalls, which the JS profile shows only as opaque native time).
// node refuses --cpu-prof in NODE_OPTIONS, and startStowage takes no node flags, hence the hook.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { makeTempDir } from "../test/harness/processes.ts";
import { summarizeProfile } from "./cpuprofile.ts";

const execFileP = promisify(execFile);
const PERF = "/usr/bin/perf";
const HOOK = pathToFileURL(join(import.meta.dirname, "cpu-profile-hook.mjs")).href;

const GiB = 1024 * 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitForFile(path: string, timeoutMs: number, minBytes = 0): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await stat(path).then((s) => s.size >= minBytes, () => false))) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Environment for a Stowage that can be profiled on demand, and where its profile will land. */
export async function profilingEnv(): Promise<{ env: Record<string, string>; profilePath: string }> {
  const dir = await makeTempDir("bench-profile");
  const profilePath = join(dir, "cold.cpuprofile");
  // perf needs JIT symbols to name JS frames; node writes them to /tmp/perf-<pid>.map.
  const nodeOptions = [process.env.NODE_OPTIONS ?? "", "--perf-basic-prof-only-functions", `--import=${HOOK}`].join(" ").trim();
  return { env: { NODE_OPTIONS: nodeOptions, STOWAGE_BENCH_PROFILE: profilePath }, profilePath };
}

export type ProfileRun<T> = { value: T; cpuProfile: string | null; perf: string[] | null };

/** Runs `fn` with the V8 profiler on in `pid`'s main thread and perf sampling every thread. */
export async function profiled<T>(pid: number, profilePath: string, fn: () => Promise<T>): Promise<ProfileRun<T>> {
  process.kill(pid, "SIGUSR2");
  await waitForFile(`${profilePath}.started`, 5_000);
  let perfData: string | null = null;
  let stopPerf: (() => Promise<void>) | null = null;
  if (existsSync(PERF)) {
    perfData = join(profilePath, "..", "perf.data");
    const perf = spawn(PERF, ["record", "-q", "-F", "999", "-g", "-p", String(pid), "-o", perfData], { stdio: "ignore" });
    const exited = new Promise<void>((resolve) => perf.once("close", () => resolve()));
    stopPerf = async () => {
      perf.kill("SIGINT");
      await exited;
    };
    await sleep(300); // perf needs a moment to attach
  }
  let value: T;
  try {
    value = await fn();
  } finally {
    await stopPerf?.();
    process.kill(pid, "SIGUSR2");
  }
  await waitForFile(profilePath, 10_000, 1);
  let perfRows: string[] | null = null;
  if (perfData) {
    try {
      const { stdout } = await execFileP(PERF, ["report", "-i", perfData, "--no-children", "--sort", "sym", "--stdio", "-g", "none"], {
        maxBuffer: 64 * 1024 * 1024,
      });
      perfRows = stdout.split("\n").filter((l) => /^\s+\d+\.\d+%/.test(l));
    } catch {
      perfRows = null;
    }
  }
  return { value, cpuProfile: profilePath, perf: perfRows };
}

export async function removePerfMap(pid: number): Promise<void> {
  await rm(`/tmp/perf-${pid}.map`, { force: true });
}

/** The profile's summary as lines, main-thread CPU scaled to seconds per GiB of the `bytes` transferred. */
export async function printProfile(run: ProfileRun<unknown>, bytes: number, indent = "  "): Promise<string[]> {
  const out: string[] = [];
  const perGiB = GiB / bytes;
  const s = (ms: number) => `${((ms / 1000) * perGiB).toFixed(3)} s`;
  if (run.cpuProfile) {
    const p = await summarizeProfile(run.cpuProfile, 20);
    const idle = p.byArea.find(([a]) => a === "idle")?.[1] ?? 0;
    out.push(`${indent}V8 profile, main thread: ${s(p.totalMs - idle)} busy per GiB (${((p.totalMs) / 1000).toFixed(2)} s profiled)`);
    out.push(`${indent}  by area, per GiB: ${p.byArea.filter(([a]) => a !== "idle").map(([a, ms]) => `${a} ${s(ms)}`).join(", ")}`);
    out.push(`${indent}  by function (self time), per GiB:`);
    for (const [fn, ms] of p.topSelf) out.push(`${indent}    ${s(ms).padStart(9)}  ${fn}`);
  }
  if (run.perf) {
    out.push(`${indent}perf, all threads (share of samples; [k] kernel, [.] user space):`);
    for (const row of run.perf.slice(0, 20)) out.push(`${indent}  ${row.trim().slice(0, 140)}`);
  } else {
    out.push(`${indent}(perf not available: no native/kernel view)`);
  }
  return out;
}
