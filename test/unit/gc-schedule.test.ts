// When the server runs the collector: a sweep at start-up, then every --gc-interval when a
// limit is set, never two runs at once, failures logged and survived, and a pass that makes
// room when a download found the disk short.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Collector, type CollectOptions, type CollectReport } from "../../src/gc/collector.ts";
import { GcLease } from "../../src/gc/gc-lease.ts";
import { CollectorSchedule, type CollectorScheduleDeps } from "../../src/gc/periodic.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { sha256 } from "../support/oci.ts";
import { sleep, waitFor } from "../support/wait.ts";

const MiB = 1024 * 1024;

function report(options: CollectOptions, over: Partial<CollectReport> = {}): CollectReport {
  return { ran: true, dryRun: options.dryRun, removed: [], bytesFreed: 0, storeBytesBefore: 0, storeBytesAfter: 0, startedAt: Date.now(), durationMs: 1, ...over };
}

/** A collector that records its runs, each taking `ms`, and answers with `answer`. */
function fakeCollector(opts: { ms?: number; answer?: (o: CollectOptions, n: number) => Partial<CollectReport> | Error } = {}) {
  const runs: CollectOptions[] = [];
  let active = 0;
  let most = 0;
  return {
    runs,
    get mostAtOnce() {
      return most;
    },
    async run(options: CollectOptions): Promise<CollectReport> {
      runs.push(options);
      active++;
      most = Math.max(most, active);
      try {
        await sleep(opts.ms ?? 1);
        const a = opts.answer?.(options, runs.length) ?? {};
        if (a instanceof Error) throw a;
        return report(options, a);
      } finally {
        active--;
      }
    },
  };
}

function schedule(t: Test, collector: CollectorScheduleDeps["collector"], over: Partial<CollectorScheduleDeps> = {}) {
  const logs: string[] = [];
  const s = new CollectorSchedule({
    collector,
    log: createLogger("debug", (line) => logs.push(line)),
    cacheTtlMs: null,
    maxBytes: null,
    intervalMs: 50,
    firstDelayMs: 50,
    reserveBytes: 100 * MiB,
    freeSpace: async () => null,
    ...over,
  });
  t.teardown(() => s.close());
  return { s, logs };
}

t.test("no limit set: one sweep at start-up, no periodic runs", async (t) => {
  const c = fakeCollector();
  const { s } = schedule(t, c);
  s.start();
  await sleep(300);
  t.same(c.runs, [{ cacheTtlMs: null, maxBytes: null, dryRun: false, by: "start-up" }], "only the start-up sweep, without limits");
});

t.test("with --cache-ttl and --max-size: a run every interval with them, never two at once", async (t) => {
  // Each run takes longer than the interval: the next tick must wait for it, not start a second one.
  const c = fakeCollector({ ms: 120 });
  const { s, logs } = schedule(t, c, { cacheTtlMs: 3_600_000, maxBytes: 10 * MiB });
  s.start();
  await waitFor("three periodic runs", () => c.runs.filter((r) => r.by === "schedule").length >= 3, 5_000);
  t.equal(c.runs[0]?.by, "start-up", "the start-up sweep first");
  t.same(c.runs[0], { cacheTtlMs: null, maxBytes: null, dryRun: false, by: "start-up" });
  t.same(c.runs.find((r) => r.by === "schedule"), { cacheTtlMs: 3_600_000, maxBytes: 10 * MiB, dryRun: false, by: "schedule" }, "the limits are applied");
  t.equal(c.mostAtOnce, 1, "never two runs at once");
  t.ok(logs.some((l) => l.includes("collector run finished") && l.includes('"by":"schedule"')), "each run is logged");
  await s.close();
  const after = c.runs.length;
  await sleep(200);
  t.equal(c.runs.length, after, "no run after close");
});

t.test("no limit set, the lease held (a collector killed in the middle): the start-up sweep is tried again until it runs", async (t) => {
  const c = fakeCollector({ answer: (_o, n) => (n <= 2 ? { ran: false } : {}) });
  const { s } = schedule(t, c, { sweepRetryMs: 50 });
  s.start();
  await waitFor("a sweep that ran", () => c.runs.length >= 3, 5_000);
  await sleep(300);
  t.equal(c.runs.length, 3, "tried until it ran, then no more");
  t.ok(c.runs.every((r) => r.by === "start-up" && r.cacheTtlMs === null && r.maxBytes === null), "each time the sweep without limits");
});

