// Real processes and temp dirs for the end-to-end tests and the benchmark. Every process and
// temp dir is tracked so that stop() — or, failing that, the test process exiting — leaves
// nothing behind; free ports; the project root and the Deno binary.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export type Proc = {
  /** SIGTERM, then SIGKILL after 5 s; removes the temp dirs it made (data dirs too, unless keepData). */
  stop(opts?: { keepData?: boolean }): Promise<void>;
  /** Captured stdout+stderr (or, for in-process servers, their own log). */
  logs(): string;
};
export type RunResult = { code: number; stdout: string; stderr: string };

/** The Deno release the tests run Stowage on (fetched from npm by npx on first use). */
export const DENO_PACKAGE = "deno@2.9.6";

let denoPath: Promise<string> | undefined;
/**
 * The deno executable itself: Stowage must be our direct child, or stopping it
 * would stop only npx and leave deno running (holding its output pipes open).
 */
export function denoBinary(): Promise<string> {
  denoPath ??= run("npx", ["-y", DENO_PACKAGE, "eval", "console.log(Deno.execPath())"], 120_000).then((r) => {
    const path = r.stdout.trim().split("\n").pop() ?? "";
    if (r.code !== 0 || !path) throw new Error(`cannot find deno through npx ${DENO_PACKAGE}: ${r.stderr}`);
    return path;
  });
  return denoPath;
}

export const PROJECT_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const STOP_GRACE_MS = 5_000;
const LOG_CAP_CHARS = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Tracking, so a crashed or interrupted test does not leave processes or files behind

const liveChildren = new Set<ChildProcess>();
const harnessTempDirs = new Set<string>();
let cleanupInstalled = false;

function cleanupSync(): void {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of harnessTempDirs) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  sweepAbandonedTempDirs();
  process.once("exit", cleanupSync);
  // SIGALRM is how tap ends a test file that timed out; 'exit' does not fire on a signal death.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP", "SIGALRM"] as const) {
    const onSignal = (): void => {
      cleanupSync();
      // Re-raise so the default action (or tap's own handler) still ends the process.
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

// Temp dir names carry the owner's pid, so a run that was SIGKILLed (no handler runs) is cleaned
// up by the next one without touching dirs of test processes still running in parallel.
const TEMP_PREFIX = "stowage-e2e-";
const OWNED_DIR = /^stowage-e2e-[a-z0-9-]+-p(\d+)-[A-Za-z0-9]{6}$/;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function sweepAbandonedTempDirs(): void {
  let names: string[] = [];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const pid = Number(OWNED_DIR.exec(name)?.[1]);
    if (pid && pid !== process.pid && !isAlive(pid)) rmSync(join(tmpdir(), name), { recursive: true, force: true, maxRetries: 3 });
  }
}

/** A temp dir under os.tmpdir()/stowage-e2e-*, removed when this process exits (or by a later run). */
export async function makeTempDir(label: string): Promise<string> {
  installCleanup();
  const dir = await mkdtemp(join(tmpdir(), `${TEMP_PREFIX}${label}-p${process.pid}-`));
  harnessTempDirs.add(dir);
  return dir;
}

/** Whether makeTempDir made this dir (and so whoever uses it may remove it). */
export function madeByHarness(dir: string): boolean {
  return harnessTempDirs.has(dir);
}

/** Removes a temp dir made by makeTempDir now rather than at exit. */
export async function removeTempDir(dir: string): Promise<void> {
  harnessTempDirs.delete(dir);
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

// setpriv makes the kernel SIGKILL the child when this process dies, even on SIGKILL, where no
// JS handler runs. It execs the target, so the child's pid is the target's pid.
const SETPRIV = "/usr/bin/setpriv";
const hasSetpriv = existsSync(SETPRIV);

/** Spawns a tracked child with stdout/stderr piped; it dies with this process. */
function spawnChild(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; stdin?: boolean } = {}): ChildProcess {
  installCleanup();
  const [file, argv] = hasSetpriv ? [SETPRIV, ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
  const child = spawn(file, argv, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: [opts.stdin ? "pipe" : "ignore", "pipe", "pipe"] });
  liveChildren.add(child);
  const untrack = () => void liveChildren.delete(child);
  child.once("error", untrack);
  child.once("close", untrack);
  return child;
}

