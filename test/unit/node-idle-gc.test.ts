// The Node server collects garbage once it has been quiet a while, so what a burst of pulls left
// on V8's heap is not kept resident while the process sits idle.
import t from "tap";
import { IdleCollector } from "../../src/runtime/node-idle-gc.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test("one collection per quiet spell, never while a request is open", async (t) => {
  let runs = 0;
  const idle = new IdleCollector(40, () => runs++);
  t.teardown(() => idle.stop());

  idle.begin();
  idle.begin();
  idle.end();
  await sleep(100);
  t.equal(runs, 0, "one request still open: no collection");

  idle.end();
  await sleep(20);
  idle.begin(); // a request within the quiet time postpones it
  await sleep(60);
  t.equal(runs, 0, "a new request cancelled the pending collection");
  idle.end();
  await sleep(100);
  t.equal(runs, 1, "collected once the server had been quiet for the whole time");
  await sleep(100);
  t.equal(runs, 1, "and only once while it stays quiet");

  idle.begin();
  idle.end();
  await sleep(100);
  t.equal(runs, 2, "the next burst is followed by the next collection");
});

t.test("the real collection shrinks the heap after a burst of garbage", async (t) => {
  const idle = new IdleCollector(10);
  t.teardown(() => idle.stop());
  let junk: unknown[] | null = [];
  for (let i = 0; i < 300_000; i++) junk.push({ i, s: `x${i}` });
  junk = null;
  const before = process.memoryUsage().heapUsed;
  idle.begin();
  idle.end();
  await sleep(60);
  t.equal(idle.collections, 1, "V8's gc() was reachable without --expose-gc on the command line");
  t.ok(process.memoryUsage().heapUsed < before - 10 * 1024 * 1024, `heap used ${(before / 2 ** 20).toFixed(0)} -> ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(0)} MiB`);
});

t.test("a stopped worker thread brings the collection forward, unless a request is open", async (t) => {
  let runs = 0;
  const idle = new IdleCollector(10_000, () => runs++, 30);
  t.teardown(() => idle.stop());

  idle.begin();
  idle.threadStopped();
  await sleep(80);
  t.equal(runs, 0, "a request is open: nothing yet");
  idle.end();
  await sleep(80);
  t.equal(runs, 0, "its end waits the whole quiet time, as always");

  idle.threadStopped();
  await sleep(80);
  t.equal(runs, 1, "with no request open, the collection comes soon after the thread stopped");
  await sleep(80);
  t.equal(runs, 1, "once");
});
