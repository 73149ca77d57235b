// The caches under test, each started empty in front of a given upstream URL, with the pid the
// benchmark needs for memory and CPU readings and the time it took to start: Stowage on Node (the
// built JavaScript) and on Deno, each on its filesystem store or on an S3 bucket (Ceph RGW), CNCF
// distribution in proxy mode, and nginx with proxy_cache (bench/nginx-cache.ts).
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3";
import { denoBinary, freePort } from "../test/harness/processes.ts";
import { startRegistry } from "../test/harness/registry.ts";
import { startStowage } from "../test/harness/stowage.ts";
import { CALL_TIMEOUT_MS } from "./deadline.ts";
import { startNginxCache } from "./nginx-cache.ts";
import { pidListeningOn } from "./proc.ts";
import { startupProbe } from "./startup.ts";

export type PeerKind = "stowage" | "stowage-deno" | "distribution" | "nginx" | "stowage-s3" | "stowage-deno-s3";

export const PEER_NAMES: Record<PeerKind, string> = {
  stowage: "Stowage (Node)",
  "stowage-deno": "Stowage (Deno)",
  distribution: "distribution proxy",
  nginx: "nginx proxy_cache",
  "stowage-s3": "Stowage on S3 (Node)",
  "stowage-deno-s3": "Stowage on S3 (Deno)",
};

/** The filesystem peers, in report order; the S3 ones run in their own scenario. */
export const FS_PEERS: PeerKind[] = ["stowage", "stowage-deno", "distribution", "nginx"];
export const S3_PEER: Partial<Record<PeerKind, PeerKind>> = { stowage: "stowage-s3", "stowage-deno": "stowage-deno-s3" };

/** How the Node peer runs: the built JavaScript (as `npm start` and the image), or tsx as a fallback. */
export type NodeRuntime = "node-built" | "node";
type HarnessRuntime = NonNullable<NonNullable<Parameters<typeof startStowage>[1]>["runtime"]>;

/** Where the S3 peer keeps its blobs (test/harness/rgw.ts's Rgw is one). */
export type S3Target = { endpoint: string; bucket: string; credentials: { accessKeyId: string; secretAccessKey: string }; client: S3Client };

export type Peer = {
  kind: PeerKind;
  url: string;
  port: number;
  pid: number;
  /** Milliseconds from spawning the process to its first answered GET /v2/. */
  startupMs: number;
  /** The peer's command line, as the kernel has it (to show what actually ran). */
  command: string;
  /** Whether the blob is committed to the peer's own storage (so a GET will not go upstream). */
  hasBlob(digest: string, size: number): Promise<boolean>;
  stop(): Promise<void>;
  logs(): string;
};

export type PeerOptions = { env?: Record<string, string>; s3?: S3Target; nodeRuntime?: NodeRuntime };

async function fileHasSize(path: string, size: number): Promise<boolean> {
  return stat(path).then((s) => s.size === size, () => false);
}

const s3Deadline = () => ({ abortSignal: AbortSignal.timeout(CALL_TIMEOUT_MS.s3) });

let s3Peers = 0;

type Started = { url: string; stop(): Promise<void>; logs(): string; hasBlob(alg: string, hex: string, size: number): Promise<boolean>; cleanUp?(): Promise<void> };

async function startStowagePeer(kind: PeerKind, upstreamUrl: string, port: number, opts: PeerOptions): Promise<Started> {
  const deno = kind === "stowage-deno" || kind === "stowage-deno-s3";
  const runtime = (deno ? "deno" : (opts.nodeRuntime ?? "node-built")) as HarnessRuntime;
  const args = ["--upstream", `local=${upstreamUrl}`, "--log-level", "warn", "--listen", `127.0.0.1:${port}`];
  if (kind === "stowage" || kind === "stowage-deno") {
    const s = await startStowage(args, { env: opts.env, runtime });
    // src/storage/fs/fs-store.ts's layout.
    return { ...s, hasBlob: (alg, hex, size) => fileHasSize(join(s.dataDir, "blobs", alg, hex.slice(0, 2), hex), size) };
  }
  const s3 = opts.s3;
  if (!s3) throw new Error("the S3 peer needs an S3 target");
  // A prefix of its own, so every S3 peer starts with an empty cache in the shared bucket.
  const prefix = `bench-${process.pid}-${++s3Peers}`;
  const storage = `s3://${s3.bucket}/${prefix}?endpoint=${s3.endpoint}&region=us-east-1`;
  const env = {
    ...opts.env,
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  };
  const s = await startStowage([...args, "--storage", storage], { env, runtime });
  return {
    ...s,
    // src/storage/s3/s3-store.ts's layout: <prefix>/blobs/<alg>/<hex>.
    hasBlob: (alg, hex, size) =>
      s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: `${prefix}/blobs/${alg}/${hex}` }), s3Deadline()).then((h) => h.ContentLength === size, () => false),
    // RGW here keeps objects in memory (memstore, 2 GiB): a finished peer's gigabyte must go.
    cleanUp: async () => {
      const listed = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${prefix}/` }), s3Deadline());
      // One by one: a handful of keys, and DeleteObjects wants a checksum header not every RGW takes.
      for (const o of listed.Contents ?? []) await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: o.Key }), s3Deadline());
    },
  };
}

async function startOther(kind: "distribution" | "nginx", upstreamUrl: string, port: number): Promise<Started> {
  if (kind === "nginx") {
    const n = await startNginxCache(upstreamUrl, port);
    return { url: n.url, stop: n.stop, logs: () => "", hasBlob: (alg, hex, size) => n.hasBlob(`${alg}:${hex}`, size) };
  }
  const r = await startRegistry({ proxyRemoteUrl: upstreamUrl, port });
  // distribution's filesystem driver layout.
  return { ...r, hasBlob: (alg, hex, size) => fileHasSize(join(r.rootDir, "docker", "registry", "v2", "blobs", alg, hex.slice(0, 2), hex, "data"), size) };
}

export async function startPeer(kind: PeerKind, upstreamUrl: string, opts: PeerOptions = {}): Promise<Peer> {
  // Resolved before the clock starts: the first call asks npx where deno is.
  if (kind === "stowage-deno" || kind === "stowage-deno-s3") await denoBinary();
  const port = await freePort();
  const probe = startupProbe(`http://127.0.0.1:${port}`);
  let proc: Started;
  try {
    proc = kind === "distribution" || kind === "nginx" ? await startOther(kind, upstreamUrl, port) : await startStowagePeer(kind, upstreamUrl, port, opts);
  } catch (err) {
    probe.done();
    throw err;
  }
  const startupMs = await probe.measured;
  const stop = async () => {
    await proc.stop();
    await proc.cleanUp?.();
  };
  try {
    const pid = await pidListeningOn(port);
    const command = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0").filter(Boolean).join(" ");
    return {
      kind,
      url: proc.url,
      port,
      pid,
      startupMs,
      command,
      hasBlob: (digest, size) => {
        const [alg = "", hex = ""] = digest.split(":");
        return proc.hasBlob(alg, hex, size);
      },
      stop,
      logs: () => proc.logs(),
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
