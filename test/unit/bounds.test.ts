// Bounds against hostile or careless upstreams: a blob with no Content-Length
// or a huge one cannot fill the disk, a disk running short serves blobs
// uncached instead of failing, and the upstream-token cache stays bounded
// however many repository names are asked for.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobCache } from "../../src/cache/blob-cache.ts";
import { FetchLeases } from "../../src/cache/fetch-lease.ts";
import { BlobRecord } from "../../src/cache/records.ts";
import { InlineHasherFactory } from "../../src/digest/hasher.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { StatFs } from "../../src/storage/disk-space.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { UpstreamTokenCache } from "../../src/upstream/token-cache.ts";
import { FakeRegistry, inPieces } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { attempt, expectOciError, sha256 } from "../support/oci.ts";
import { blobPath, exists, metric, noUploadsLeft } from "../support/store-state.ts";
import { sleep, waitFor } from "../support/wait.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { blobOnlyClient } from "../support/blob-client.ts";

const MiB = 1024 * 1024;

// ----------------------------------------------------------- --max-blob-size

t.test("--max-blob-size", async (t) => {
  const up = await new FakeRegistry().start(t);
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--max-blob-size", "1MiB"]);
  const blobs = join(stowage.dataDir, "blobs");

  await t.test("a body without Content-Length is cut off past the cap, and nothing is kept", async (t) => {
    const bytes = randomBytes(3 * MiB);
    const digest = up.addBlob(bytes);
    up.on(digest, inPieces({ length: false }));
    const url = `${stowage.url}/v2/app/blobs/${digest}`;

    const first = await attempt(url);
    const whole = first.status === 200 && first.error === null && first.body.equals(bytes);
    t.notOk(whole, "the client does not get a complete response");
    t.ok(first.status >= 400 || first.error !== null, `the client's response fails (status ${first.status}, ${first.body.length} bytes, ${String(first.error)})`);
    t.ok(first.body.length <= 1 * MiB, `the client got no more than the cap (${first.body.length} bytes)`);
    await waitFor("the failure counted", async () => (await metric(stowage, "stowage_blob_fetch_failures_total", 'reason="too-large"')) >= 1);
    const failure = stowage.logs.find((l) => l.includes("blob fetch failed") && l.includes(digest)) ?? "";
    t.match(failure, /--max-blob-size of 1 MiB/, "the log says which limit cut it off");
    t.match(failure, /without announcing a length/, "and why");
    t.notOk(await exists(blobPath(blobs, digest)), "nothing is in the store");
    await noUploadsLeft(t, blobs);

    const second = await attempt(url);
    t.ok(second.status >= 400 || second.error !== null, "the next request fails the same way");
    t.equal(up.blobGets(digest), 2, "the next request fetched it again (no failure was cached as a blob)");
    t.notOk(await exists(blobPath(blobs, digest)), "still nothing in the store");
  });

  await t.test("a declared length above the cap is refused before any download", async (t) => {
    const digest = sha256(randomBytes(32));
    let sent = 0;
    let closed = false;
    // Announces 40 GiB and would trickle bytes until the connection closes.
    up.on(digest, async (req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(40 * 1024 ** 3) });
      if (req.method === "HEAD") return void res.end();
      res.on("close", () => (closed = true));
      const piece = Buffer.alloc(64 * 1024);
      while (!res.destroyed && sent < 64 * MiB) {
        res.write(piece);
        sent += piece.length;
        await sleep(5);
      }
    });
    const url = `${stowage.url}/v2/app/blobs/${digest}`;
    const { error } = await expectOciError(t, await attempt(url), 403, "DENIED");
    t.match(error?.message ?? "", /is 40 GiB, more than this Stowage's --max-blob-size of 1 MiB; it was not downloaded/, "the message says why");
    await waitFor("the upstream connection closed", () => closed, 5_000);
    t.ok(sent < 4 * MiB, `Stowage closed the connection at once (the upstream wrote ${sent} bytes into the socket)`);
    t.notOk(await exists(blobPath(blobs, digest)), "nothing is in the store");
    await noUploadsLeft(t, blobs);

    const head = await fetch(url, { method: "HEAD" });
    t.equal(head.status, 403, "HEAD answers the same 403");
  });

  await t.test("blobs within the cap are cached as before", async (t) => {
    const bytes = randomBytes(MiB);
    const digest = up.addBlob(bytes);
    up.on(digest, inPieces({ length: false }));
    const got = await attempt(`${stowage.url}/v2/app/blobs/${digest}`);
    t.ok(got.status === 200 && got.error === null && got.body.equals(bytes), "exactly 1 MiB without Content-Length: served whole");
    await waitFor("stored", () => exists(blobPath(blobs, digest)));
    t.pass("and stored");
  });
});

