// The bench's command line (documented in bench/run.ts's header).
import { parseArgs } from "node:util";
import type { CounterKind } from "./counters.ts";
import { nginxInstalled } from "./nginx.ts";
import type { PeerKind } from "./peers.ts";

export const SCENARIOS = ["startup", "large-blob", "pull", "fault", "s3", "login-storm", "airgap", "profile"] as const;
export type ScenarioId = (typeof SCENARIOS)[number];

/** The names --peers takes, and the filesystem peer each stands for. */
export const PEER_FLAGS: Record<string, PeerKind> = { stowage: "stowage", deno: "stowage-deno", distribution: "distribution", nginx: "nginx" };

/** Minutes each scenario may take (for one peer, one round) before it is stopped and reported as timed out. */
export const SCENARIO_MINUTES: Record<ScenarioId, number> = {
  startup: 3,
  "large-blob": 8,
  pull: 8,
  fault: 8,
  s3: 10,
  "login-storm": 5,
  airgap: 40,
  profile: 5,
};

export type Options = {
  rounds: number;
  counter: CounterKind;
  only: Set<ScenarioId>;
  peers: PeerKind[];
  /** Overrides every scenario's deadline (seconds), to try the deadline itself. */
  scenarioTimeoutS: number | null;
  /** Use this S3 endpoint (bucket `stowage-bench`, RGW's test credentials) instead of starting RGW. */
  s3Endpoint: string | null;
  build: boolean;
};

function list<T extends string>(flag: string, text: string, allowed: readonly T[]): T[] {
  const items = text.split(",").map((s) => s.trim()).filter(Boolean);
  for (const i of items) if (!allowed.includes(i as T)) throw new Error(`--${flag}: unknown ${JSON.stringify(i)} (one of ${allowed.join(", ")})`);
  return items as T[];
}

export function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      // nginx when installed: test/e2e's recording proxy costs ~2 CPU s per 268 MB here and caps
      // every cold fetch at 100–170 MB/s, which would measure the harness more than the peers.
      counter: { type: "string", default: nginxInstalled() ? "nginx" : "harness" },
      rounds: { type: "string", default: "1" },
      profile: { type: "boolean", default: false },
      only: { type: "string" },
      peers: { type: "string" },
      "scenario-timeout": { type: "string" },
      "s3-endpoint": { type: "string" },
      "no-build": { type: "boolean", default: false },
    },
  });
  if (values.counter !== "harness" && values.counter !== "nginx") throw new Error(`--counter must be harness or nginx, not ${values.counter}`);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, not ${values.rounds}`);
  const defaults = SCENARIOS.filter((s) => s !== "profile");
  const only = new Set<ScenarioId>(values.only ? list("only", values.only, SCENARIOS) : [...defaults, ...(values.profile ? (["profile"] as const) : [])]);
  if (values.profile) only.add("profile");
  const peerNames = values.peers ? list("peers", values.peers, Object.keys(PEER_FLAGS)) : Object.keys(PEER_FLAGS);
  const timeout = values["scenario-timeout"] === undefined ? null : Number(values["scenario-timeout"]);
  if (timeout !== null && !(timeout > 0)) throw new Error(`--scenario-timeout must be a number of seconds, not ${values["scenario-timeout"]}`);
  return {
    rounds,
    counter: values.counter,
    only,
    peers: peerNames.map((n) => PEER_FLAGS[n]!),
    scenarioTimeoutS: timeout,
    s3Endpoint: values["s3-endpoint"] ?? null,
    build: !values["no-build"],
  };
}

export function scenarioDeadlineMs(o: Options, id: ScenarioId): number {
  return (o.scenarioTimeoutS ?? SCENARIO_MINUTES[id] * 60) * 1000;
}
