// Reuse of the 1 MiB batches Node's upstream client reads blob bodies into (src/util/batch-pool.ts):
// a batch is filled again only once every holder let go (the store write, the memory window,
// each follower's chunk until the socket took it); one held for good is never reused. A batch
// overwritten while a client still sends it would corrupt that client's blob, so the downloads
// below run readers of every pace at once and compare every byte.
import t from "tap";
import { randomBytes } from "node:crypto";
import { get as httpGet } from "node:http";
import { batchPool, BatchPool, holdBatch, holdUntil } from "../../src/util/batch-pool.ts";
import { isBatch } from "../../src/util/buffers.ts";
import { FakeRegistry } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { attempt } from "../support/oci.ts";
import { committed } from "../support/store-state.ts";
import { sleep } from "../support/wait.ts";

const MiB = 1024 * 1024;

t.test("a batch goes back to the pool only once every holder let go", async (t) => {
  const pool = new BatchPool(16, 4, 60_000);
  const first = pool.take();
  t.ok(isBatch(first.bytes), "marked as a batch, so a batcher passes its ranges on as they are");
  first.bytes.fill(1);
  const view = first.bytes.subarray(4, 8);
  const second = holdBatch(view);
  t.ok(second, "a view of a pooled batch can be held");
  first.release();
  const other = pool.take();
  t.not(other.bytes.buffer, first.bytes.buffer, "still held by the second holder: a fresh batch is taken instead");
  second!.release();
  t.equal(pool.spares, 1, "the last holder let go: the batch is spare");
  const again = pool.take();
  t.equal(again.bytes.buffer, first.bytes.buffer, "and taken again");
  t.same([pool.allocated, pool.reused], [2, 1]);
  t.throws(() => second!.release(), /released twice/, "a hold cannot be released twice");
  again.release();
  t.throws(() => holdBatch(view), /after it went back to the pool/, "a view of a spare batch cannot be held: someone kept it without a hold");
  t.equal(holdBatch(new Uint8Array(8)), null, "bytes of their own have no batch to hold");
});

t.test("holdUntil keeps a batch until the work settles, failed work too; spares are bounded and dropped when idle", async (t) => {
  const pool = new BatchPool(16, 2, 30);
  const taken = pool.take();
  let finish!: () => void;
  const work = holdUntil(taken.bytes.subarray(0, 4), new Promise<void>((resolve) => (finish = resolve)));
  taken.release();
  t.equal(pool.spares, 0, "held by the work in progress");
  finish();
  await work;
  await sleep(0);
  t.equal(pool.spares, 1, "back once it settled");
  const failing = pool.take();
  const failed = holdUntil(failing.bytes, Promise.reject(new Error("disk full")));
  failing.release();
  await t.rejects(failed, /disk full/, "the work's own outcome is passed on");
  await sleep(0);
  t.equal(pool.spares, 1, "a failed write lets go too (the spare taken again and given back)");
  const many = Array.from({ length: 5 }, () => pool.take());
  for (const h of many) h.release();
  t.equal(pool.spares, 2, "no more spares than the pool's bound");
  await sleep(100);
  t.equal(pool.spares, 0, "spares are dropped once no batch was taken for a while");
});

/** Reads `url` at the pace of a slow client: a pause after every `every` bytes. */
function slowRead(url: string, every: number, pauseMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    httpGet(url, (res) => {
      const parts: Buffer[] = [];
      let since = 0;
      res.on("data", (d: Buffer) => {
        parts.push(d);
        since += d.length;
        if (since >= every) {
          since = 0;
          res.pause();
          setTimeout(() => res.resume(), pauseMs);
        }
      });
      res.on("end", () => resolve(Buffer.concat(parts)));
      res.on("error", reject);
    }).on("error", reject);
  });
}

t.test("a cold download reuses its batches while clients of every pace read it, and every byte is right", async (t) => {
  const up = await new FakeRegistry({ token: "t0ken" }).start(t);
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`]);
  const bytes = randomBytes(40 * MiB);
  const digest = up.addBlob(bytes);
  up.slow(digest, 512 * 1024, 10); // ~0.8 s: followers join a download in progress
  const url = `${stowage.url}/v2/app/blobs/${digest}`;
  const before = { reused: batchPool.reused, allocated: batchPool.allocated };
  const fast = [attempt(url), attempt(url)];
  const slow = slowRead(url, 2 * MiB, 60); // far behind the memory window, read from the spool
  const trickle = slowRead(url, 256 * 1024, 5);
  await up.waitForProgress(digest, bytes.length / 2);
  const late = attempt(url);
  const ranged = attempt(url, { headers: { range: `bytes=${20 * MiB}-${30 * MiB - 1}` } });
  for (const [i, o] of (await Promise.all(fast)).entries()) t.ok(o.status === 200 && o.body.equals(bytes), `fast client ${i}: every byte, right`);
  t.ok((await slow).equals(bytes), "slow client: every byte, right");
  t.ok((await trickle).equals(bytes), "trickling client: every byte, right");
  const l = await late;
  t.ok(l.status === 200 && l.body.equals(bytes), "late client: every byte, right");
  const r = await ranged;
  t.ok(r.status === 206 && r.body.equals(bytes.subarray(20 * MiB, 30 * MiB)), "a range of the download in progress: right");
  t.equal(up.blobGets(digest), 1, "one upstream GET for all of them");
  await committed(stowage, digest);
  const stored = await attempt(url);
  t.ok(stored.body.equals(bytes), "the stored copy is right");
  const reused = batchPool.reused - before.reused;
  const allocated = batchPool.allocated - before.allocated;
  t.ok(reused > 0, `batches were reused (${reused} reused, ${allocated} allocated for 40 MiB)`);
  t.ok(allocated < 40, "fewer batches allocated than MiB downloaded");
});
