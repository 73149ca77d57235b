// The caches under test, each started empty in front of a given upstream URL, with the pid the
// benchmark needs for memory and CPU readings: Stowage on its filesystem store, Stowage on an S3
// bucket (Ceph RGW), and CNCF distribution in proxy mode.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3";
import { startRegistry } from "../test/harness/registry.ts";
import { startStowage } from "../test/harness/stowage.ts";
import { pidListeningOn } from "./proc.ts";

export type PeerKind = "stowage" | "stowage-s3" | "distribution";

export const PEER_NAMES: Record<PeerKind, string> = { stowage: "Stowage", "stowage-s3": "Stowage on S3", distribution: "distribution proxy" };

/** Where the S3 peer keeps its blobs (test/harness/rgw.ts's Rgw is one). */
export type S3Target = { endpoint: string; bucket: string; credentials: { accessKeyId: string; secretAccessKey: string }; client: S3Client };

export type Peer = {
  kind: PeerKind;
  url: string;
  port: number;
  pid: number;
  /** Whether the blob is committed to the peer's own storage (so a GET will not go upstream). */
  hasBlob(digest: string, size: number): Promise<boolean>;
  stop(): Promise<void>;
  logs(): string;
};

async function fileHasSize(path: string, size: number): Promise<boolean> {
  return stat(path).then((s) => s.size === size, () => false);
}

let s3Peers = 0;

export async function startPeer(kind: PeerKind, upstreamUrl: string, opts: { env?: Record<string, string>; s3?: S3Target } = {}): Promise<Peer> {
  let hasBlob: (alg: string, hex: string, size: number) => Promise<boolean>;
  let cleanUp = async () => {};
  let proc: { url: string; port: number; stop(): Promise<void>; logs(): string };
  const stowageArgs = ["--upstream", `local=${upstreamUrl}`, "--log-level", "warn"];
  if (kind === "stowage") {
    const s = await startStowage(stowageArgs, { env: opts.env });
    // src/storage/fs/fs-store.ts's layout.
    hasBlob = (alg, hex, size) => fileHasSize(join(s.dataDir, "blobs", alg, hex.slice(0, 2), hex), size);
    proc = s;
  } else if (kind === "stowage-s3") {
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
    proc = await startStowage([...stowageArgs, "--storage", storage], { env });
    // src/storage/s3/s3-store.ts's layout: <prefix>/blobs/<alg>/<hex>.
    hasBlob = (alg, hex, size) =>
      s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: `${prefix}/blobs/${alg}/${hex}` })).then((h) => h.ContentLength === size, () => false);
    // RGW here keeps objects in memory (memstore, 2 GiB): a finished peer's gigabyte must go.
    cleanUp = async () => {
      const listed = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${prefix}/` }));
      // One by one: a handful of keys, and DeleteObjects wants a checksum header not every RGW takes.
      for (const o of listed.Contents ?? []) await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: o.Key }));
    };
  } else {
    const r = await startRegistry({ proxyRemoteUrl: upstreamUrl });
    // distribution's filesystem driver layout.
    hasBlob = (alg, hex, size) => fileHasSize(join(r.rootDir, "docker", "registry", "v2", "blobs", alg, hex.slice(0, 2), hex, "data"), size);
    proc = r;
  }
  const stop = async () => {
    await proc.stop();
    await cleanUp();
  };
  try {
    const pid = await pidListeningOn(proc.port);
    return {
      kind,
      url: proc.url,
      port: proc.port,
      pid,
      hasBlob: (digest, size) => {
        const [alg = "", hex = ""] = digest.split(":");
        return hasBlob(alg, hex, size);
      },
      stop,
      logs: () => proc.logs(),
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
