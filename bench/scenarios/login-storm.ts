// Failed logins against a Stowage with access control on, and what they cost everyone else: the
// p99 of cached manifest GETs (wrk, with a valid bearer token) without an attack, then while 200
// attackers keep sending Basic logins with wrong passwords (made-up names, from 50 loopback
// addresses, half to /token and half to a registry route as a distribution proxy would). Goal:
// the p99 during the attack within 2× of the p99 without it. Prints figures; asserts nothing.
//
//   node --import tsx bench/scenarios/login-storm.ts     (needs wrk: apt-get install wrk)
//
// The upstream is a tiny in-process server: after the first GET, every manifest GET is a cache hit.
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { Agent, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import bcrypt from "bcryptjs";
import { freePort } from "../../test/harness/processes.ts";
import { startStowage } from "../../test/harness/stowage.ts";
import { CALL_TIMEOUT_MS, type Scope } from "../deadline.ts";
import { progress, sleep, type Metrics } from "../measure.ts";
import { cpuSeconds, pidListeningOn } from "../proc.ts";
import { runWrk, wrkInstalled, type WrkResult } from "../wrk.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export const STORM = { attackers: 200, addresses: 50, rounds: 3, wrk: { threads: 2, connections: 16, seconds: 4 } };

const MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json";

async function tinyUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"a".repeat(64)}`, size: 2 },
      layers: [],
    }),
  );
  const digest = `sha256:${createHash("sha256").update(manifest).digest("hex")}`;
  const server = createServer((req, res) => {
    if (req.url === "/v2/") return void res.writeHead(200, { "content-type": "application/json" }).end("{}");
    if (/^\/v2\/.+\/manifests\/[^/]+$/.test(req.url ?? "")) {
      res.writeHead(200, { "content-type": MEDIA_TYPE, "content-length": manifest.length, "docker-content-digest": digest });
      return void res.end(req.method === "HEAD" ? undefined : manifest);
    }
    res.writeHead(404, { "content-type": "application/json" }).end('{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type Tally = { sent: number; byStatus: Record<string, number> };

/** `count` loops, each sending a failed login as soon as the previous one is answered, until `stop`. */
function attack(base: string, count: number, addresses: number, stop: { now: boolean }): { done: Promise<void>; tally: Tally } {
  const tally: Tally = { sent: 0, byStatus: {} };
  const agents = Array.from({ length: addresses }, () => new Agent({ keepAlive: true, maxSockets: count }));
  const one = (i: number, n: number) =>
    new Promise<void>((resolve) => {
      const user = `intruder-${i}-${n}`;
      const path = i % 2 === 0 ? "/token?scope=repository:app:pull&service=stowage" : "/v2/app/manifests/latest";
      const req = request(
        `${base}${path}`,
        {
          agent: agents[i % addresses],
          localAddress: `127.0.2.${1 + (i % addresses)}`,
          headers: { authorization: `Basic ${Buffer.from(`${user}:wrong-${n}`).toString("base64")}` },
          timeout: 30_000,
        },
        (res) => {
          const key = String(res.statusCode);
          tally.byStatus[key] = (tally.byStatus[key] ?? 0) + 1;
          res.resume();
          res.on("end", resolve);
          res.on("error", resolve);
        },
      );
      req.on("timeout", () => req.destroy());
      req.on("error", () => {
        tally.byStatus.error = (tally.byStatus.error ?? 0) + 1;
        resolve();
      });
      tally.sent++;
      req.end();
    });
  const loop = async (i: number) => {
    for (let n = 0; !stop.now; n++) await one(i, n);
  };
  const done = Promise.all(Array.from({ length: count }, (_, i) => loop(i))).then(() => agents.forEach((a) => a.destroy()));
  return { done, tally };
}

/** `runtime`: how Stowage runs (the harness's choices); `scope` stops it if the bench's deadline passes. */
export async function loginStorm(opts: { runtime?: string; scope?: Scope } = {}): Promise<{ metrics: Metrics; attack: Tally }> {
  const upstream = await tinyUpstream();
  const dir = await mkdtemp(join(tmpdir(), "stowage-bench-logins-"));
  try {
    // A realistic cost (10, as `stowage user hash` makes): what every failed check costs.
    await writeFile(join(dir, "stowage.yaml"), ["accessControl: true", "users:", `  - { name: alice, passwordHash: "${bcrypt.hashSync("wonderland", 10)}" }`].join("\n"));
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const stowage = await startStowage([
      "--config", join(dir, "stowage.yaml"), "--listen", `127.0.0.1:${port}`, "--public-url", base,
      "--upstream", `local=${upstream.url}`, "--log-level", "error",
    ], { runtime: opts.runtime as "node" | undefined });
    const stopStowage = opts.scope?.defer("Stowage (login storm)", () => stowage.stop()) ?? (() => stowage.stop());
    try {
      const pid = await pidListeningOn(port);
      const tokenRes = await fetch(`${base}/token?scope=repository:app:pull&service=stowage`, {
        headers: { authorization: `Basic ${Buffer.from("alice:wonderland").toString("base64")}` },
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS.small),
      });
      const token = String(((await tokenRes.json()) as { token?: string }).token);
      const headers = { Authorization: `Bearer ${token}`, Accept: MEDIA_TYPE };
      const url = `${base}/v2/app/manifests/latest`;
      const first = await fetch(url, { headers, signal: AbortSignal.timeout(CALL_TIMEOUT_MS.small) });
      await first.arrayBuffer();
      if (first.status !== 200) throw new Error(`GET ${url} with alice's token: ${first.status}`);

      // Quiet and attacked runs alternate, so that the machine's drift spreads over both; medians are reported.
      const quiet: WrkResult[] = [];
      const attacked: WrkResult[] = [];
      const cpu = { quiet: 0, attack: 0 };
      const tally: Tally = { sent: 0, byStatus: {} };
      let sentDuring = 0;
      for (let round = 1; round <= STORM.rounds; round++) {
        progress(`round ${round}/${STORM.rounds}: cached manifest GETs, no attack (wrk ${STORM.wrk.seconds} s)`);
        const cpu0 = await cpuSeconds(pid);
        quiet.push(await runWrk(url, { ...STORM.wrk, headers }));
        cpu.quiet += (await cpuSeconds(pid)) - cpu0;

        progress(`round ${round}/${STORM.rounds}: the same while ${STORM.attackers} clients send failed logins from ${STORM.addresses} addresses`);
        const stop = { now: false };
        // After the bench's deadline Stowage is gone: the attackers must not spin on refused connections.
        opts.scope?.signal.addEventListener("abort", () => (stop.now = true), { once: true });
        const storm = attack(base, STORM.attackers, STORM.addresses, stop);
        // Let the attack reach its steady state (queue full, throttles engaged) before measuring.
        await sleep(1000);
        const cpu1 = await cpuSeconds(pid);
        const sentBefore = storm.tally.sent;
        attacked.push(await runWrk(url, { ...STORM.wrk, headers }));
        cpu.attack += (await cpuSeconds(pid)) - cpu1;
        sentDuring += storm.tally.sent - sentBefore;
        stop.now = true;
        await storm.done;
        tally.sent += storm.tally.sent;
        for (const [k, n] of Object.entries(storm.tally.byStatus)) tally.byStatus[k] = (tally.byStatus[k] ?? 0) + n;
      }

      // Did a login from a fresh address still work right after? (alice never failed.)
      const after = await fetch(`${base}/token?scope=repository:app:pull&service=stowage`, {
        headers: { authorization: `Basic ${Buffer.from("alice:wonderland").toString("base64")}` },
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS.small),
      });
      await after.arrayBuffer();

      const med = (runs: WrkResult[], f: (r: WrkResult) => number) => median(runs.map(f));
      const metrics: Metrics = {
        "logins.quiet.p99": med(quiet, (r) => r.p99),
        "logins.quiet.p50": med(quiet, (r) => r.p50),
        "logins.quiet.rps": med(quiet, (r) => r.requestsPerSecond),
        "logins.quiet.cpu": cpu.quiet / STORM.rounds,
        "logins.attack.p99": med(attacked, (r) => r.p99),
        "logins.attack.p50": med(attacked, (r) => r.p50),
        "logins.attack.rps": med(attacked, (r) => r.requestsPerSecond),
        "logins.attack.cpu": cpu.attack / STORM.rounds,
        "logins.attack.errors": attacked.reduce((n, r) => n + r.non2xx + r.socketErrors, 0),
        "logins.attack.loginsPerSecond": sentDuring / (STORM.wrk.seconds * STORM.rounds),
        "logins.after.status": after.status,
      };
      quiet.forEach((r, i) => (metrics[`logins.quiet.p99.${i + 1}`] = r.p99));
      attacked.forEach((r, i) => (metrics[`logins.attack.p99.${i + 1}`] = r.p99));
      return { metrics, attack: tally };
    } finally {
      await stopStowage();
    }
  } finally {
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export function printLoginStorm(r: { metrics: Metrics; attack: Tally }): void {
  const m = r.metrics;
  const ms = (v: number | undefined) => `${((v ?? NaN) * 1000).toFixed(2)} ms`;
  const ratio = (m["logins.attack.p99"] ?? NaN) / (m["logins.quiet.p99"] ?? NaN);
  const w = STORM.wrk;
  console.log(`Failed logins: cached manifest GETs (wrk -t${w.threads} -c${w.connections} -d${w.seconds}s, bearer token) without and during an attack of ${STORM.attackers} clients`);
  console.log(`sending Basic logins with wrong passwords back to back (made-up names, ${STORM.addresses} source addresses, half /token, half a registry route).`);
  console.log(`${STORM.rounds} rounds, quiet and attacked alternating; medians, and the p99 of each round.`);
  const each = (phase: string) => Array.from({ length: STORM.rounds }, (_, i) => ms(m[`logins.${phase}.p99.${i + 1}`])).join(", ");
  const rows: Array<[string, string, string]> = [
    ["p99 latency", ms(m["logins.quiet.p99"]), ms(m["logins.attack.p99"])],
    ["p50 latency", ms(m["logins.quiet.p50"]), ms(m["logins.attack.p50"])],
    ["requests/s", Math.round(m["logins.quiet.rps"] ?? NaN).toLocaleString("en-US"), Math.round(m["logins.attack.rps"] ?? NaN).toLocaleString("en-US")],
    ["Stowage CPU during wrk", `${(m["logins.quiet.cpu"] ?? NaN).toFixed(2)} s`, `${(m["logins.attack.cpu"] ?? NaN).toFixed(2)} s`],
  ];
  console.log(`  ${"".padEnd(24)} | ${"no attack".padStart(12)} | ${"under attack".padStart(12)}`);
  for (const [label, a, b] of rows) console.log(`  ${label.padEnd(24)} | ${a.padStart(12)} | ${b.padStart(12)}`);
  console.log(`  p99 of each round: no attack ${each("quiet")}; under attack ${each("attack")}`);
  console.log(`  p99 under attack / without: ${ratio.toFixed(2)}× (goal: within 2×: ${ratio <= 2 ? "met" : "NOT met"})`);
  const statuses = Object.entries(r.attack.byStatus).map(([s, n]) => `${n} × ${s}`).join(", ");
  console.log(`  attack: ${r.attack.sent} failed logins sent (${Math.round(m["logins.attack.loginsPerSecond"] ?? 0)}/s while wrk ran): ${statuses}`);
  console.log(`  manifest GETs failed during the attack: ${m["logins.attack.errors"]}; a correct login right after: ${m["logins.after.status"]}`);
}

async function loadAverage(): Promise<string> {
  return (await readFile("/proc/loadavg", "utf8")).split(" ")[0] ?? "?";
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (!wrkInstalled()) throw new Error("wrk is needed (apt-get install wrk)");
  const before = await loadAverage();
  loginStorm().then(
    async (r) => {
      printLoginStorm(r);
      console.log(`  machine load average (1 min) before/after: ${before}/${await loadAverage()}`);
      process.exit(0);
    },
    (err: unknown) => {
      console.error(err instanceof Error ? (err.stack ?? err.message) : err);
      process.exit(1);
    },
  );
}