type Exit = { code: number | null; signal: NodeJS.Signals | null; error?: Error };

function exitOf(child: ChildProcess): Promise<Exit> {
  return new Promise((resolve) => {
    child.once("error", (error) => resolve({ code: null, signal: null, error }));
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
}

/** A long-running child whose combined output is kept (the tail, if it gets large). */
export type Spawned = { child: ChildProcess; logs(): string; exited: Promise<Exit> };

/** `stdin`: a pipe the caller writes to (and ends); otherwise the child's standard input is empty. */
export function spawnTracked(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; stdin?: boolean } = {}): Spawned {
  const child = spawnChild(cmd, args, opts);
  let log = "";
  const capture = (chunk: Buffer): void => {
    log += chunk.toString("utf8");
    if (log.length > LOG_CAP_CHARS) log = log.slice(log.length - LOG_CAP_CHARS);
  };
  child.stdout?.on("data", capture);
  child.stderr?.on("data", capture);
  const exited = exitOf(child).then((e) => {
    if (e.error) capture(Buffer.from(`\n[spawn error: ${e.error.message}]\n`));
    return e;
  });
  return { child, logs: () => log, exited };
}

async function stopChild(s: Spawned): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null || !liveChildren.has(s.child)) return s.exited.then(() => undefined);
  s.child.kill("SIGTERM");
  const timer = setTimeout(() => s.child.kill("SIGKILL"), STOP_GRACE_MS);
  await s.exited;
  clearTimeout(timer);
}

/** A Proc for a child process; `scratch` dirs are always removed on stop, `data` dirs unless keepData. */
export function procFor(s: Spawned, dirs: { scratch?: string[]; data?: string[] } = {}): Proc {
  let stopping: Promise<void> | undefined;
  return {
    logs: s.logs,
    stop(opts) {
      stopping ??= (async () => {
        await stopChild(s);
        for (const d of dirs.scratch ?? []) await removeTempDir(d);
        if (!opts?.keepData) for (const d of dirs.data ?? []) await removeTempDir(d);
      })();
      return stopping;
    },
  };
}

/** Runs a command to completion, capturing its output; on timeout it is killed and code is -1. */
export async function run(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  const child = spawnChild(cmd, args);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on("data", (c: Buffer) => out.push(c));
  child.stderr?.on("data", (c: Buffer) => err.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const exit = await exitOf(child);
  clearTimeout(timer);
  let stderr = Buffer.concat(err).toString("utf8");
  if (exit.error) stderr += `\n[spawn error: ${exit.error.message}]`;
  if (timedOut) stderr += `\n[${cmd} killed after ${timeoutMs} ms]`;
  return { code: timedOut || exit.code === null ? -1 : exit.code, stdout: Buffer.concat(out).toString("utf8"), stderr };
}

/** Polls until `probe` is true; throws (with the process logs) on timeout or early exit. */
export async function waitUntil(what: string, s: Spawned, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void s.exited.then(() => (exited = true));
  while (Date.now() < deadline) {
    if (exited) throw new Error(`${what} exited before it was ready:\n${s.logs()}`);
    if (await probe().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms:\n${s.logs()}`);
}

/** Whether `url` answers with a status `ok` accepts (within 2 s). */
export async function answers(url: string, ok: (status: number) => boolean): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
  await res.body?.cancel();
  return ok(res.status);
}

// ---------------------------------------------------------------------------

/** A port that was free a moment ago (the usual bind-to-0 trick; racy only against other binders). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createNetServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("no port"))));
    });
  });
}

/** Starts a resource and registers its stop at once, so a later failure in the test cannot leak it. */
export async function using<T extends { stop(): Promise<void> }>(t: { teardown(fn: () => unknown): void }, start: Promise<T>): Promise<T> {
  const resource = await start;
  t.teardown(() => resource.stop());
  return resource;
}
