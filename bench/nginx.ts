// nginx as a benchmark instrument: one process (master_process off), so its pid is the whole
// server and pdeathsig covers it. Two uses: the counting proxy in front of each peer
// (counters.ts), and a plain file server that sets the ceiling for warm reads.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { freePort, makeTempDir, removeTempDir } from "../test/harness/processes.ts";

export const NGINX = "/usr/sbin/nginx";
const SETPRIV = "/usr/bin/setpriv";

export function nginxInstalled(): boolean {
  return existsSync(NGINX);
}

export type Nginx = { url: string; pid: number; dir: string; stop(): Promise<void> };

/** Starts nginx with the given `http { }` body, made for the port it must listen on and its scratch dir. */
export async function startNginx(httpBlock: (port: number, dir: string) => string, opts: { port?: number } = {}): Promise<Nginx> {
  if (!nginxInstalled()) throw new Error(`${NGINX} is not installed (apt-get install nginx)`);
  const dir = await makeTempDir("bench-nginx");
  const port = opts.port ?? (await freePort());
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((t) => `  ${t}_temp_path ${join(dir, t)};`).join("\n");
  const conf = `
daemon off;
master_process off;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} warn;
events { worker_connections 1024; }
http {
${temp}
${httpBlock(port, dir)}
}
`;
  const confPath = join(dir, "nginx.conf");
  await writeFile(confPath, conf);
  const argv = [NGINX, "-e", join(dir, "error.log"), "-p", dir, "-c", confPath];
  const [file, args] = existsSync(SETPRIV) ? [SETPRIV, ["--pdeathsig", "KILL", "--", ...argv]] : [argv[0]!, argv.slice(1)];
  const child: ChildProcess = spawn(file, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  const url = `http://127.0.0.1:${port}`;
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      process.removeListener("exit", killOnExit);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      // nginx finishes sending in-flight bodies on SIGTERM's fast shutdown; a stuck one is killed.
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
      await removeTempDir(dir);
    })());

  const deadline = Date.now() + 10_000;
  for (;;) {
    // Any HTTP answer means it listens; what it answers depends on the config.
    const up = await fetch(`${url}/`, { signal: AbortSignal.timeout(1000) }).then(
      async (r) => (await r.body?.cancel(), true),
      () => false,
    );
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`nginx did not start:\n${stderr}${await readFile(join(dir, "error.log"), "utf8").catch(() => "")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, pid: child.pid ?? 0, dir, stop };
}

/**
 * nginx serving one file with sendfile: as fast as this machine hands a file in the page cache to
 * a local client, so the ceiling for any cache's warm reads. The file is at `${url}/${name}`.
 */
export async function startFileServer(path: string): Promise<Nginx & { fileUrl: string }> {
  const n = await startNginx(
    (port) => `
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:${port};
    root ${dirname(path)};
  }`,
  );
  return { ...n, fileUrl: `${n.url}/${basename(path)}` };
}
