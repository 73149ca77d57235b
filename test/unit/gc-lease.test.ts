// The collector lease: short, renewed while a collection runs, so a crashed collector holds up
// the next one only for seconds; and a holder that cannot renew, or stalls past its lease,
// stops removing before another instance can take over, so two collectors never remove at once.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FetchLeases } from "../../src/cache/fetch-lease.ts";
import { LeaseRecord } from "../../src/cache/records.ts";
import { Collector } from "../../src/gc/collector.ts";
import { GC_LEASE_TTL_MS, GcLease } from "../../src/gc/gc-lease.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, type KvKey, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { BlobStore } from "../../src/storage/blob-store.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { sha256 } from "../support/oci.ts";
import { sleep, waitFor } from "../support/wait.ts";

// Long enough that renewals keep up on a loaded machine.
const TTL = 1000;

/** A KV that fails the lease writes of owner `downFor`: that holder cannot renew. */
class LeaseKvDown extends TypedKv {
  downFor: string | null = null;
  override writeIfUnchanged(key: KvKey, expected: string | null, value: unknown, expireInMs?: number): Promise<string | null> {
    if (this.downFor !== null && (value as { owner?: string }).owner === this.downFor) return Promise.reject(new Error("KV unreachable"));
    return super.writeIfUnchanged(key, expected, value, expireInMs);
  }
}

async function memoryKv(t: Test): Promise<{ raw: Kv; kv: LeaseKvDown }> {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  return { raw, kv: new LeaseKvDown(raw) };
}

function logger() {
  const lines: string[] = [];
  return { lines, log: createLogger("debug", (line) => lines.push(line)) };
}

/** Blocks the event loop (no timers, no I/O callbacks), as a stalled process would be. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    /* busy */
  }
}

t.test("the lease is short and renewed while held", async (t) => {
  t.ok(GC_LEASE_TTL_MS <= 15_000, `a killed collector holds up the next one at most ${GC_LEASE_TTL_MS} ms`);
  const { kv } = await memoryKv(t);
  const { log } = logger();
  const a = new GcLease(kv, "instance-a", Date.now, log, TTL);
  t.ok(await a.acquire(), "taken");
  const first = (await kv.read(kvKeys.gcLease(), LeaseRecord))!;
  // Held for several TTLs: only renewals keep it.
  for (let i = 0; i < 4; i++) {
    await sleep(TTL / 2);
    t.notOk(await new GcLease(kv, "instance-b", Date.now, log, TTL).acquire(), `another instance cannot take it ${(i + 1) * (TTL / 2)} ms on`);
  }
  const later = (await kv.read(kvKeys.gcLease(), LeaseRecord))!;
  t.ok(later.expiresAt > first.expiresAt + TTL, "the holder pushed its expiry forward");
  t.ok(a.held, "still held after 2 TTLs");
  await a.release();
  t.notOk(a.held, "not held once released");
  const b = new GcLease(kv, "instance-b", Date.now, log, TTL);
  t.ok(await b.acquire(), "released: another instance takes it at once");
  await b.release();
});

