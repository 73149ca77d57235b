// sha256 in worker threads must give exactly what node:crypto gives, for any
// chunking, with many updates in flight at once (the blob fetch pipelines its
// batches), and the inline fallback must agree.
import t, { type Test } from "tap";
import { createHash } from "node:crypto";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InlineHasherFactory, type HasherFactory } from "../../src/digest/hasher.ts";
import { WorkerHasherFactory } from "../../src/digest/worker-pool.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";

function pattern(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

const cases: Array<{ name: string; size: number; chunk: number }> = [
  { name: "empty blob", size: 0, chunk: 1 },
  { name: "one byte", size: 1, chunk: 1 },
  { name: "odd chunks across batch edges", size: 3 * 1024 * 1024 + 17, chunk: 65_537 },
  { name: "exactly one batch", size: 1024 * 1024, chunk: 1024 * 1024 },
  { name: "chunks larger than a batch", size: 5 * 1024 * 1024 + 3, chunk: 2 * 1024 * 1024 + 1 },
];

async function check(tt: Test, factory: HasherFactory, concurrent: boolean): Promise<void> {
  for (const [i, c] of cases.entries()) {
    const data = pattern(c.size, i + 7);
    const expected = createHash("sha256").update(data).digest("hex");
    const hasher = factory.create("sha256");
    const pending: Array<Promise<void>> = [];
    for (let o = 0; o < c.size; o += c.chunk) {
      const p = hasher.update(data.subarray(o, o + c.chunk));
      if (concurrent) pending.push(p);
      else await p;
    }
    await Promise.all(pending);
    tt.equal(await hasher.finish(), expected, `${factory.mode}${concurrent ? " (all updates in flight)" : ""}: ${c.name}`);
  }
}

t.test("worker threads and inline hashing agree with node:crypto", async (tt) => {
  const spawn = nodeRuntime.spawnWorker;
  if (!spawn) throw new Error("the Node runtime must offer worker threads");
  const workers = await WorkerHasherFactory.start(2, spawn);
  tt.teardown(() => workers.close());
  tt.equal(workers.mode, "worker");
  await check(tt, workers, false);
  await check(tt, new InlineHasherFactory(), false);
});

t.test("many updates waiting on the worker backlog at once all complete (no lost wake-ups)", async (tt) => {
  const workers = await WorkerHasherFactory.start(1, nodeRuntime.spawnWorker!);
  tt.teardown(() => workers.close());
  // 40 MiB posted without waiting: far above the 8 MiB backlog, so many updates wait together.
  const data = pattern(40 * 1024 * 1024, 99);
  const hasher = workers.create("sha256");
  const pending: Array<Promise<void>> = [];
  for (let o = 0; o < data.byteLength; o += 1024 * 1024) pending.push(hasher.update(data.subarray(o, o + 1024 * 1024)));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const settled = await Promise.race([
    Promise.all(pending).then(() => "done"),
    new Promise((resolve) => (timer = setTimeout(() => resolve("stuck"), 20_000))),
  ]);
  clearTimeout(timer);
  tt.equal(settled, "done", "every update resolved");
  tt.equal(await hasher.finish(), createHash("sha256").update(data).digest("hex"));
  await check(tt, workers, true);
});

t.test("several blobs hashed at the same time do not mix", async (tt) => {
  const workers = await WorkerHasherFactory.start(2, nodeRuntime.spawnWorker!);
  tt.teardown(() => workers.close());
  const blobs = [0, 1, 2, 3, 4].map((i) => pattern(2 * 1024 * 1024 + i * 1000, 50 + i));
  const digests = await Promise.all(
    blobs.map(async (blob) => {
      const h = workers.create("sha256");
      for (let o = 0; o < blob.byteLength; o += 100_000) await h.update(blob.subarray(o, o + 100_000));
      return h.finish();
    }),
  );
  digests.forEach((d, i) => tt.equal(d, createHash("sha256").update(blobs[i]!).digest("hex"), `blob ${i}`));
});


t.test("a worker hasher with a file reads the bytes from it as they are written, then takes the rest as updates", async (tt) => {
  const factory = await WorkerHasherFactory.start(1, nodeRuntime.spawnWorker!);
  tt.teardown(() => factory.close());
  const dir = await mkdtemp(join(tmpdir(), "stowage-digest-"));
  tt.teardown(() => rm(dir, { recursive: true, force: true }));
  const data = pattern(3 * 1024 * 1024 + 11, 99);
  const spooled = 2 * 1024 * 1024 + 5; // the file holds this much; the rest never reaches it
  const path = join(dir, "spool");
  const file = await open(path, "w");
  const hasher = factory.create("sha256", path);
  for (let at = 0; at < spooled; at += 300_000) {
    const end = Math.min(spooled, at + 300_000);
    await file.write(data.subarray(at, end), 0, end - at, at);
    hasher.fileWritten!(end);
  }
  await file.close();
  await hasher.update(data.subarray(spooled));
  tt.equal(await hasher.finish(), createHash("sha256").update(data).digest("hex"), "the digest of every byte, in order");

  const short = factory.create("sha256", path);
  short.fileWritten!(spooled + 10);
  await tt.rejects(short.finish(), /could not hash the blob: .* ends at/, "a file shorter than said fails the job, it is not hashed short");

  const missing = factory.create("sha256", join(dir, "gone"));
  missing.fileWritten!(1);
  await tt.rejects(missing.finish(), /could not hash the blob/, "a file that cannot be opened fails the job");
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sha = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

t.test("threads run only while there is something to hash: stopped when idle, started again for the next blob", async (tt) => {
  let spawned = 0;
  const spawn: typeof nodeRuntime.spawnWorker = (name) => (spawned++, nodeRuntime.spawnWorker!(name));
  const factory = await WorkerHasherFactory.start(2, spawn!, { idleStopMs: 300 });
  tt.teardown(() => factory.close());
  tt.equal(spawned, 1, "the self-test starts one thread, not every one the pool may run");
  await sleep(800);
  tt.equal(factory.running, 0, "no thread is left running once idle");

  // Two blobs at once: both threads run; each blob's digest is right.
  const blobs = [pattern(3 * 1024 * 1024, 5), pattern(2 * 1024 * 1024 + 9, 6)];
  const hashers = blobs.map(() => factory.create("sha256"));
  tt.equal(factory.running, 2, "two blobs at once run on two threads");
  await Promise.all(hashers.map((h, i) => h.update(blobs[i]!)));
  const digests = await Promise.all(hashers.map((h) => h.finish()));
  digests.forEach((d, i) => tt.equal(d, sha(blobs[i]!), `blob ${i} hashed right after a restart`));

  // A long job keeps its thread however long it takes; a discarded one lets it go.
  const slow = factory.create("sha256");
  await slow.update(blobs[0]!.subarray(0, 1000));
  await sleep(800);
  tt.ok(factory.running >= 1, "a thread with a job in progress is not stopped");
  await slow.update(blobs[0]!.subarray(1000));
  tt.equal(await slow.finish(), sha(blobs[0]!), "and the job completes with the right digest");
  factory.create("sha256").discard();
  await sleep(800);
  tt.equal(factory.running, 0, "stopped again after the last job ended, a discarded one included");
  tt.equal(spawned, 3, "threads were started only when blobs came");
});

t.test("a thread that dies fails its jobs only: the next blob gets a new thread", async (tt) => {
  const ports: Array<ReturnType<NonNullable<typeof nodeRuntime.spawnWorker>>> = [];
  const spawn: typeof nodeRuntime.spawnWorker = (name) => {
    const port = nodeRuntime.spawnWorker!(name);
    ports.push(port);
    return port;
  };
  const factory = await WorkerHasherFactory.start(1, spawn!);
  tt.teardown(() => factory.close());
  const doomed = factory.create("sha256");
  await doomed.update(pattern(1000, 1));
  await ports.at(-1)!.terminate(); // as if the thread crashed
  await tt.rejects(doomed.finish(), /digest worker failed/, "the job on the dead thread fails (so its blob is not committed)");
  const data = pattern(1024 * 1024 + 3, 2);
  const next = factory.create("sha256");
  await next.update(data);
  tt.equal(await next.finish(), sha(data), "the next blob hashes right on a new thread");
  tt.equal(ports.length, 2, "one new thread was started");
});

t.test("where worker threads cannot run, the pool says why and hashes inline", async (tt) => {
  const broken: typeof nodeRuntime.spawnWorker = () => {
    let fail: ((err: Error) => void) | null = null;
    setTimeout(() => fail?.(new Error("cannot load the worker module")), 10);
    return { post: () => {}, onMessage: () => {}, onFailure: (fn) => void (fail = fn), terminate: async () => {} };
  };
  await tt.rejects(WorkerHasherFactory.start(1, broken!), /cannot load the worker module/, "start() throws with the cause");
  let reason: Error | null = null;
  const factory = WorkerHasherFactory.open(2, broken!, (err) => (reason = err));
  tt.teardown(() => factory.close());
  tt.equal(factory.mode, "worker", "open() answers at once, before the self-test ends");
  for (let i = 0; i < 100 && !reason; i++) await sleep(20);
  tt.match(String(reason), /cannot load the worker module/, "the reason is reported");
  tt.equal(factory.mode, "inline", "then it hashes inline");
  tt.equal(factory.readsFiles, false, "and no longer asks for files to read");
  const data = pattern(70_000, 3);
  const h = factory.create("sha256");
  await h.update(data);
  tt.equal(await h.finish(), sha(data), "with the right digest");
});
