// The caches under test, each started empty in front of a given upstream URL, with the pid the
// benchmark needs for memory and CPU readings.
import { startRegistry, startStowage } from "../test/e2e/servers.ts";
import { pidListeningOn } from "./proc.ts";

export type PeerKind = "stowage" | "distribution";

export const PEER_NAMES: Record<PeerKind, string> = { stowage: "Stowage", distribution: "distribution proxy" };

export type Peer = { kind: PeerKind; url: string; port: number; pid: number; stop(): Promise<void>; logs(): string };

export async function startPeer(kind: PeerKind, upstreamUrl: string, opts: { env?: Record<string, string> } = {}): Promise<Peer> {
  const proc =
    kind === "stowage"
      ? await startStowage(["--upstream", `local=${upstreamUrl}`, "--log-level", "warn"], { env: opts.env })
      : await startRegistry({ proxyRemoteUrl: upstreamUrl });
  try {
    const pid = await pidListeningOn(proc.port);
    return { kind, url: proc.url, port: proc.port, pid, stop: () => proc.stop(), logs: () => proc.logs() };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}
