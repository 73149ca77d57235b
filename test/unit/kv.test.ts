// The KV wrapper: a KV file shared by several processes (instances on one machine,
// as the README suggests) must not fail requests with "database is locked".
import t from "tap";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isBusy, retryWhileBusy } from "../../src/kv/busy-retry.ts";
import type { Kv, KvAtomic } from "../../src/kv/kv.ts";
import { type KvOpener, KvOpenError, openKvAt } from "../../src/kv/open.ts";
import { denoBinary, PROJECT_ROOT } from "../harness/processes.ts";

t.test("which errors mean another process holds the lock", async (tt) => {
  const cases: Array<[unknown, boolean]> = [
    [new TypeError("database is locked"), true], // Deno.openKv
    [new Error("database is locked\n\nCaused by:\n    Error code 5: database is locked"), true], // @deno/kv
    [new Error("SQLITE_BUSY: database is locked"), true],
    [new Error("Value too large (max 65536 bytes)"), false],
    [new Error("unable to open database file"), false],
    ["database is locked", true],
  ];
  for (const [err, busy] of cases) tt.equal(isBusy(err), busy, String(err).split("\n")[0] ?? "");
});

/** A Kv whose operations fail as busy `busyTimes` times, then work; counts calls. */
function flakyKv(busyTimes: number, other?: Error) {
  let left = busyTimes;
  const calls = { get: 0, commit: 0, listsClosed: 0 };
  const committed: string[][] = [];
  const fail = () => {
    if (other) throw other;
    if (left-- > 0) throw new Error("database is locked");
  };
  const kv: Kv = {
    async get<T>() {
      calls.get++;
      fail();
      return { value: 1 as T, versionstamp: "v1" };
    },
    async set() {
      fail();
      return { ok: true, versionstamp: "v2" };
    },
    async delete() {
      fail();
    },
    list: () => ({
      async *[Symbol.asyncIterator]() {
        fail();
        try {
          yield { key: ["a"], value: 1 as never, versionstamp: "v1" };
          yield { key: ["b"], value: 2 as never, versionstamp: "v1" };
        } finally {
          calls.listsClosed++;
        }
      },
    }),
    atomic() {
      const ops: string[] = [];
      const atomic: KvAtomic = {
        check: (...c) => (ops.push(`check ${c.map((x) => x.key.join("/")).join(",")}`), atomic),
        set: (k) => (ops.push(`set ${k.join("/")}`), atomic),
        delete: (k) => (ops.push(`delete ${k.join("/")}`), atomic),
        async commit() {
          calls.commit++;
          fail();
          committed.push(ops);
          return { ok: true, versionstamp: "v3" };
        },
      };
      return atomic;
    },
    close() {},
  };
  return { kv, calls, committed };
}

t.test("a busy operation is tried again until it goes through", async (tt) => {
  const { kv, calls } = flakyKv(3);
  tt.same(await retryWhileBusy(kv).get(["x"]), { value: 1, versionstamp: "v1" });
  tt.equal(calls.get, 4, "three busy answers, then the real one");
});

t.test("a busy atomic commit is replayed whole on a fresh atomic", async (tt) => {
  const { kv, calls, committed } = flakyKv(2);
  const result = await retryWhileBusy(kv).atomic().check({ key: ["lease"], versionstamp: null }).set(["lease"], 1).delete(["old"]).commit();
  tt.same(result, { ok: true, versionstamp: "v3" });
  tt.equal(calls.commit, 3);
  tt.same(committed, [["check lease", "set lease", "delete old"]], "the same operations, applied once");
});

t.test("a busy list is restarted; its entries come once each", async (tt) => {
  const { kv } = flakyKv(2);
  const keys: string[] = [];
  for await (const entry of retryWhileBusy(kv).list({ prefix: [] })) keys.push(entry.key.join("/"));
  tt.same(keys, ["a", "b"]);
});

t.test("a list left early closes the KV's own iterator", async (tt) => {
  const { kv, calls } = flakyKv(0);
  for await (const entry of retryWhileBusy(kv).list({ prefix: [] })) {
    tt.same(entry.key, ["a"]);
    break;
  }
  tt.equal(calls.listsClosed, 1);
});

