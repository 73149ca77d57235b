// The scenarios in the order they run, each for each selected peer (and round), each under its own
// deadline (bench/deadline.ts). A scenario that fails or times out is recorded as such, its
// processes are stopped, and the rest goes on; all results so far are saved after each one.
import type { TestImage } from "../test/harness/images.ts";
import { pushTestImages } from "../test/harness/registry.ts";
import type { BigBlobImage } from "./big-blob.ts";
import { curlBlob } from "./curl.ts";
import { runScenario, type Scope } from "./deadline.ts";
import { blobPath, progress, SETTLE_MS, sleep, withPeer, type Blob, type Metrics, type Setup } from "./measure.ts";
import { rssBytes } from "./proc.ts";
import { scenarioDeadlineMs, type Options, type ScenarioId } from "./options.ts";
import { PEER_NAMES, S3_PEER, type PeerKind } from "./peers.ts";
import { printProfile, profiled, profilingEnv, removePerfMap } from "./profile.ts";
import { addSample, saveResults, type Results } from "./results.ts";
import { withS3, type S3Source } from "./s3.ts";
import { airgapTransfers } from "./scenarios/airgap.ts";
import { CLIENTS, concurrentPull, singlePull } from "./scenarios/concurrent-pull.ts";
import { faultRun } from "./scenarios/fault.ts";
import { largeBlob, type References } from "./scenarios/large-blob.ts";
import { loginStorm } from "./scenarios/login-storm.ts";
import { manifestRate } from "./scenarios/manifests.ts";

export type Plan = {
  opts: Options;
  results: Results;
  path: string;
  setup: Omit<Setup, "scope">;
  images: TestImage[];
  burstImg: TestImage;
  warmImg: TestImage;
  bigImg: BigBlobImage;
  big: Blob;
  refs: References;
  upstreamUrl: string;
};

/** Start-ups per peer in the start-up scenario (every other scenario's starts count as well). */
const STARTS = 3;