// -------------------------------------------------------------- disk reserve

t.test("--disk-reserve above the free space: blobs are served uncached", async (t) => {
  const up = await new FakeRegistry().start(t);
  // No disk here has 1000 TiB free: the real statfs says there is no room.
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--disk-reserve", "1000TiB"]);
  const blobs = join(stowage.dataDir, "blobs");
  const bytes = randomBytes(6 * MiB);
  const digest = up.addBlob(bytes);
  up.on(digest, inPieces());
  const url = `${stowage.url}/v2/app/blobs/${digest}`;

  const got = await attempt(url);
  t.equal(got.status, 200, "200");
  t.ok(got.error === null && got.body.equals(bytes), "the whole, correct blob");
  t.notOk(await exists(blobPath(blobs, digest)), "nothing is in the store");
  await noUploadsLeft(t, blobs);
  const warning = stowage.logs.find((l) => l.includes('"warn"') && l.includes("not enough free disk space") && l.includes(digest)) ?? "";
  t.match(warning, /lower --disk-reserve/, "a warning says what to do");
  t.match(warning, /"reserve":"1000 TiB"/, "and names the reserve");
  t.equal(await metric(stowage, "stowage_store_bypass_total", 'op="write"'), 1, "counted as a blob served without the store");

  const again = await attempt(url);
  t.ok(again.status === 200 && again.body.equals(bytes), "asked again: served whole again");
  t.equal(up.blobGets(digest), 2, "from upstream (it was not cached)");
});

/** A BlobCache over an FsBlobStore whose statfs the test controls, and a minimal upstream client. */
async function cacheWithDisk(t: Test, upstreamUrl: string, statfs: StatFs, opts: { reserve: number; checkEvery?: number }) {
  const root = await mkdtemp(join(tmpdir(), "stowage-bounds-"));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const store = await FsBlobStore.open(root, { statfs });
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const metrics = createStowageMetrics();
  const logs: string[] = [];
  const log = createLogger("debug", (line) => logs.push(line));
  const blobs = new BlobCache({
    kv,
    store,
    hashers: new InlineHasherFactory(),
    metrics,
    upstreamTimeoutMs: 5_000,
    leases: new FetchLeases(kv, "test"),
    diskReserveBytes: opts.reserve,
    ...(opts.checkEvery ? { diskCheckBytes: opts.checkEvery } : {}),
  });
  const client = blobOnlyClient(upstreamUrl);
  const get = async (digest: Digest) => {
    const answer = await blobs.get({ client, repo: "app" }, digest, "GET", null, log);
    const parts: Buffer[] = [];
    for await (const part of answer.body ?? []) parts.push(Buffer.from(part));
    return Buffer.concat(parts);
  };
  return { root, kv, metrics, logs, get };
}

