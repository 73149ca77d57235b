// What every scenario shares: a fresh peer behind a fresh upstream counter, warmed up, and a
// measurement of the peer process (peak RSS, CPU) around the timed part.
import type { TestImage } from "../test/harness/images.ts";
import { startCounter, type CounterKind, type Traffic, type UpstreamCounter } from "./counters.ts";
import { CALL_TIMEOUT_MS, type Scope } from "./deadline.ts";
import { PEER_NAMES, startPeer, type NodeRuntime, type Peer, type PeerKind, type S3Target } from "./peers.ts";
import { cpuSeconds, PeakRss, rssBytes } from "./proc.ts";

/**
 * How long a peer is left alone before its settled idle RSS is read: at rest, not just after a
 * burst. Stowage stops its hashing threads 10 s after their last blob (src/digest/worker-pool.ts).
 */
export const SETTLE_MS = 12_000;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const started = performance.now();
/** Progress goes to stderr: stdout is the report alone. */
export const progress = (msg: string) => console.error(`[bench ${((performance.now() - started) / 1000).toFixed(1)} s] ${msg}`);

/** A scenario's figures for one peer, by name; the report picks rows out of these. */
export type Metrics = Record<string, number>;

export type Setup = {
  counter: CounterKind;
  upstreamUrl: string;
  warmImg: TestImage;
  s3?: S3Target;
  /** Extra environment for the peer process (profiling hooks). */
  env?: Record<string, string>;
  nodeRuntime: NodeRuntime;
  /** The scenario's scope: what withPeer starts is stopped when the scenario's deadline passes. */
  scope: Scope;
  /** Receives each start's figures (start-up ms, idle RSS after warm-up) and the command that ran. */
  onStart?(kind: PeerKind, figures: { startupMs: number; idleRss: number }, command: string): void;
  /** Told of trouble that costs no figures (a peer that would not stop cleanly). */
  warn?(message: string): void;
};

export type Blob = { repo: string; digest: string; size: number };

export const blobPath = (b: { repo: string; digest: string }) => `/v2/${b.repo}/blobs/${b.digest}`;

/** Upstream GETs and bytes over several paths (a whole image's blobs). */
export async function trafficOf(counter: UpstreamCounter, paths: string[]): Promise<Traffic> {
  const all = await Promise.all(paths.map((p) => counter.traffic(p)));
  return all.reduce((a, t) => ({ gets: a.gets + t.gets, bytes: a.bytes + t.bytes }), { gets: 0, bytes: 0 });
}

/**
 * Pulls every blob of a small image through the peer: the request path, the upstream client and
 * the store all run (and get compiled) before anything is timed. Same for every peer.
 */
async function warmUp(peer: Peer, img: TestImage, scope: Scope): Promise<void> {
  for (let i = 0; i < img.blobs.length; i += 5) {
    await Promise.all(
      img.blobs.slice(i, i + 5).map(async (b) => {
        const res = await fetch(peer.url + blobPath({ repo: img.repo, digest: b.digest }), { signal: scope.deadline(CALL_TIMEOUT_MS.small) });
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status !== 200 || body.byteLength !== b.size) throw new Error(`warm-up GET ${b.digest} from ${peer.kind}: ${res.status}, ${body.byteLength} bytes`);
      }),
    );
  }
  // Let the warm-up's after-work (commits, GC) finish before anything is measured.
  await sleep(500);
}

/**
 * A fresh counter and an empty peer behind it, warmed up; both stopped after `fn`, or by the
 * scope when the scenario's deadline passes first.
 */
export async function withPeer<T>(kind: PeerKind, setup: Setup, fn: (peer: Peer, counter: UpstreamCounter) => Promise<T>): Promise<T> {
  const { scope } = setup;
  scope.check();
  const counter = await startCounter(setup.counter, setup.upstreamUrl);
  const stopCounter = scope.defer("upstream counter", () => counter.stop());
  try {
    scope.check();
    const peer = await startPeer(kind, counter.url, { s3: setup.s3, env: setup.env, nodeRuntime: setup.nodeRuntime });
    const stopPeer = scope.defer(PEER_NAMES[kind], () => peer.stop());
    try {
      await warmUp(peer, setup.warmImg, scope);
      setup.onStart?.(kind, { startupMs: peer.startupMs, idleRss: await rssBytes(peer.pid) }, peer.command);
      await counter.reset();
      scope.check();
      return await fn(peer, counter);
    } finally {
      // A peer that will not stop cleanly (an S3 cleanup that times out) must not cost the figures measured.
      await stopPeer().catch((err: unknown) => setup.warn?.(`stopping ${PEER_NAMES[kind]}: ${err instanceof Error ? err.message : String(err)}`));
    }
  } finally {
    await stopCounter().catch((err: unknown) => setup.warn?.(`stopping the upstream counter: ${err instanceof Error ? err.message : String(err)}`));
  }
}

export type Measured<T> = { value: T; wallSeconds: number; peakRss: number; cpuSeconds: number };

/** Runs `fn` while watching the peer's memory and CPU time. */
export async function measure<T>(peer: Peer, fn: () => Promise<T>): Promise<Measured<T>> {
  const rss = await PeakRss.start(peer.pid);
  const cpuBefore = await cpuSeconds(peer.pid);
  const t0 = performance.now();
  const value = await fn();
  const wallSeconds = (performance.now() - t0) / 1000;
  // Work that finishes just after the last byte (commit, bookkeeping, access log) belongs to the scenario.
  await sleep(250);
  return { value, wallSeconds, peakRss: await rss.stop(), cpuSeconds: (await cpuSeconds(peer.pid)) - cpuBefore };
}

/** Polls until the peer has committed the blob; resolves to the seconds that took. */
export async function untilCached(peer: Peer, blob: Blob, timeoutMs = 120_000, signal?: AbortSignal): Promise<number> {
  const t0 = performance.now();
  while (!(await peer.hasBlob(blob.digest, blob.size))) {
    signal?.throwIfAborted();
    if (performance.now() - t0 > timeoutMs) throw new Error(`${PEER_NAMES[peer.kind]} had not stored ${blob.digest} ${timeoutMs} ms after serving it`);
    await sleep(20);
  }
  return (performance.now() - t0) / 1000;
}
