// src/util/buffers.ts and src/util/deadline.ts: the shared fill loop, buffer pool and time limits.
import t from "tap";
import { BufferFiller, BufferPool } from "../../src/util/buffers.ts";
import { rejectAfter, waitAtMost, withAbortDeadline, within } from "../../src/util/deadline.ts";

const bytes = (n: number, from = 0) => Uint8Array.from({ length: n }, (_, i) => (from + i) % 251);

t.test("BufferFiller: chunks of any size come out as full buffers in order, then the short rest", async (t) => {
  const out: Uint8Array[] = [];
  const filler = new BufferFiller(10, () => new Uint8Array(10), (full) => void out.push(full));
  await filler.push(bytes(3));
  await filler.push(bytes(15, 3));
  await filler.push(bytes(4, 18));
  t.equal(filler.filled, 2, "two bytes wait in the current buffer");
  const rest = filler.takePartial();
  t.same(out.map((b) => [...b]), [[...bytes(10)], [...bytes(10, 10)]], "two full buffers, bytes in order");
  t.same([...rest!], [...bytes(2, 20)], "the rest");
  t.equal(filler.takePartial(), null, "nothing more");
});

t.test("BufferFiller: a full buffer handed on is never written again, and an async `full` paces the pushes", async (t) => {
  const handed: Uint8Array[] = [];
  let release!: () => void;
  const filler = new BufferFiller(4, () => new Uint8Array(4), (full) => {
    handed.push(full);
    return new Promise<void>((resolve) => (release = resolve));
  });
  let done = false;
  const paced = filler.push(bytes(6));
  t.ok(paced instanceof Promise, "a push that fills a buffer whose `full` paces returns a promise");
  const pushing = Promise.resolve(paced).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  t.notOk(done, "the push waits for `full`");
  release();
  await pushing;
  const second = filler.push(bytes(4, 100)); // fills a new buffer, not the one handed on
  await new Promise((r) => setImmediate(r));
  release();
  await second;
  t.same([...handed[0]!], [...bytes(4)], "the first buffer kept its bytes");
  t.not(handed[1], handed[0], "each full buffer is a different one");
});

t.test("BufferFiller: a push that fills nothing returns no promise (none per chunk)", async (t) => {
  const filler = new BufferFiller(8, () => new Uint8Array(8), () => Promise.resolve());
  t.equal(filler.push(bytes(3)), undefined, "nothing to wait for");
  t.equal(filler.push(bytes(3, 3)), undefined, "still nothing");
  t.ok(filler.push(bytes(3, 6)) instanceof Promise, "the push that fills the buffer waits for `full`");
});

t.test("BufferFiller: takePartial(true) copies out the rest and keeps the buffer for later bytes", async (t) => {
  const filler = new BufferFiller(8, () => new Uint8Array(8), () => {});
  await filler.push(bytes(3));
  const copy = filler.takePartial(true)!;
  t.equal(copy.buffer.byteLength, 3, "an exactly sized copy (what is transferred to a worker)");
  await filler.push(bytes(2, 50));
  t.same([...copy], [...bytes(3)], "the copy is unaffected by later bytes");
});

t.test("BufferPool: hands back buffers of its size, at most `max` of them", async (t) => {
  const pool = new BufferPool(16, 1);
  const a = pool.take();
  const b = pool.take();
  t.equal(a.byteLength, 16, "buffers of the pool's size");
  pool.give(a.buffer);
  pool.give(b.buffer); // over the limit: dropped
  pool.give(new ArrayBuffer(8)); // another size: dropped
  t.equal(pool.take().buffer, a.buffer, "a returned buffer is reused");
  t.not(pool.take().buffer, b.buffer, "only one was kept");
  pool.give(a.buffer);
  pool.clear();
  t.not(pool.take().buffer, a.buffer, "after clear() no spare is held: a fresh buffer");
});

t.test("deadlines: each helper clears its timer and reports a timeout its own way", async (t) => {
  let expired = false;
  t.equal(await within(1000, () => (expired = true), async () => 7), 7, "within: the work's result");
  t.notOk(expired, "no expiry for work done in time");

  const slow = (signal: AbortSignal) =>
    new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted"))));
  await t.rejects(withAbortDeadline(20, slow, (cause) => new Error("S3 did not answer", { cause })), { message: "S3 did not answer" }, "withAbortDeadline: the timeout error");
  await t.rejects(withAbortDeadline(1000, async () => { throw new Error("refused"); }, () => new Error("timeout")), { message: "refused" }, "other failures pass through");

  await t.rejects(rejectAfter(new Promise(() => {}), 20, () => new Error("no answer")), { message: "no answer" }, "rejectAfter: rejects when the promise hangs");
  t.equal(await rejectAfter(Promise.resolve(3), 1000, () => new Error("x")), 3, "and resolves with it otherwise");

  const started = Date.now();
  await waitAtMost(new Promise(() => {}), 30);
  t.ok(Date.now() - started >= 25, "waitAtMost: gives up after the time");
  await waitAtMost(Promise.reject(new Error("ignored")), 1000);
  t.pass("waitAtMost never rejects");
});