t.test("free disk space (statfs injected)", async (t) => {
  const up = await new FakeRegistry().start(t);
  const reserve = 100 * MiB;

  await t.test("below the reserve before the download: served whole, nothing committed", async (t) => {
    const bytes = randomBytes(5 * MiB);
    const digest = up.addBlob(bytes);
    up.on(digest, inPieces({ pauseMs: 2 }));
    let calls = 0;
    // 102 MiB free: 5 MiB more would leave less than the 100 MiB reserve.
    const statfs: StatFs = async () => (calls++, { bavail: (102 * MiB) / 4096, bsize: 4096 });
    const disk = await cacheWithDisk(t, up.url, statfs, { reserve });
    const served = disk.get(digest);
    // While it downloads, no spool file is being written.
    await sleep(20);
    t.same(await readdir(join(disk.root, "_uploads")), [], "nothing is spooled while it downloads");
    const body = await served;
    t.ok(body.equals(bytes), "the client gets the whole, correct blob");
    t.ok(calls >= 1, "free space was checked");
    t.notOk(await exists(blobPath(disk.root, digest)), "nothing is in the store");
    t.equal(await disk.kv.read(kvKeys.blob(digest), BlobRecord), null, "no KV record says it is cached");
    t.match(disk.logs.join("\n"), /"free":"102 MiB","needed":"5 MiB","reserve":"100 MiB"/, "the warning gives the figures");
  });

  await t.test("the disk runs short while spooling: the rest is served, the spool is dropped", async (t) => {
    const bytes = randomBytes(8 * MiB);
    const digest = up.addBlob(bytes);
    // Slow enough that the client follows from the spool and the window alike.
    up.on(digest, inPieces({ pauseMs: 5 }));
    let calls = 0;
    // Plenty at the start; then someone else fills the disk.
    const statfs: StatFs = async () => ({ bavail: (calls++ === 0 ? 10_000 * MiB : 50 * MiB) / 4096, bsize: 4096 });
    const disk = await cacheWithDisk(t, up.url, statfs, { reserve, checkEvery: MiB });
    const served = disk.get(digest);
    await waitFor("a spool file", async () => (await readdir(join(disk.root, "_uploads"))).length === 1, 5_000);
    t.pass("spooling started while there was room");
    const body = await served;
    t.ok(body.equals(bytes), "the client gets the whole, correct blob");
    t.ok(calls >= 2, `free space was checked again while spooling (${calls} checks)`);
    t.notOk(await exists(blobPath(disk.root, digest)), "nothing is committed");
    await noUploadsLeft(t, disk.root);
    t.match(disk.logs.join("\n"), /not enough free disk space to cache this blob/, "the warning is logged");
    t.equal(disk.metrics.storeBypass.get({ op: "write" }), 1, "counted as served without the store");
  });

  await t.test("parallel downloads count what the others still have to write", async (t) => {
    const a = randomBytes(6 * MiB);
    const b = randomBytes(6 * MiB);
    up.on(up.addBlob(a), inPieces({ pauseMs: 5 }));
    up.on(up.addBlob(b), inPieces({ pauseMs: 5 }));
    // 110 MiB free, reserve 100: either blob fits alone, not both.
    const statfs: StatFs = async () => ({ bavail: (110 * MiB) / 4096, bsize: 4096 });
    const disk = await cacheWithDisk(t, up.url, statfs, { reserve });
    const first = disk.get(sha256(a));
    await waitFor("the first one spooling", async () => (await readdir(join(disk.root, "_uploads"))).length === 1, 5_000);
    const [bodyA, bodyB] = await Promise.all([first, disk.get(sha256(b))]);
    t.ok(bodyA.equals(a) && bodyB.equals(b), "both clients get their whole blobs");
    await waitFor("the first one stored", () => exists(blobPath(disk.root, sha256(a))));
    t.pass("the first one is stored");
    t.notOk(await exists(blobPath(disk.root, sha256(b))), "the second, which did not fit beside it, is not");
  });

  await t.test("no statfs on this runtime: no check, blobs are cached", async (t) => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.on(digest, inPieces());
    const failing: StatFs = () => Promise.reject(Object.assign(new Error("statfs is not supported"), { code: "ENOSYS" }));
    const disk = await cacheWithDisk(t, up.url, failing, { reserve: 1024 ** 5 });
    t.ok((await disk.get(digest)).equals(bytes), "served");
    await waitFor("stored", () => exists(blobPath(disk.root, digest)));
    t.pass("and stored");
  });
});

