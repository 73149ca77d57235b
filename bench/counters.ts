// What sits between a peer and the upstream and counts what the peer fetched. Two kinds:
//  - "harness": test/e2e's recording proxy, in this process (node: on this VM it tops out near
//    100–170 MB/s and burns ~2 CPU s per 268 MB on the same 2 cores the peers use);
//  - "nginx": a single-process nginx with an access log: 800+ MB/s for ~0.1 CPU s per 268 MB.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort, makeTempDir, removeTempDir, startRecordingProxy } from "../test/e2e/servers.ts";
import { processCpuSeconds } from "./proc.ts";

const NGINX = "/usr/sbin/nginx";
const SETPRIV = "/usr/bin/setpriv";

export type CounterKind = "harness" | "nginx";
export type Traffic = { gets: number; bytes: number };

export interface UpstreamCounter {
  readonly url: string;
  /** Forget what was counted so far. */
  reset(): Promise<void>;
  /** GETs of `path` that reached the upstream and the body bytes they returned. */
  traffic(path: string): Promise<Traffic>;
  /** CPU seconds the counter has used so far (for the process running it). */
  cpuSeconds(): Promise<number>;
  stop(): Promise<void>;
}

export function nginxInstalled(): boolean {
  return existsSync(NGINX);
}

export async function startCounter(kind: CounterKind, upstreamUrl: string): Promise<UpstreamCounter> {
  return kind === "nginx" ? startNginxCounter(upstreamUrl) : startHarnessCounter(upstreamUrl);
}

async function startHarnessCounter(upstreamUrl: string): Promise<UpstreamCounter> {
  const rp = await startRecordingProxy(upstreamUrl);
  return {
    url: rp.url,
    reset: async () => rp.reset(),
    traffic: async (path) => {
      const gets = rp.requests.filter((r) => r.method === "GET" && r.path === path);
      return { gets: gets.length, bytes: gets.reduce((s, r) => s + r.bytes, 0) };
    },
    // It runs in this process, so this also counts the benchmark's own (small) bookkeeping.
    cpuSeconds: async () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    },
    stop: () => rp.stop(),
  };
}

async function startNginxCounter(upstreamUrl: string): Promise<UpstreamCounter> {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is not installed (apt-get install nginx), or use --counter harness`);
  const dir = await makeTempDir("bench-nginx");
  const port = await freePort();
  const log = join(dir, "access.log");
  const upstream = new URL(upstreamUrl);
  // One process (master_process off) so the pid is the whole counter and pdeathsig covers it.
  // Unbuffered proxying streams the blob through instead of spooling it to temp files.
  const conf = `
daemon off;
master_process off;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} warn;
events { worker_connections 1024; }
http {
  log_format counted '$request_method $uri $status $body_bytes_sent';
  access_log ${log} counted;
  client_body_temp_path ${join(dir, "body")};
  proxy_temp_path ${join(dir, "proxy")};
  fastcgi_temp_path ${join(dir, "fastcgi")};
  uwsgi_temp_path ${join(dir, "uwsgi")};
  scgi_temp_path ${join(dir, "scgi")};
  upstream origin { server ${upstream.host}; keepalive 16; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      # Unbuffered, this is how much is read per recv(); the 4 KiB default caps it near 200 MB/s.
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;
      proxy_busy_buffers_size 512k;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      client_max_body_size 0;
    }
  }
}
`;
  const confPath = join(dir, "nginx.conf");
  await writeFile(confPath, conf);
  await writeFile(log, "");
  const argv = [NGINX, "-e", join(dir, "error.log"), "-p", dir, "-c", confPath];
  const [file, args] = existsSync(SETPRIV) ? [SETPRIV, ["--pdeathsig", "KILL", "--", ...argv]] : [argv[0]!, argv.slice(1)];
  const child: ChildProcess = spawn(file, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    process.removeListener("exit", killOnExit);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    await removeTempDir(dir);
  };

  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) }).then(
      async (r) => (await r.body?.cancel(), r.status === 200),
      () => false,
    );
    if (ok) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`nginx did not start:\n${stderr}${await readFile(join(dir, "error.log"), "utf8").catch(() => "")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid ?? 0;

  // The log is appended when a request completes; lines before `offset` were reset away.
  let offset = 0;
  const lines = async () => (await readFile(log, "utf8")).slice(offset).split("\n").filter(Boolean);
  return {
    url,
    reset: async () => void (offset = (await readFile(log, "utf8")).length),
    traffic: async (path) => {
      const gets = (await lines()).map((l) => l.split(" ")).filter((f) => f[0] === "GET" && f[1] === path);
      return { gets: gets.length, bytes: gets.reduce((s, f) => s + Number(f[3] ?? 0), 0) };
    },
    cpuSeconds: () => processCpuSeconds(pid),
    stop,
  };
}
