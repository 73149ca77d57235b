// The caches under test, each started empty in front of a given upstream URL, with the pid the
// benchmark needs for memory and CPU readings.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { startRegistry, startStowage } from "../test/e2e/servers.ts";
import { pidListeningOn } from "./proc.ts";

export type PeerKind = "stowage" | "distribution";

export const PEER_NAMES: Record<PeerKind, string> = { stowage: "Stowage", distribution: "distribution proxy" };

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

export async function startPeer(kind: PeerKind, upstreamUrl: string, opts: { env?: Record<string, string> } = {}): Promise<Peer> {
  // Where each keeps a committed blob: src/storage/fs-store.ts, and distribution's filesystem driver layout.
  let blobFile: (alg: string, hex: string) => string;
  let proc: { url: string; port: number; stop(): Promise<void>; logs(): string };
  if (kind === "stowage") {
    const s = await startStowage(["--upstream", `local=${upstreamUrl}`, "--log-level", "warn"], { env: opts.env });
    blobFile = (alg, hex) => join(s.dataDir, "blobs", alg, hex.slice(0, 2), hex);
    proc = s;
  } else {
    const r = await startRegistry({ proxyRemoteUrl: upstreamUrl });
    blobFile = (alg, hex) => join(r.rootDir, "docker", "registry", "v2", "blobs", alg, hex.slice(0, 2), hex, "data");
    proc = r;
  }
  try {
    const pid = await pidListeningOn(proc.port);
    return {
      kind,
      url: proc.url,
      port: proc.port,
      pid,
      hasBlob: (digest, size) => {
        const [alg = "", hex = ""] = digest.split(":");
        return fileHasSize(blobFile(alg, hex), size);
      },
      stop: () => proc.stop(),
      logs: () => proc.logs(),
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}
