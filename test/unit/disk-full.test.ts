// A full disk: a blob that does not fit beside --disk-reserve is served uncached, and the
// download asks for room; the server's collector then removes the least recently pulled
// content, so the next pull of the same blob is cached. The disk is faked: its statfs
// reports a fixed capacity less what the store holds.
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
import { Collector } from "../../src/gc/collector.ts";
import { CollectorSchedule } from "../../src/gc/periodic.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { StatFs } from "../../src/storage/disk-space.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { FakeRegistry, inPieces } from "../support/fake-registry.ts";
import { sha256 } from "../support/oci.ts";
import { blobPath, exists } from "../support/store-state.ts";
import { waitFor } from "../support/wait.ts";
import { blobOnlyClient } from "../support/blob-client.ts";

const MiB = 1024 * 1024;

/** Bytes in every file under `dir` (committed blobs and upload spools alike). */
async function bytesUnder(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, e.name);
    n += e.isDirectory() ? await bytesUnder(path) : await stat(path).then((s) => s.size, () => 0);
  }
  return n;
}

/** A disk of `capacity` bytes that only the store writes to. */
const diskOf = (root: string, capacity: number): StatFs => async () => ({ bavail: Math.max(0, capacity - (await bytesUnder(root))), bsize: 1 });

async function cacheOnDisk(t: Test, upstreamUrl: string, opts: { capacity: number; reserve: number; onDiskShort?: (n: number) => void; withCollector?: boolean }) {
  const root = await mkdtemp(join(tmpdir(), "stowage-disk-full-"));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const store = await FsBlobStore.open(root, { statfs: diskOf(root, opts.capacity) });
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const metrics = createStowageMetrics();
  const logs: string[] = [];
  const log = createLogger("debug", (line) => logs.push(line));
  let schedule: CollectorSchedule | null = null;
  const blobs = new BlobCache({
    kv,
    store,
    hashers: new InlineHasherFactory(),
    metrics,
    upstreamTimeoutMs: 5_000,
    leases: new FetchLeases(kv, "test"),
    diskReserveBytes: opts.reserve,
    // As server.ts wires it.
    onDiskShort: (needed) => {
      opts.onDiskShort?.(needed);
      schedule?.diskShort(needed);
    },
  });
  if (opts.withCollector) {
    // No grace: the blobs of this test are seconds old.
    const collector = new Collector({ kv, store, metrics, log, owner: "test", busy: (d) => blobs.busy(d), graceMs: 0 });
    schedule = new CollectorSchedule({
      collector,
      log,
      cacheTtlMs: null,
      maxBytes: null,
      intervalMs: 3_600_000,
      reserveBytes: opts.reserve,
      freeSpace: () => store.freeSpace(),
    });
    t.teardown(() => schedule?.close());
  }
  const client = blobOnlyClient(upstreamUrl);
  const get = async (digest: Digest) => {
    const answer = await blobs.get({ client, repo: "app" }, digest, "GET", null, log);
    const parts: Buffer[] = [];
    for await (const part of answer.body ?? []) parts.push(Buffer.from(part));
    return Buffer.concat(parts);
  };
  const committed = (digest: string) => kv.read(kvKeys.blob(digest as Digest), BlobRecord).then((r) => r !== null);
  return { root, kv, metrics, logs, get, committed, settle: () => schedule?.close() };
}

t.test("a blob served uncached for lack of room asks for the bytes it needed", async (t) => {
  const up = await new FakeRegistry().start(t);
  const bytes = randomBytes(5 * MiB);
  const digest = up.addBlob(bytes);
  up.on(digest, inPieces());
  const asked: number[] = [];
  // 20 MiB disk, 16 MiB reserve: 5 MiB does not fit.
  const disk = await cacheOnDisk(t, up.url, { capacity: 20 * MiB, reserve: 16 * MiB, onDiskShort: (n) => asked.push(n) });
  t.ok((await disk.get(digest as Digest)).equals(bytes), "the client gets the whole blob");
  t.notOk(await disk.committed(digest), "not cached");
  t.same(asked, [5 * MiB], "asked once, for the blob's size");

  const fits = randomBytes(MiB);
  const small = up.addBlob(fits);
  t.ok((await disk.get(small as Digest)).equals(fits));
  await waitFor("stored", () => disk.committed(small));
  t.same(asked, [5 * MiB], "a blob that fits asks for nothing");
});

t.test("the disk fills: the blob is served uncached, room is made, the next pull caches it", async (t) => {
  const up = await new FakeRegistry().start(t);
  const blob = () => {
    const bytes = randomBytes(12 * MiB);
    const digest = up.addBlob(bytes) as Digest;
    up.on(digest, inPieces());
    return { bytes, digest };
  };
  const [a, b, c, d] = [blob(), blob(), blob(), blob()];
  // 60 MiB disk, 16 MiB reserve: three 12 MiB blobs fit, the fourth does not.
  const disk = await cacheOnDisk(t, up.url, { capacity: 60 * MiB, reserve: 16 * MiB, withCollector: true });
  for (const x of [a, b, c]) {
    t.ok((await disk.get(x.digest)).equals(x.bytes), "cached pull");
    await waitFor("stored", () => disk.committed(x.digest));
  }

  t.ok((await disk.get(d.digest)).equals(d.bytes), "the blob that does not fit: the client gets it whole all the same");
  t.notOk(await disk.committed(d.digest), "it was not cached");
  await waitFor("counted as served without the store", () => disk.metrics.storeBypass.get({ op: "write" }) === 1);
  await waitFor("room made", async () => !(await exists(blobPath(disk.root, a.digest))), 10_000).catch((err) => {
    t.comment(disk.logs.filter((l) => /disk|collect/.test(l)).join("\n"));
    throw err;
  });
  t.pass("the least recently pulled blob was removed");
  t.ok(await exists(blobPath(disk.root, c.digest)), "the most recently pulled one stays");
  t.notOk(await disk.committed(a.digest), "and its record went with it");
  // Removals are logged when the collection ends, a moment after the files and records go.
  const logged = () => disk.logs.find((l) => l.includes("collector removed") && l.includes(a.digest));
  await waitFor("the removal logged", () => logged() !== undefined);
  const removal = logged() ?? "";
  t.match(removal, /"by":"disk-full"/, "the removal is logged as by disk-full");
  t.match(removal, /"reason":"size"/);
  await disk.settle();

  t.ok((await disk.get(d.digest)).equals(d.bytes), "pulled again: whole");
  await waitFor("stored this time", () => disk.committed(d.digest));
  t.ok(await exists(blobPath(disk.root, d.digest)), "the next pull cached it");
  t.equal(up.blobGets(d.digest), 2, "fetched twice from upstream: once uncached, once to cache it");
  t.equal(sha256(d.bytes), d.digest);
});