// ------------------------------------------------------------- token cache

t.test("the upstream-token cache stays bounded with 5,000 scopes", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-tokens-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, "kv.sqlite3");
  const raw = (await openKv(path)) as unknown as Kv;
  t.teardown(() => raw.close());
  // Records every write's expiry, as the KV would apply it.
  const expiries: Array<number | undefined> = [];
  const recording: Kv = {
    get: (key) => raw.get(key),
    set: (key, value, options) => {
      expiries.push(options?.expireIn);
      return raw.set(key, value, options);
    },
    delete: (key) => raw.delete(key),
    list: (selector, options) => raw.list(selector, options),
    atomic: () => raw.atomic(),
    close: () => raw.close(),
  };
  const cache = new UpstreamTokenCache(new TypedKv(recording));
  // Docker Hub's tokens are ~4.5 KB JWTs, valid 300 s.
  const token = (i: number) => `eyJ${String(i).padStart(6, "0")}${"x".repeat(4500)}`;
  for (let i = 0; i < 5_000; i++) await cache.put("hub", `repository:made-up-${i}:pull`, token(i), 300);

  t.ok(cache.size <= 1_000, `at most 1,000 tokens in memory (${cache.size})`);
  let stored = 0;
  await waitFor("evicted tokens removed from KV", async () => {
    stored = 0;
    for await (const _ of raw.list({ prefix: ["upstream-token"] })) stored++;
    return stored <= 1_000;
  });
  t.ok(stored <= 1_000, `at most 1,000 tokens in KV (${stored})`);
  const { size } = await stat(path);
  t.ok(size < 12 * MiB, `the KV file stays small (${(size / MiB).toFixed(1)} MiB; unbounded it held 5,000 tokens, over 22 MiB)`);
  t.ok(expiries.length > 0 && expiries.every((e) => e === 300_000), "every KV write expires with its token");

  t.equal(await cache.get("hub", "repository:made-up-4999:pull"), token(4999), "a recent token is reused");
  t.equal(await cache.get("hub", "repository:made-up-0:pull"), null, "the oldest was dropped (a new one is fetched)");

  await t.test("large or short-lived tokens stay out of KV", async (t) => {
    const before = expiries.length;
    const big = `eyJ${"y".repeat(9 * 1024)}`;
    await cache.put("hub", "repository:big:pull", big, 300);
    t.equal(await cache.get("hub", "repository:big:pull"), big, "a 9 KiB token is used from memory");
    t.equal((await raw.get(["upstream-token", "hub", "repository:big:pull"])).value, null, "but not written to KV");
    await cache.put("hub", "repository:brief:pull", token(1), 30);
    t.equal(await cache.get("hub", "repository:brief:pull"), token(1), "a token valid 30 s is used from memory");
    t.equal((await raw.get(["upstream-token", "hub", "repository:brief:pull"])).value, null, "but not written to KV");
    const huge = `eyJ${"z".repeat(100 * 1024)}`;
    await cache.put("hub", "repository:huge:pull", huge, 300);
    t.equal(await cache.get("hub", "repository:huge:pull"), null, "a 100 KiB token is not kept at all");
    t.equal(expiries.length, before, "none of them caused a KV write");
  });

  await t.test("a hit keeps a token among the recent ones", async (t) => {
    const small = new UpstreamTokenCache(new TypedKv(recording), Date.now, { maxEntries: 3 });
    await small.put("hub", "a", "token-a", 300);
    await small.put("hub", "b", "token-b", 300);
    await small.put("hub", "c", "token-c", 300);
    t.equal(await small.get("hub", "a"), "token-a", "a is used");
    await small.put("hub", "d", "token-d", 300);
    t.equal(small.size, 3, "three in memory");
    t.equal(await small.get("hub", "a"), "token-a", "a, used recently, is kept");
    await waitFor("b removed from KV", async () => (await raw.get(["upstream-token", "hub", "b"])).value === null);
    t.equal(await small.get("hub", "b"), null, "b, the least recently used, is gone from memory and KV");
  });
});
