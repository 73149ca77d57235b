// Reuse of a download's 1 MiB batches (src/cache/batch-pool.ts): a batch is filled again only
// once every holder let go (the store write, the memory window, each follower's chunk until
// the socket took it); one held for good is never reused. A reused batch overwritten while a
// client still sends it would corrupt that client's blob, so the downloads below keep chunks
// unrecycled on purpose and check their bytes afterwards.
import t, { type Test as Tap } from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { batchPool, BatchPool, holdBatch } from "../../src/cache/batch-pool.ts";
import { BlobFetch } from "../../src/cache/blob-fetch.ts";
import { followSource } from "../../src/cache/blob-follow.ts";
import { Batcher, ByteWindow } from "../../src/cache/blob-plumbing.ts";
import { FetchLeases } from "../../src/cache/fetch-lease.ts";
import { InlineHasherFactory } from "../../src/digest/hasher.ts";
import { WorkerHasherFactory } from "../../src/digest/worker-pool.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { sendDirect } from "../../src/runtime/node-send.ts";
import { readingAhead, takeDirect } from "../../src/storage/direct-body.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import type { UpstreamClient } from "../../src/upstream/client.ts";
import { sha256 } from "../support/oci.ts";
import { sleep, waitFor, within } from "../support/wait.ts";

const MiB = 1024 * 1024;

t.test("a batch goes back to the pool only once every holder let go", async (t) => {
  const pool = new BatchPool(16, 4, 60_000);
  const first = pool.take();
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

t.test("a batch held for good is never reused; spares are bounded and dropped when idle", async (t) => {
  const pool = new BatchPool(16, 2, 30);
  const pinned = pool.take();
  pinned.bytes.fill(7);
  const taken = Array.from({ length: 5 }, () => pool.take());
  for (const hold of taken) hold.release();
  t.equal(pool.spares, 2, "at most `max` spares are kept");
  for (let i = 0; i < 5; i++) t.not(pool.take().bytes.buffer, pinned.bytes.buffer, "the pinned batch is never handed out");
  t.ok(pinned.bytes.every((b) => b === 7), "and its bytes are untouched");
  pool.take().release();
  t.equal(pool.spares, 1);
  await waitFor("the spares dropped", () => pool.spares === 0, 2_000);
  t.pass("an idle pool drops its spares");
});

t.test("the batcher lets go of a batch once its receiver holds it", async (t) => {
  const pool = new BatchPool(4, 8, 60_000);
  const window = new ByteWindow(0);
  let at = 0;
  const batcher = new Batcher((batch) => {
    window.append(at, batch);
    at += batch.byteLength;
  }, pool);
  batcher.push(new Uint8Array([1, 2, 3, 4, 5, 6]));
  t.equal(pool.spares, 0, "the window holds the full batch");
  const chunk = window.slice(0, 4)!;
  const follower = holdBatch(chunk)!;
  window.trim(at);
  t.equal(pool.spares, 0, "trimmed from the window, but a follower's chunk still holds it");
  follower.release();
  t.equal(pool.spares, 1, "reused once the follower let go");
  await batcher.end();
  window.clear();
  t.equal(pool.spares, 2, "the last, short batch too");
});

t.test("a follower's chunks hold their batch until recycled; a cancelled follower's never come back", async (t) => {
  const pool = new BatchPool(4, 8, 60_000);
  const window = new ByteWindow(0);
  const held = pool.take();
  held.bytes.set([1, 2, 3, 4]);
  window.append(0, held.bytes);
  held.release();
  const fetch = {
    error: null,
    received: 4,
    written: 4,
    spooled: 4,
    complete: true,
    releasable: () => 4,
    inMemory: (p: number, l: number) => window.slice(p, l),
    nextChange: () => new Promise<void>(() => {}),
    restFrom: () => Promise.reject(new Error("not here")),
  };
  const sent = readingAhead(followSource(fetch, null, 0, 2));
  const cancelled = readingAhead(followSource(fetch, null, 2, 4));
  const chunk = (await sent.read())!;
  await cancelled.read(); // its chunk is never recycled
  cancelled.cancel();
  window.clear();
  t.equal(pool.spares, 0, "both followers' chunks hold the batch");
  t.ok(sent.recycle, "reading ahead passes recycle through");
  sent.recycle!(chunk);
  sent.recycle!(chunk); // twice by mistake: ignored
  t.equal(pool.spares, 0, "the cancelled follower's chunk pins it for good");
  t.same([...chunk], [1, 2], "so its bytes stay as they were");
});

// ------------------------------------------------------------- whole downloads

/** A fetch of `bytes` on a filesystem store, the upstream body arriving in 256 KiB pieces. */
async function download(t: Tap, bytes: Uint8Array, hashers: "inline" | "worker") {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const root = await mkdtemp(join(tmpdir(), "stowage-batch-pool-"));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const factory = hashers === "worker" ? await WorkerHasherFactory.start(1, nodeRuntime.spawnWorker!) : new InlineHasherFactory();
  t.teardown(() => factory.close());
  let gate: Promise<void> = Promise.resolve();
  let openGate!: () => void;
  const client = {
    upstream: { name: "up" },
    blob: async () => {
      let at = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          await gate;
          // Paced, so followers and the store run alongside the download.
          await new Promise((r) => setImmediate(r));
          if (at >= bytes.byteLength) return controller.close();
          controller.enqueue(bytes.slice(at, at + 256 * 1024));
          at += 256 * 1024;
        },
      });
      return { response: new Response(body, { headers: { "content-length": String(bytes.byteLength) } }), abort: () => {} };
    },
  } as unknown as UpstreamClient;
  /** Holds the upstream body back until the returned function is called. */
  const hold = () => {
    gate = new Promise((r) => (openGate = r));
    return () => openGate();
  };
  const deps = {
    store: await FsBlobStore.open(root),
    metrics: createStowageMetrics(),
    kv,
    hashers: factory,
    upstreamTimeoutMs: 10_000,
    leases: new FetchLeases(kv, "test"),
  };
  const start = () => new BlobFetch(sha256(bytes) as Digest, { client, repo: "app" }, deps, createLogger("error", () => {}));
  return { start, hold };
}

