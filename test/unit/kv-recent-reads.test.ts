// Hot records (a tag's digest, a manifest's record, a blob's link) are answered from memory for a
// second: this process must still read its own writes at once, and another instance's at most a
// second late.
import t from "tap";
import { z } from "zod";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, type KvKey, TypedKv } from "../../src/kv/kv.ts";
import { RecentReads } from "../../src/kv/recent-reads.ts";

const Rec = z.object({ digest: z.string() });
const Other = z.object({ digest: z.string(), extra: z.number().optional() });
const KEY = kvKeys.tag("hub", "library/alpine", "3.20");

/** A Kv in memory that counts reads; `hold()` makes the next reads wait until released. */
function countingKv() {
  const data = new Map<string, unknown>();
  const id = (k: KvKey) => k.join("\u0000");
  let version = 0;
  let gate: Promise<void> | null = null;
  const stats = { gets: 0 };
  const raw: Kv = {
    async get<T>(key: KvKey) {
      stats.gets++;
      const value = data.has(id(key)) ? (data.get(id(key)) as T) : null; // read as the read starts
      if (gate) await gate;
      return { value, versionstamp: value === null ? null : String(version) };
    },
    async set(key: KvKey, value: unknown) {
      data.set(id(key), value);
      return { ok: true as const, versionstamp: String(++version) };
    },
    async delete(key: KvKey) {
      data.delete(id(key));
    },
    async *list() {},
    atomic() {
      const ops: Array<() => void> = [];
      const a = {
        check: () => a,
        set: (key: KvKey, value: unknown) => (ops.push(() => data.set(id(key), value)), a),
        delete: (key: KvKey) => (ops.push(() => data.delete(id(key))), a),
        commit: async () => {
          for (const op of ops) op();
          return { ok: true, versionstamp: String(++version) };
        },
      };
      return a;
    },
    close() {},
  };
  return {
    raw,
    stats,
    hold(): () => void {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => {
        gate = null;
        release();
      };
    },
  };
}

function setup(opts: { limit?: number } = {}) {
  const clock = { now: 1_000_000 };
  const backing = countingKv();
  const kv = new TypedKv(backing.raw, { recent: new RecentReads({ ms: 1_000, limit: opts.limit, now: () => clock.now }) });
  /** Another instance sharing the KV: its writes bypass this process's memory. */
  const other = new TypedKv(backing.raw);
  return { clock, backing, kv, other };
}

t.test("a record read again within the second is answered from memory; after it, KV is asked again", async (tt) => {
  const { clock, backing, kv, other } = setup();
  await other.write(KEY, { digest: "sha256:a" });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:a" });
  await other.write(KEY, { digest: "sha256:b" });
  clock.now += 999;
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:a" }, "another instance's change is not seen within the second");
  tt.equal(backing.stats.gets, 1, "one KV read for two pulls");
  clock.now += 1;
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:b" }, "and is seen once it has passed");
  tt.equal(backing.stats.gets, 2);
  tt.same(await kv.read(KEY, Rec), { digest: "sha256:b" }, "a plain read always asks KV");
  tt.equal(backing.stats.gets, 3);
});

t.test("this process's own writes and removals are seen at once", async (tt) => {
  const { kv } = setup();
  await kv.write(KEY, { digest: "sha256:a" });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:a" });
  await kv.write(KEY, { digest: "sha256:b" });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:b" }, "after write");
  await kv.remove(KEY);
  tt.equal(await kv.readRecent(KEY, Rec), null, "after remove");
  const stamp = await kv.writeIfUnchanged(KEY, null, { digest: "sha256:c" });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:c" }, "after compare-and-set");
  tt.ok(await kv.removeIfUnchanged(KEY, stamp!));
  tt.equal(await kv.readRecent(KEY, Rec), null, "after compare-and-delete");
});

t.test("an absent or unreadable record is never remembered", async (tt) => {
  const { backing, kv, other } = setup();
  tt.equal(await kv.readRecent(KEY, Rec), null);
  await other.write(KEY, { digest: "sha256:a" });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:a" }, "a record another instance just wrote is seen at once");
  const bad = kvKeys.tag("hub", "library/alpine", "old");
  await other.write(bad, { digest: 42 });
  tt.equal(await kv.readRecent(bad, Rec), null);
  tt.equal(await kv.readRecent(bad, Rec), null);
  tt.equal(backing.stats.gets, 4, "each read of a missing or damaged record goes to KV");
});

t.test("reads that arrive while the record is being read share that one read", async (tt) => {
  const { backing, kv, other } = setup();
  await other.write(KEY, { digest: "sha256:a" });
  const release = backing.hold();
  const reads = Array.from({ length: 20 }, () => kv.readRecent(KEY, Rec));
  release();
  for (const value of await Promise.all(reads)) tt.same(value, { digest: "sha256:a" });
  tt.equal(backing.stats.gets, 1);
});

t.test("a read under way when this process writes is not remembered, nor joined", async (tt) => {
  const { backing, kv } = setup();
  await kv.write(KEY, { digest: "sha256:old" });
  let release = backing.hold();
  const early = kv.readRecent(KEY, Rec); // reads the old record, then waits
  await kv.write(KEY, { digest: "sha256:new" });
  release();
  tt.same(await early, { digest: "sha256:old" }, "the early read answers what it read");
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:new" }, "but its value was not kept");

  release = backing.hold();
  const before = kv.readRecent(KEY, Rec);
  await kv.write(KEY, { digest: "sha256:newer" });
  const after = kv.readRecent(KEY, Rec); // must not join the read that started before the write
  release();
  tt.same(await before, { digest: "sha256:new" });
  tt.same(await after, { digest: "sha256:newer" });
});

t.test("a key read under another schema is read again", async (tt) => {
  const { backing, kv } = setup();
  await kv.write(KEY, { digest: "sha256:a", extra: 1 });
  tt.same(await kv.readRecent(KEY, Rec), { digest: "sha256:a" });
  tt.same(await kv.readRecent(KEY, Other), { digest: "sha256:a", extra: 1 }, "not the first schema's parse");
  tt.equal(backing.stats.gets, 2);
});

t.test("memory is bounded: past the limit the oldest records are read again", async (tt) => {
  const { backing, kv } = setup({ limit: 2 });
  const keys = ["a", "b", "c"].map((tag) => kvKeys.tag("hub", "library/alpine", tag));
  for (const key of keys) await kv.write(key, { digest: "sha256:x" });
  for (const key of keys) await kv.readRecent(key, Rec);
  tt.equal(backing.stats.gets, 3);
  await kv.readRecent(keys[2]!, Rec);
  await kv.readRecent(keys[1]!, Rec);
  tt.equal(backing.stats.gets, 3, "the two newest are remembered");
  await kv.readRecent(keys[0]!, Rec);
  tt.equal(backing.stats.gets, 4, "the oldest was let go");
});
