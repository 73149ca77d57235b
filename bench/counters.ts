// What sits between a peer and the upstream and counts what the peer fetched. Two kinds:
//  - "harness": test/e2e's recording proxy, in this process (node: on this VM it tops out near
//    100–170 MB/s and burns ~2 CPU s per 268 MB on the same 2 cores the peers use);
//  - "nginx": a single-process nginx with an access log: 800+ MB/s for ~0.1 CPU s per 268 MB.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { startRecordingProxy } from "../test/harness/recording-proxy.ts";
import { startNginx } from "./nginx.ts";

export type CounterKind = "harness" | "nginx";
export type Traffic = { gets: number; bytes: number };

export interface UpstreamCounter {
  readonly url: string;
  /** Forget what was counted so far. */
  reset(): Promise<void>;
  /** GETs of `path` that reached the upstream and the body bytes they returned. */
  traffic(path: string): Promise<Traffic>;
  stop(): Promise<void>;
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
    stop: () => rp.stop(),
  };
}

async function startNginxCounter(upstreamUrl: string): Promise<UpstreamCounter> {
  const upstream = new URL(upstreamUrl);
  let log = "";
  // Unbuffered proxying streams the blob through instead of spooling it to temp files.
  const n = await startNginx((port, dir) => {
    log = join(dir, "access.log");
    return `
  log_format counted '$request_method $uri $status $body_bytes_sent';
  access_log ${log} counted;
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
  }`;
  });

  // The log is appended when a request completes; lines before `offset` were reset away.
  let offset = 0;
  const text = () => readFile(log, "utf8").catch(() => "");
  const lines = async () => (await text()).slice(offset).split("\n").filter(Boolean);
  return {
    url: n.url,
    reset: async () => void (offset = (await text()).length),
    traffic: async (path) => {
      const gets = (await lines()).map((l) => l.split(" ")).filter((f) => f[0] === "GET" && f[1] === path);
      return { gets: gets.length, bytes: gets.reduce((s, f) => s + Number(f[3] ?? 0), 0) };
    },
    stop: n.stop,
  };
}