t.test("a holder that cannot renew stops counting itself holder before anyone else may take over", async (t) => {
  const { kv } = await memoryKv(t);
  const { lines, log } = logger();
  const a = new GcLease(kv, "instance-a", Date.now, log, TTL);
  t.ok(await a.acquire());
  const taken = performance.now();
  const record = (await kv.read(kvKeys.gcLease(), LeaseRecord))!;
  kv.downFor = "instance-a";
  await waitFor("the holder to give up", () => !a.held, TTL * 2, 5);
  const gaveUp = performance.now() - taken;
  const expiresIn = record.expiresAt - Date.now();
  t.ok(gaveUp < TTL, `it gave up ${Math.round(gaveUp)} ms after taking it, within the ${TTL} ms lease`);
  t.ok(expiresIn > 0, `while its record still had ${expiresIn} ms to run`);
  const b = new GcLease(kv, "instance-b", Date.now, log, TTL);
  const early = await b.acquire();
  // (On a loaded machine the attempt may come after the expiry: then taking it is right.)
  t.ok(!early || Date.now() >= record.expiresAt, "nobody else may take it before the record expires");
  if (!early) await waitFor("the other instance to take it", () => b.acquire(), TTL * 3, 20);
  t.ok(record.expiresAt <= Date.now(), "the other instance took it once the record had expired");
  kv.downFor = null;
  await sleep(TTL);
  t.notOk(a.held, "a lost lease stays lost, even with the KV back");
  t.ok(lines.some((l) => l.includes("lost the collector lease")), "the loss is logged");
  await a.release();
  t.equal((await kv.read(kvKeys.gcLease(), LeaseRecord))?.owner, "instance-b", "releasing a lost lease leaves the new holder's record alone");
  await b.release();
});

t.test("a holder whose process stalled past its lease finds it lost as soon as it runs again", async (t) => {
  const { kv } = await memoryKv(t);
  const { log } = logger();
  const a = new GcLease(kv, "instance-a", Date.now, log, TTL);
  t.ok(await a.acquire());
  stall(TTL);
  t.notOk(a.held, "after a stall as long as the lease, before any timer ran, it is not held");
  t.throws(() => a.check(), /collector lease was lost/, "and check() stops the caller");
  await sleep(TTL);
  t.notOk(a.held, "the collection it was running stays stopped");
  await a.release();
  t.equal(await kv.read(kvKeys.gcLease(), LeaseRecord), null, "released: the record is gone");
});

t.test("a fetch lease whose holder stalled is held again after a renewal that finds it untouched", async (t) => {
  const { kv } = await memoryKv(t);
  const { lines, log } = logger();
  const leases = new FetchLeases(kv, "instance-a", TTL);
  const digest = sha256(Buffer.from("a blob")) as Digest;
  const lease = (await leases.tryAcquire(digest, log))!;
  t.ok(lease, "taken");
  stall(TTL);
  t.notOk(lease.held, "not held right after the stall");
  t.ok(lines.some((l) => l.includes("lost the fetch lease")), "the operator is told another instance may download it too");
  // Nobody took it meanwhile, so the renewal's compare-and-set succeeds: the download stays protected.
  await waitFor("a late renewal", () => lease.held, TTL, 5);
  t.ok((await kv.read(kvKeys.lease(digest), LeaseRecord))!.expiresAt > Date.now() + TTL / 2, "its record runs on");
  t.equal(await new FetchLeases(kv, "instance-b", TTL).tryAcquire(digest, log), null, "another instance cannot take it");
  await lease.release();
});

/** An fs store holding `count` objects no record names, whose deletes take `ms` and are timed. */
async function storeWithOrphans(t: Test, count: number, ms: number) {
  const root = await mkdtemp(join(tmpdir(), "stowage-gc-lease-"));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const store = await FsBlobStore.open(root);
  for (let i = 0; i < count; i++) {
    const bytes = randomBytes(64);
    const upload = await store.begin(sha256(bytes) as Digest);
    await upload.write(bytes);
    await upload.commit();
  }
  const deletes: { by: string; start: number; end: number }[] = [];
  /** The store as seen by one collector: each delete slowed down, timed, and `onDelete` called first. */
  const as = (by: string, onDelete: (n: number) => void = () => {}): BlobStore =>
    new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === "delete") {
          return async (digest: Digest) => {
            const entry = { by, start: performance.now(), end: Infinity };
            onDelete(deletes.filter((d) => d.by === by).length);
            deletes.push(entry);
            await sleep(ms);
            await target.delete(digest);
            entry.end = performance.now();
          };
        }
        const value = Reflect.get(target, prop, receiver);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  return { store, deletes, as };
}

async function objectCount(store: BlobStore): Promise<number> {
  let n = 0;
  for await (const _ of store.list()) n++;
  return n;
}