t.test("a failing run is logged and the next one still comes", async (t) => {
  const c = fakeCollector({ answer: (_o, n) => (n === 2 ? new Error("KV unreachable") : {}) });
  const { s, logs } = schedule(t, c, { maxBytes: MiB });
  s.start();
  await waitFor("runs after the failure", () => c.runs.length >= 4, 5_000);
  t.ok(logs.some((l) => l.includes("the collector failed") && l.includes("KV unreachable")), "the failure is logged");
});

t.test("another instance holds the lease: nothing done, said in the log, runs go on", async (t) => {
  const c = fakeCollector({ answer: () => ({ ran: false }) });
  const { s, logs } = schedule(t, c, { cacheTtlMs: 1000 });
  s.start();
  await waitFor("two periodic runs", () => c.runs.length >= 3, 5_000);
  t.ok(logs.some((l) => l.includes("another instance holds its lease")), "logged");
});

t.test("a full disk: a size pass down to what frees the needed bytes plus the reserve", async (t) => {
  const store = 800 * MiB;
  const c = fakeCollector({ ms: 50, answer: (o) => (o.dryRun ? { storeBytesBefore: store, storeBytesAfter: store } : { storeBytesBefore: store }) });
  // 120 MiB free, 100 MiB reserve, a 300 MiB blob: 280 MiB must go.
  const { s, logs } = schedule(t, c, { freeSpace: async () => 120 * MiB, maxBytes: 2000 * MiB, cacheTtlMs: 5000, firstDelayMs: 60_000 });
  s.diskShort(300 * MiB);
  s.diskShort(300 * MiB);
  await waitFor("the pass", () => c.runs.some((r) => !r.dryRun), 5_000);
  await s.close();
  t.same(c.runs, [
    { cacheTtlMs: null, maxBytes: null, dryRun: true, by: "disk-full" },
    { cacheTtlMs: 5000, maxBytes: store - 280 * MiB, dryRun: false, by: "disk-full" },
  ], "a dry run for the store's size, then one pass; the second call while it ran is ignored");
  t.ok(logs.some((l) => l.includes("the disk is short of room") && l.includes('"needed":"300 MiB"')), "logged with the figures");

  const small = fakeCollector({ answer: (o) => ({ storeBytesBefore: o.dryRun ? 50 * MiB : 0 }) });
  const tight = schedule(t, small, { freeSpace: async () => 0, maxBytes: 10 * MiB });
  tight.s.diskShort(500 * MiB);
  await waitFor("the pass", () => small.runs.length === 2, 5_000);
  t.equal(small.runs[1]?.maxBytes, 0, "never below zero");
});

t.test("the periodic run with the real collector honours the lease another instance holds", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "stowage-gc-schedule-"));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const store = await FsBlobStore.open(root);
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const logs: string[] = [];
  const log = createLogger("debug", (line) => logs.push(line));
  // An object no record names: the first run that is allowed to removes it.
  const bytes = randomBytes(4096);
  const digest = sha256(bytes) as Digest;
  const upload = await store.begin(digest);
  await upload.write(bytes);
  await upload.commit();
  const other = new GcLease(kv, "other-instance", Date.now, log);
  t.ok(await other.acquire(), "another instance holds the collector lease");

  const collector = new Collector({ kv, store, metrics: createStowageMetrics(), log, owner: "this-instance", graceMs: 0 });
  const runs: CollectReport[] = [];
  const s = new CollectorSchedule({
    collector: { run: async (o) => (runs.push(await collector.run(o)), runs.at(-1)!) },
    log,
    cacheTtlMs: 60_000,
    maxBytes: null,
    intervalMs: 50,
    firstDelayMs: 50,
    reserveBytes: 0,
    freeSpace: async () => null,
  });
  t.teardown(() => s.close());
  s.start();
  await waitFor("the start-up sweep and two periodic runs", () => runs.length >= 3, 5_000);
  t.ok(runs.every((r) => !r.ran), "none ran while the lease was held");
  t.not(await store.stat(digest), null, "the orphan is still there");
  await other.release();
  await waitFor("a run that ran", () => runs.some((r) => r.ran), 5_000);
  const ran = runs.find((r) => r.ran)!;
  t.same(ran.removed.map((r) => [r.kind, r.name, r.reason]), [["blob", digest, "orphan"]], "once released, the next periodic run collects");
  t.equal(await store.stat(digest), null, "the orphan is gone");
});
