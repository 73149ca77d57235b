// Stowage as a real process (Node with tsx, Node running the build in dist/, or Deno), as operators start it.
import { denoBinary, freePort, madeByHarness, makeTempDir, procFor, type Proc, PROJECT_ROOT, spawnTracked, answers, waitUntil } from "./processes.ts";

/**
 * How Stowage runs: the build (`npm run build`; test/run.mjs makes it first) as `npm start` runs
 * it, the default; its TypeScript on Node through tsx; or Deno. STOWAGE_E2E_RUNTIME picks another default.
 */
export type StowageRuntime = "node" | "node-built" | "deno";

/** V8's flags, as npm start and the image give them (test/unit/launch.test.ts keeps them the same). */
export const NODE_FLAGS = ["--max-semi-space-size=2", "--initial-old-space-size=32", "--heap-growing-percent=50"];

async function commandFor(runtime: StowageRuntime, denoPermissions?: string[]): Promise<[string, string[]]> {
  if (runtime === "deno") return [await denoBinary(), ["run", ...(denoPermissions ?? ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"]), "src/main.ts"]];
  if (runtime === "node-built") return [process.execPath, [...NODE_FLAGS, "bin/stowage.js"]];
  return [process.execPath, [...NODE_FLAGS, "--import", "tsx", "src/main.ts"]];
}

const runtimeFromEnv = (): StowageRuntime => {
  const r = process.env.STOWAGE_E2E_RUNTIME;
  return r === "deno" || r === "node" ? r : "node-built";
};

function flagValue(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? "";
    if (a === name) return args[i + 1];
    if (a.startsWith(name + "=")) return a.slice(name.length + 1);
  }
  return undefined;
}

/**
 * Stowage itself: `node NODE_FLAGS bin/stowage.js serve --listen 127.0.0.1:PORT --data-dir DIR <args>`
 * from the project root; a port and a fresh data dir are chosen unless args name them.
 */
export async function startStowage(
  args: string[],
  opts: {
    env?: Record<string, string>;
    runtime?: StowageRuntime;
    /** Deno permissions instead of the usual ones (which allow writing), e.g. to run with --deny-write. */
    denoPermissions?: string[];
  } = {},
): Promise<Proc & { url: string; port: number; dataDir: string }> {
  const runtime = opts.runtime ?? runtimeFromEnv();
  const extra: string[] = [];
  let listen = flagValue(args, "--listen");
  if (listen === undefined) {
    listen = `127.0.0.1:${await freePort()}`;
    extra.push("--listen", listen);
  }
  let dataDir = flagValue(args, "--data-dir");
  const ownsData = dataDir === undefined || madeByHarness(dataDir);
  if (dataDir === undefined) {
    dataDir = await makeTempDir("stowage-data");
    extra.push("--data-dir", dataDir);
  }
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new Error(`startStowage: cannot read a port from --listen ${listen}`);
  const port = Number(m[2]);
  const host = ["", "0.0.0.0", "[::]", "::"].includes(m[1] ?? "") ? "127.0.0.1" : (m[1] ?? "127.0.0.1");
  const url = `http://${host}:${port}`;

  const [cmd, prefix] = await commandFor(runtime, opts.denoPermissions);
  const s = spawnTracked(cmd, [...prefix, "serve", ...extra, ...args], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, ...opts.env },
  });
  const proc = procFor(s, { data: ownsData ? [dataDir] : [] });
  try {
    // 401: access control is on, and the registry is up all the same.
    await waitUntil("stowage", s, 20_000, () => answers(`${url}/v2/`, (st) => st === 200 || st === 401));
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { ...proc, url, port, dataDir };
}

/**
 * A one-shot Stowage command (prefill, export, import...) as an operator runs it, from the
 * project root: its exit code, its standard output, and all its output (stdout and stderr
 * interleaved, for failure messages). Standard input is `stdin` when given, else empty.
 */
export async function runStowage(
  args: string[],
  opts: { runtime?: StowageRuntime; timeoutMs?: number; stdin?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; output: string }> {
  const [cmd, prefix] = await commandFor(opts.runtime ?? runtimeFromEnv());
  const s = spawnTracked(cmd, [...prefix, ...args], { cwd: PROJECT_ROOT, env: { ...process.env, ...opts.env }, stdin: opts.stdin !== undefined });
  s.child.stdin?.end(opts.stdin);
  const out: Buffer[] = [];
  s.child.stdout?.on("data", (c: Buffer) => out.push(c));
  const timer = setTimeout(() => s.child.kill("SIGKILL"), opts.timeoutMs ?? 300_000);
  const exit = await s.exited;
  clearTimeout(timer);
  return { code: exit.code ?? -1, stdout: Buffer.concat(out).toString("utf8"), output: s.logs() };
}