t.test("a collector that cannot renew stops removing; the next one starts only after, and finishes the job", async (t) => {
  const { kv } = await memoryKv(t);
  const { lines, log } = logger();
  const { store, deletes, as } = await storeWithOrphans(t, 300, 100);
  const collector = (owner: string, s: BlobStore) =>
    new Collector({ kv, store: s, metrics: createStowageMetrics(), log, owner, graceMs: 0, leaseTtlMs: TTL });
  // The KV stops taking the lease's renewals once collector A has begun removing.
  const a = await collector("instance-a", as("instance-a", () => void (kv.downFor = "instance-a"))).run({ cacheTtlMs: null, maxBytes: null, dryRun: false, by: "test" });
  const byA = deletes.filter((d) => d.by === "instance-a");
  t.ok(a.ran, "A ran");
  t.ok(byA.length > 0 && byA.length < 300, `A removed ${byA.length} of 300 objects and then stopped`);
  t.equal(a.removed.length, byA.length, "its report lists what it did remove");
  t.ok(lines.some((l) => l.includes("lost the collector lease")), "it logged why it stopped");
  const lastStartA = Math.max(...byA.map((d) => d.start));
  t.ok(lastStartA - byA[0]!.start < TTL, `A's last removal began ${Math.round(lastStartA - byA[0]!.start)} ms after its first, within its lease`);

  let b = await collector("instance-b", as("instance-b")).run({ cacheTtlMs: null, maxBytes: null, dryRun: false, by: "test" });
  const deadline = Date.now() + TTL * 4;
  while (!b.ran && Date.now() < deadline) {
    await sleep(20);
    b = await collector("instance-b", as("instance-b")).run({ cacheTtlMs: null, maxBytes: null, dryRun: false, by: "test" });
  }
  t.ok(b.ran, "B ran once A's lease expired");
  const byB = deletes.filter((d) => d.by === "instance-b");
  const lastEndA = Math.max(...byA.map((d) => d.end));
  const firstStartB = Math.min(...byB.map((d) => d.start));
  t.ok(lastEndA < firstStartB, `A's removals had all ended ${Math.round(firstStartB - lastEndA)} ms before B's first began: never two at once`);
  t.equal(byA.length + byB.length, 300, "between them every orphan went, each once");
  t.equal(await objectCount(store), 0);
});

t.test("a collector stalled past its lease removes nothing more when it wakes, and the next one can run at once", async (t) => {
  const { kv } = await memoryKv(t);
  const { log } = logger();
  const { store, deletes, as } = await storeWithOrphans(t, 120, 5);
  let stalledAt = 0;
  // The fifth removal stalls the whole process for longer than the lease: its timers cannot renew.
  const stalling = as("instance-a", (n) => {
    if (n !== 4) return;
    stalledAt = performance.now();
    stall(TTL * 1.5);
  });
  const a = await new Collector({ kv, store: stalling, metrics: createStowageMetrics(), log, owner: "instance-a", graceMs: 0, leaseTtlMs: TTL }).run({
    cacheTtlMs: null,
    maxBytes: null,
    dryRun: false,
    by: "test",
  });
  const afterStall = deletes.filter((d) => d.start > stalledAt);
  t.ok(stalledAt > 0, "the collector stalled mid-way");
  t.same(afterStall.length, 0, "after the stall it began no removal");
  t.ok(a.removed.length < 120, `it had removed ${a.removed.length} of 120`);
  const b = await new Collector({ kv, store: as("instance-b"), metrics: createStowageMetrics(), log, owner: "instance-b", graceMs: 0, leaseTtlMs: TTL }).run({
    cacheTtlMs: null,
    maxBytes: null,
    dryRun: false,
    by: "test",
  });
  t.ok(b.ran, "another collector runs as soon as A is done");
  t.equal(await objectCount(store), 0, "and removes the rest");
});
