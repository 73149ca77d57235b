// wrk for request-rate scenarios: a C load generator, so the client is not what limits a peer
// answering small requests (a node client would be on the same 2 cores, and slower).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";

export const WRK = "/usr/bin/wrk";

export type WrkResult = {
  requestsPerSecond: number;
  /** Seconds. */
  p50: number;
  p99: number;
  requests: number;
  /** Responses that were not 2xx/3xx, and socket errors (connect, read, write, timeout) summed. */
  non2xx: number;
  socketErrors: number;
};

export function wrkInstalled(): boolean {
  return existsSync(WRK);
}

const UNIT: Record<string, number> = { us: 1e-6, ms: 1e-3, s: 1, m: 60 };

function latency(out: string, percentile: string): number {
  const m = new RegExp(`^\\s+${percentile}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m").exec(out);
  if (!m) throw new Error(`wrk output has no ${percentile}% line:\n${out}`);
  return Number(m[1]) * (UNIT[m[2] ?? ""] ?? NaN);
}

export function runWrk(url: string, opts: { threads: number; connections: number; seconds: number; headers: Record<string, string> }): Promise<WrkResult> {
  const args = ["--latency", "-t", String(opts.threads), "-c", String(opts.connections), "-d", `${opts.seconds}s`];
  for (const [k, v] of Object.entries(opts.headers)) args.push("-H", `${k}: ${v}`);
  args.push(url);
  return new Promise((resolve, reject) => {
    execFile(WRK, args, { timeout: (opts.seconds + 30) * 1000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`wrk ${url}: ${err.message}\n${stderr}`));
      try {
        const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(stdout);
        const total = /^\s+(\d+) requests in/m.exec(stdout);
        if (!rps || !total) throw new Error(`unexpected wrk output:\n${stdout}`);
        const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
        resolve({
          requestsPerSecond: Number(rps[1]),
          p50: latency(stdout, "50"),
          p99: latency(stdout, "99"),
          requests: Number(total[1]),
          non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0),
          socketErrors: sock ? sock.slice(1).reduce((s, n) => s + Number(n), 0) : 0,
        });
      } catch (e) {
        reject(e);
      }
    });
  });
}
