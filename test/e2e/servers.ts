// Real processes on real 127.0.0.1 ports for the end-to-end tests. Every process and temp dir
// is tracked so that stop() — or, failing that, the test process exiting — leaves nothing behind.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpServer, request as httpRequest, Agent, type IncomingHttpHeaders } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Transform, type TransformCallback, pipeline } from "node:stream";
import { fileURLToPath } from "node:url";
import { stringify as toYaml } from "yaml";
import type { TestImage } from "./images.ts";

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
const REGISTRY_BIN = "/usr/bin/docker-registry";
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
function spawnChild(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  installCleanup();
  const [file, argv] = hasSetpriv ? [SETPRIV, ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
  const child = spawn(file, argv, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
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
type Spawned = { child: ChildProcess; logs(): string; exited: Promise<Exit> };

function spawnTracked(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Spawned {
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
function procFor(s: Spawned, dirs: { scratch?: string[]; data?: string[] } = {}): Proc {
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
async function run(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `probe` is true; throws (with the process logs) on timeout or early exit. */
async function waitUntil(what: string, s: Spawned, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
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

async function answers(url: string, ok: (status: number) => boolean): Promise<boolean> {
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

/**
 * CNCF distribution (Debian docker-registry) on 127.0.0.1. Restartable: stop({ keepData: true })
 * then startRegistry({ port, rootDir }) serves the same content on the same address.
 */
export async function startRegistry(
  opts: { proxyRemoteUrl?: string; proxyCredentials?: { username: string; password: string }; port?: number; rootDir?: string } = {},
): Promise<
  Proc & { url: string; port: number; rootDir: string }
> {
  const port = opts.port ?? (await freePort());
  // A root dir the harness made earlier (kept for a restart) is owned by the new process.
  const ownsRoot = !opts.rootDir || harnessTempDirs.has(opts.rootDir);
  const rootDir = opts.rootDir ?? (await makeTempDir("registry-data"));
  const confDir = await makeTempDir("registry-conf");
  const config: Record<string, unknown> = {
    version: 0.1,
    log: { level: "info", accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: rootDir }, delete: { enabled: true } },
    // A fixed secret keeps upload state valid across a restart.
    http: { addr: `127.0.0.1:${port}`, secret: "stowage-e2e-registry-secret" },
  };
  if (opts.proxyRemoteUrl) config.proxy = { remoteurl: opts.proxyRemoteUrl, ...opts.proxyCredentials };
  const configPath = join(confDir, "config.yml");
  await writeFile(configPath, toYaml(config));
  const s = spawnTracked(REGISTRY_BIN, ["serve", configPath]);
  const proc = procFor(s, { scratch: [confDir], data: ownsRoot ? [rootDir] : [] });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntil("docker-registry", s, 15_000, () => answers(`${url}/v2/`, (st) => st === 200 || st === 401));
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { ...proc, url, port, rootDir };
}

/**
 * docker-registry with a config file the caller wrote (TLS, token or htpasswd auth, storage
 * middleware); ready once `ready` says so. `scratch` dirs are removed when it stops.
 */
export async function startRegistryWithConfig(configPath: string, ready: () => Promise<boolean>, scratch: string[] = []): Promise<Proc> {
  const s = spawnTracked(REGISTRY_BIN, ["serve", configPath]);
  const proc = procFor(s, { scratch });
  try {
    await waitUntil("docker-registry", s, 15_000, ready);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

export async function skopeo(args: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return run("skopeo", args, opts.timeoutMs ?? 180_000);
}

const ALL_MANIFEST_TYPES = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
].join(", ");

/**
 * Pushes each image with `skopeo copy --all --preserve-digests` (so index/list digests stay exact),
 * then checks the registry serves each tag under the expected digest.
 * skopeo 1.9.3 copies a Docker manifest list from a `dir:` source with --all, so no image needs a
 * hand-rolled HTTP push.
 */
export async function pushTestImages(registryUrl: string, images: TestImage[]): Promise<void> {
  const host = new URL(registryUrl).host;
  await Promise.all(
    images.map(async (img) => {
      const dest = `docker://${host}/${img.repo}:${img.tag}`;
      const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false", img.source, dest]);
      if (r.code !== 0) throw new Error(`skopeo copy ${img.source} → ${dest} failed (${r.code}):\n${r.stderr}`);
    }),
  );
  for (const img of images) {
    for (const ref of [img.tag, img.digest]) {
      const res = await fetch(`${registryUrl}/v2/${img.repo}/manifests/${ref}`, { method: "HEAD", headers: { Accept: ALL_MANIFEST_TYPES } });
      const served = res.headers.get("docker-content-digest");
      if (res.status !== 200 || served !== img.digest) {
        throw new Error(`registry serves ${img.repo}:${ref} as ${res.status} ${served}, expected ${img.digest}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------

/**
 * A private containerd (root, temp --root/--state, own unix socket, CRI off, no TCP listener).
 * ctr 1.6 talks plain HTTP to 127.0.0.1/localhost registries without --plain-http; pass it
 * yourself for any other host.
 */
export async function startContainerd(): Promise<
  Proc & { address: string; ctr(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult> }
> {
  const dir = await makeTempDir("containerd");
  const address = join(dir, "containerd.sock");
  const q = (s: string) => JSON.stringify(s);
  const config = [
    "version = 2",
    `root = ${q(join(dir, "root"))}`,
    `state = ${q(join(dir, "state"))}`,
    // CRI would start its own servers and want CNI; the others only fail noisily here.
    `disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]`,
    "[grpc]",
    `  address = ${q(address)}`,
    "[ttrpc]",
    `  address = ${q(address + ".ttrpc")}`,
    "[debug]",
    '  address = ""',
    "[metrics]",
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(dir, "opt"))}`,
    "",
  ].join("\n");
  const configPath = join(dir, "config.toml");
  await writeFile(configPath, config);
  const s = spawnTracked("containerd", ["--config", configPath]);
  const proc = procFor(s, { scratch: [dir] });
  const ctr = (args: string[], opts: { timeoutMs?: number } = {}) => run("ctr", ["--address", address, ...args], opts.timeoutMs ?? 180_000);
  try {
    await waitUntil("containerd", s, 15_000, async () => existsSync(address) && (await ctr(["version"], { timeoutMs: 5_000 })).code === 0);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { ...proc, address, ctr };
}

// ---------------------------------------------------------------------------

export type RecordedRequest = { method: string; path: string; status: number; bytes: number };

const BLOB_PATH = /\/blobs\/[a-z0-9]+:[a-f0-9]+$/;
// Per-connection headers that must not be forwarded (RFC 9110 §7.6.1), plus Expect (node answers 100 itself).
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "expect"]);

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/**
 * Counts body bytes on their way to the client and, when asked, flips one byte at `flipAt`
 * (same length, so only a digest check can notice).
 */
class Tap extends Transform {
  private offset = 0;
  constructor(
    private readonly onBytes: (n: number) => void,
    private readonly flipAt?: number,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let out = chunk;
    const at = this.flipAt;
    if (at !== undefined && at >= this.offset && at < this.offset + chunk.length) {
      out = Buffer.from(chunk);
      out[at - this.offset] = (out[at - this.offset] ?? 0) ^ 0xff;
    }
    this.offset += chunk.length;
    this.onBytes(chunk.length);
    done(null, out);
  }
}

/**
 * A transparent, streaming reverse proxy in front of `targetUrl` that records every request
 * (path is the URL path without the query). Location headers that point at the target are
 * rewritten to the proxy. With corruptBlobs, every blob GET body has its middle byte flipped.
 */
export async function startRecordingProxy(
  targetUrl: string,
  opts: { corruptBlobs?: boolean } = {},
): Promise<Proc & { url: string; requests: RecordedRequest[]; reset(): void }> {
  const target = new URL(targetUrl);
  const agent = new Agent({ keepAlive: true });
  const requests: RecordedRequest[] = [];
  let log = "";
  let proxyOrigin = "";

  const server = createHttpServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const method = req.method ?? "GET";
    const headers = forwardable(req.headers);
    headers.host = target.host;
    const upReq = httpRequest({ host: target.hostname, port: target.port, method, path: req.url, headers, agent }, (upRes) => {
      const status = upRes.statusCode ?? 502;
      // Recorded as soon as the response starts, so a client that has finished sees it counted.
      const rec: RecordedRequest = { method, path, status, bytes: 0 };
      requests.push(rec);
      const outHeaders = forwardable(upRes.headers);
      const loc = outHeaders.location;
      if (typeof loc === "string" && loc.startsWith(target.origin)) outHeaders.location = proxyOrigin + loc.slice(target.origin.length);
      const length = Number(upRes.headers["content-length"]);
      const corrupt = opts.corruptBlobs && method === "GET" && BLOB_PATH.test(path) && (status === 200 || status === 206) && length > 0;
      res.writeHead(status, upRes.statusMessage, outHeaders);
      pipeline(upRes, new Tap((n) => (rec.bytes += n), corrupt ? Math.floor(length / 2) : undefined), res, (err) => {
        if (err) log += `${method} ${req.url}: response stream: ${err.message}\n`;
      });
    });
    upReq.on("error", (err) => {
      log += `${method} ${req.url}: upstream: ${err.message}\n`;
      if (res.headersSent) return void res.destroy();
      const body = JSON.stringify({ errors: [{ code: "UNKNOWN", message: `recording proxy: upstream unreachable: ${err.message}` }] });
      requests.push({ method, path, status: 502, bytes: Buffer.byteLength(body) });
      res.writeHead(502, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
    });
    // A client that goes away mid-request must not leave the upstream request hanging.
    res.on("close", () => {
      if (!res.writableFinished) upReq.destroy();
    });
    req.pipe(upReq);
  });
  // TLS probes (skopeo tries https first) and other garbage land here; not recorded as requests.
  server.on("clientError", (err, socket) => {
    log += `client error: ${err.message}\n`;
    socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  proxyOrigin = `http://127.0.0.1:${port}`;

  let stopping: Promise<void> | undefined;
  return {
    url: proxyOrigin,
    requests,
    reset: () => void requests.splice(0),
    logs: () => log,
    stop: () =>
      (stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      })),
  };
}

// ---------------------------------------------------------------------------

function flagValue(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? "";
    if (a === name) return args[i + 1];
    if (a.startsWith(name + "=")) return a.slice(name.length + 1);
  }
  return undefined;
}

/**
 * Stowage itself: `node --max-semi-space-size=2 --initial-old-space-size=64 --import tsx src/main.ts serve --listen 127.0.0.1:PORT --data-dir DIR <args>`
 * from the project root; a port and a fresh data dir are chosen unless args name them.
 */
export async function startStowage(
  args: string[],
  opts: {
    env?: Record<string, string>;
    runtime?: "node" | "deno";
    /** Deno permissions instead of the usual ones (which allow writing), e.g. to run with --deny-write. */
    denoPermissions?: string[];
  } = {},
): Promise<Proc & { url: string; port: number; dataDir: string }> {
  const runtime = opts.runtime ?? (process.env.STOWAGE_E2E_RUNTIME === "deno" ? "deno" : "node");
  const extra: string[] = [];
  let listen = flagValue(args, "--listen");
  if (listen === undefined) {
    listen = `127.0.0.1:${await freePort()}`;
    extra.push("--listen", listen);
  }
  let dataDir = flagValue(args, "--data-dir");
  const ownsData = dataDir === undefined || harnessTempDirs.has(dataDir);
  if (dataDir === undefined) {
    dataDir = await makeTempDir("stowage-data");
    extra.push("--data-dir", dataDir);
  }
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new Error(`startStowage: cannot read a port from --listen ${listen}`);
  const port = Number(m[2]);
  const host = ["", "0.0.0.0", "[::]", "::"].includes(m[1] ?? "") ? "127.0.0.1" : (m[1] ?? "127.0.0.1");
  const url = `http://${host}:${port}`;

  const [cmd, prefix] = runtime === "deno"
    ? [await denoBinary(), ["run", ...(opts.denoPermissions ?? ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"]), "src/main.ts"]]
    : [process.execPath, ["--max-semi-space-size=2", "--initial-old-space-size=64", "--import", "tsx", "src/main.ts"]]; // as npm start
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