/** An HTTP server sending each request's follower as Node does (sendDirect: chunks recycled once written). */
async function nodeServer(t: Tap, body: () => ReadableStream<Uint8Array>): Promise<() => Promise<Buffer>> {
  const server = createServer((_req, res) => {
    const direct = takeDirect(body());
    if (!direct) throw new Error("the follower is not a direct body");
    void sendDirect(res, new Response(null, { status: 200 }), direct);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const { port } = server.address() as AddressInfo;
  return () =>
    new Promise((resolve, reject) => {
      request({ host: "127.0.0.1", port }, (res) => {
        const parts: Buffer[] = [];
        res.on("data", (c: Buffer) => parts.push(c));
        res.on("end", () => resolve(Buffer.concat(parts)));
        res.on("error", reject);
      }).on("error", reject).end();
    });
}

for (const hashers of ["inline", "worker"] as const) {
  t.test(`a cold download sent by Node reuses its batches (${hashers} hasher)`, async (t) => {
    const bytes = randomBytes(48 * MiB);
    const { start } = await download(t, bytes, hashers);
    const before = batchPool.allocated;
    const fetch = start();
    await fetch.ready;
    const get = await nodeServer(t, () => fetch.follow(0, null));
    const got = await within(30_000, "the client's body", get());
    await fetch.settled;
    t.equal(fetch.state, "committed");
    t.ok(got.equals(bytes), "the client got the blob");
    const fresh = batchPool.allocated - before;
    t.ok(fresh <= 24, `fresh batches stay bounded for 48 MiB (${fresh} allocated)`);
  });
}

t.test("followers that keep their chunks, and one behind the window, get the right bytes while batches are reused", async (t) => {
  const bytes = randomBytes(40 * MiB);
  const { start, hold } = await download(t, bytes, "worker");
  const go = hold();
  const fetch = start();
  await fetch.ready;
  // A web stream reader (as Deno sends it): never recycles, and keeps every chunk as it was given.
  const kept: Uint8Array[] = [];
  const streamed = (async () => {
    for await (const chunk of fetch.follow(0, null)) kept.push(chunk);
  })();
  // A Node follower that recycles each chunk a while after it was read, checking the bytes are still its own then.
  const slowly = async (from: number) => {
    const { source } = takeDirect(fetch.follow(from, null))!;
    let at = from;
    let wrong = 0;
    for (let chunk = await source.read(); chunk; chunk = await source.read()) {
      const want = bytes.subarray(at, at + chunk.byteLength);
      at += chunk.byteLength;
      const mine = chunk;
      setTimeout(() => {
        if (!Buffer.from(mine.buffer, mine.byteOffset, mine.byteLength).equals(want)) wrong++;
        source.recycle?.(mine);
      }, 5);
    }
    await sleep(20);
    return { at, wrong };
  };
  const live = slowly(0);
  go();
  // One joining once the first bytes left the memory window: it reads the spool into pooled batches.
  await waitFor("12 MiB written", () => fetch.written >= 12 * MiB);
  const behind = slowly(0);
  const [a, b] = await within(60_000, "both followers", Promise.all([live, behind]));
  await streamed;
  await fetch.settled;
  t.same(a, { at: bytes.length, wrong: 0 }, "the live follower's chunks were its own until recycled");
  t.same(b, { at: bytes.length, wrong: 0 }, "so were those of the follower reading the spool");
  t.ok(Buffer.concat(kept).equals(bytes), "the chunks a web stream kept never changed");
  t.equal(fetch.state, "committed");
});