export async function runPlan(p: Plan): Promise<void> {
  const { opts, results } = p;
  const on = (id: ScenarioId) => opts.only.has(id);
  const save = () => saveResults(p.path, results).catch((err: unknown) => progress(`could not write ${p.path}: ${String(err)}`));

  const attempt = async (id: ScenarioId, kind: PeerKind | undefined, round: number, label: string, fn: (scope: Scope) => Promise<Metrics | void>) => {
    const tag = opts.rounds > 1 ? ` (round ${round + 1}/${opts.rounds})` : "";
    const who = kind ? `${PEER_NAMES[kind]}: ` : "";
    progress(`${who}${label}${tag}`);
    const out = await runScenario(`${who}${label}`, scenarioDeadlineMs(opts, id), fn);
    if (out.status === "ok") {
      if (kind && out.value) Object.assign(((results.peers[kind] ??= [])[round] ??= {}), out.value);
      results.scenarios.push({ scenario: id, peer: kind, round, status: "ok", seconds: out.seconds });
    } else {
      results.scenarios.push({ scenario: id, peer: kind, round, status: out.status, seconds: out.seconds, error: out.error });
      results.errors.push(`${who}${label}${tag}: ${out.status} after ${out.seconds.toFixed(0)} s: ${out.error}`);
      progress(`  ${out.status}: ${out.error}`);
    }
    await save();
  };
  const setupIn = (scope: Scope, extra: Partial<Setup> = {}): Setup => ({
    ...p.setup,
    scope,
    onStart: (kind, f, command) => {
      addSample(results, kind, "startup.ms", f.startupMs);
      addSample(results, kind, "idle.rss", f.idleRss);
      results.commands[kind] ??= command;
    },
    warn: (message) => {
      results.notes.push(message);
      progress(`  ${message}`);
    },
    ...extra,
  });
  const bigRate = (s: Setup, kind: PeerKind) =>
    withPeer(kind, s, async (peer, cnt) => ({ ...(await largeBlob(peer, cnt, p.big, p.refs)), ...(await manifestRate(peer, p.bigImg)) }));

  for (let round = 0; round < opts.rounds; round++) {
    // Alternating who goes first spreads slow drift on the machine over the peers.
    const order = round % 2 === 0 ? opts.peers : [...opts.peers].reverse();
    if (on("startup")) {
      for (const kind of order) {
        await attempt("startup", kind, round, `start-up and idle memory, ${STARTS} starts, the first left to settle`, async (scope) => {
          let settled = 0;
          for (let i = 0; i < STARTS; i++) {
            await withPeer(kind, setupIn(scope), async (peer) => {
              if (i > 0) return;
              await sleep(SETTLE_MS);
              settled = await rssBytes(peer.pid);
            });
          }
          return { "idle.settledRss": settled };
        });
      }
    }
    if (on("large-blob")) {
      for (const kind of order) await attempt("large-blob", kind, round, "1 GiB blob cold and warm, then the cached manifest rate", (scope) => bigRate(setupIn(scope), kind));
    }
    if (on("pull")) {
      for (const kind of order) {
        await attempt("pull", kind, round, `one client pulls ${p.burstImg.repo}, cold`, (scope) => withPeer(kind, setupIn(scope), (peer, cnt) => singlePull(peer, cnt, p.burstImg)));
        await attempt("pull", kind, round, `${CLIENTS} clients pull ${p.burstImg.repo} at once, cold then cached`, (scope) =>
          withPeer(kind, setupIn(scope), (peer, cnt) => concurrentPull(peer, cnt, p.burstImg)),
        );
      }
    }
    if (on("fault")) {
      for (const kind of order) {
        await attempt("fault", kind, round, "1 GiB blob cold, without and with a connection drop at 50%", async (scope) => {
          const f = await faultRun(kind, setupIn(scope), p.big);
          results.faults.push({ kind, faulty: f.faulty, upstreamRequests: f.upstreamRequests });
          return f.metrics;
        });
      }
    }
  }

  const s3Kinds = opts.peers.map((k) => S3_PEER[k]).filter((k): k is PeerKind => k !== undefined);
  if (on("s3") && s3Kinds.length) {
    const source: S3Source = opts.s3Endpoint ? { endpoint: opts.s3Endpoint } : "rgw";
    results.s3Skipped = await withS3(source, async (s3) => {
      for (let round = 0; round < opts.rounds; round++) {
        for (const kind of round % 2 === 0 ? s3Kinds : [...s3Kinds].reverse()) {
          await attempt("s3", kind, round, "1 GiB blob cold and warm on the S3 store, then the cached manifest rate", (scope) => bigRate(setupIn(scope, { s3 }), kind));
        }
      }
    });
    if (results.s3Skipped) progress(`S3 skipped: ${results.s3Skipped}`);
    await save();
  }

  if (on("login-storm")) {
    await attempt("login-storm", undefined, 0, "failed logins: cached manifest latency without and during a login storm", async (scope) => {
      results.storm = await loginStorm({ runtime: p.setup.nodeRuntime, scope });
    });
  }

  if (on("airgap")) {
    await attempt("airgap", undefined, 0, "air gap: prefill, export and import of the test images and the 1 GiB image, and skopeo doing the same", async (scope) => {
      const others = p.images.filter((i) => i !== p.burstImg && i !== p.warmImg);
      await pushTestImages(p.upstreamUrl, others);
      const all = [...p.images.map((i) => ({ ref: `${i.repo}:${i.tag}`, blobs: i.blobs })), { ref: `${p.bigImg.repo}:${p.bigImg.tag}`, blobs: p.bigImg.blobs }];
      const unique = new Map(all.flatMap((i) => i.blobs.map((b) => [b.digest, b.size] as const)));
      const bytes = [...unique.values()].reduce((a, b) => a + b, 0);
      results.airgap = await airgapTransfers(p.upstreamUrl, all.map((i) => i.ref), bytes, { built: p.setup.nodeRuntime === "node-built", signal: scope.signal });
    });
  }

  if (on("profile")) {
    await attempt("profile", undefined, 0, "profiling Stowage's cold path (Node)", async (scope) => {
      const { env, profilePath } = await profilingEnv();
      await withPeer("stowage", setupIn(scope, { env }), async (peer) => {
        try {
          const run = await profiled(peer.pid, profilePath, () => curlBlob(peer.url + blobPath(p.big), p.big.size));
          const head = `Profile of one Stowage (Node) cold GET of the 1 GiB blob (${(run.value.speed / 1e6).toFixed(1)} MB/s with the profilers on), CPU per GiB:`;
          results.profile = [head, ...(await printProfile(run, p.big.size))];
        } finally {
          await removePerfMap(peer.pid);
        }
      });
    });
  }
}