t.test("other errors are not retried, and a lock held too long still surfaces", async (tt) => {
  const quota = new Error("Value too large (max 65536 bytes)");
  const other = flakyKv(0, quota);
  await tt.rejects(retryWhileBusy(other.kv).get(["x"]), quota);
  tt.equal(other.calls.get, 1, "tried once");
  const stuck = flakyKv(Infinity);
  const started = Date.now();
  await tt.rejects(retryWhileBusy(stuck.kv, 200).get(["x"]), /database is locked/);
  tt.ok(Date.now() - started < 1_000, "gives up after its budget");
});

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: PROJECT_ROOT, timeout: 120_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
  });
}

const INCREMENTS = 250;

for (const runtime of ["node", "deno"] as const) {
  t.test(`two ${runtime} processes writing one KV file lose no write and fail none`, async (tt) => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-kv-"));
    tt.teardown(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, "kv.sqlite3");
    const contender = join(PROJECT_ROOT, "test/support/kv-contender.ts");
    const contend = async (count: number) => {
      const out = runtime === "node"
        ? await run(process.execPath, ["--import", "tsx", contender, path, String(count)])
        : await run(await denoBinary(), ["run", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", "--allow-net", contender, path, String(count)]);
      return JSON.parse(out.trim().split("\n").pop()!) as { errors: number; first: string | null; counter: number };
    };
    const results = await Promise.all([contend(INCREMENTS), contend(INCREMENTS)]);
    for (const r of results) tt.same({ errors: r.errors, first: r.first }, { errors: 0, first: null }, "no operation failed");
    // Read back by the same runtime: Deno and @deno/kv serialize values differently.
    tt.equal((await contend(0)).counter, 2 * INCREMENTS, "every increment of both processes is there");
  });
}

t.test("opening the KV: the operator is told what went wrong and what to do", async (tt) => {
  const failing = (err: Error): KvOpener => ({ hasPlatformKv: false, openKv: () => Promise.reject(err) });
  const file = { kind: "file", path: "/data/kv.sqlite3" } as const;
  await tt.rejects(openKvAt(failing(new Error("unable to open database file\n\nCaused by: ...")), file), {
    constructor: KvOpenError,
    message: "cannot open the KV store (file /data/kv.sqlite3): unable to open database file; check that the directory exists and is writable, or choose another path with --kv",
  }, "a file that cannot be opened: its path and the hint about the directory");
  // @deno/kv wraps a native addon that would not load (bin/build.mjs's loader) in a generic error.
  const addon = new Error("the KV's native addon @deno/kv-linux-x64-gnu cannot be loaded (Cannot find module); elsewhere give --kv a KV Connect URL, or run Stowage on Deno");
  await tt.rejects(openKvAt(failing(new Error("No default napi interface, provide one via the 'napi' option.", { cause: addon })), file), {
    message: `cannot open the KV store (file /data/kv.sqlite3): ${addon.message}`,
  }, "a missing native addon: its own message, without the misleading hint about the directory");
  await tt.rejects(openKvAt(failing(new Error("x")), { kind: "platform" }), { message: /no platform KV on Node/ }, "no platform KV on Node");
});

t.test("opening a KV file another process holds locked: tried again until the lock is gone", async (tt) => {
  let attempts = 0;
  const store = { close() {} } as unknown as Kv;
  const lockedTwice: KvOpener = {
    hasPlatformKv: false,
    openKv: () => (++attempts <= 2 ? Promise.reject(new Error("database is locked")) : Promise.resolve(store)),
  };
  const kv = await openKvAt(lockedTwice, { kind: "file", path: "/data/kv.sqlite3" });
  tt.ok(kv, "opened");
  tt.equal(attempts, 3, "after two busy attempts");
  let other = 0;
  const broken: KvOpener = { hasPlatformKv: false, openKv: () => (other++, Promise.reject(new Error("unable to open database file"))) };
  await tt.rejects(openKvAt(broken, { kind: "file", path: "/data/kv.sqlite3" }), { constructor: KvOpenError, message: /unable to open database file/ }, "any other failure is reported at once");
  tt.equal(other, 1, "tried once");
});
