// The collector (src/gc): expiry, the size limit, purges, dry runs, what it must never touch
// (blobs being fetched, leased or just stored), the crash sweep, and one collector at a time.
// Content is written as a pull writes it (objects, then link, blob, manifest and tag records)
// with chosen times, on the filesystem store and on the S3 store over an in-memory S3; one
// test pulls for real through the cache services and pulls again after a collection.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobRecord, LeaseRecord, LinkRecord, ManifestRecord, TagRecord } from "../../src/cache/records.ts";
import { UsageRecorder } from "../../src/cache/usage.ts";
import { loadConfig } from "../../src/config/load.ts";
import { Collector, type CollectOptions, type CollectReport, type PurgeSelector } from "../../src/gc/collector.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics, type StowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import { prefill } from "../../src/prefill/prefill.ts";
import { silentProgress } from "../../src/progress/progress.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../../src/registry/media-types.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { openServices } from "../../src/services.ts";
import type { BlobStore } from "../../src/storage/blob-store.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { S3BlobStore } from "../../src/storage/s3/s3-store.ts";
import { FakeRegistry } from "../support/fake-registry.ts";
import { FakeS3 } from "../support/fake-s3.ts";

const DAY = 24 * 60 * 60_000;
const MINUTE = 60_000;
const LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG = "application/vnd.oci.image.config.v1+json";
const sha = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}` as Digest;

type Env = {
  kv: TypedKv;
  raw: Kv;
  store: BlobStore;
  metrics: StowageMetrics;
  logs: string[];
  /** The collector's clock: a month ahead, so every store object is well past the grace period. */
  clock: { now: number };
  collector(extra?: { owner?: string; busy?: (d: Digest) => boolean }): Collector;
};

async function fsEnv(t: Test): Promise<Env> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-gc-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return env(t, await FsBlobStore.open(join(dir, "blobs")));
}

async function s3Env(t: Test): Promise<Env> {
  const store = await S3BlobStore.open({ bucket: "b", prefix: "cache", endpoint: "http://127.0.0.1:9", region: "us-east-1", spoolDir: null, client: new FakeS3("b").client });
  t.teardown(() => store.close());
  return env(t, store);
}

async function env(t: Test, store: BlobStore): Promise<Env> {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const metrics = createStowageMetrics();
  const logs: string[] = [];
  const log = createLogger("info", (l) => logs.push(l));
  const clock = { now: Date.now() + 30 * DAY };
  const collector = (extra: { owner?: string; busy?: (d: Digest) => boolean } = {}) =>
    new Collector({
      kv,
      store,
      metrics,
      log,
      owner: extra.owner ?? "test-instance",
      now: () => clock.now,
      busy: extra.busy ?? (() => false),
      upstreams: [{ name: "local", host: "registry.example:5000" }, { name: "hub", host: "docker.io" }],
    });
  return { kv, raw, store, metrics, logs, clock, collector };
}

type Blob = { digest: Digest; bytes: Uint8Array };
type Img = { upstream: string; repo: string; tag: string | null; digest: Digest; size: number; blobs: Blob[]; children: Img[] };

const blob = (size: number): Blob => {
  const bytes = randomBytes(size);
  return { digest: sha(bytes), bytes };
};

/** Stores an image and records it as a pull does (blob objects, links and records; manifest; tag last), at `at`. */
async function cache(
  e: Env,
  where: { upstream?: string; repo: string; tag: string | null },
  opts: { at: number; layers?: Blob[]; subject?: Img; children?: Img[] },
): Promise<Img> {
  const upstream = where.upstream ?? "local";
  const children = opts.children ?? [];
  let doc: Record<string, unknown>;
  let blobs: Blob[] = [];
  if (children.length > 0) {
    doc = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: children.map((c) => ({ mediaType: OCI_MANIFEST, digest: c.digest, size: c.size, platform: { os: "linux", architecture: "amd64" } })) };
  } else {
    const configBytes = Buffer.from(`{"n":"${Math.random()}"}`);
    const config = { digest: sha(configBytes), bytes: configBytes };
    blobs = [config, ...(opts.layers ?? [blob(1000)])];
    doc = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: CONFIG, digest: blobs[0]!.digest, size: blobs[0]!.bytes.byteLength },
      layers: blobs.slice(1).map((b) => ({ mediaType: LAYER, digest: b.digest, size: b.bytes.byteLength })),
      ...(opts.subject ? { subject: { mediaType: OCI_MANIFEST, digest: opts.subject.digest, size: opts.subject.size } } : {}),
    };
  }
  for (const b of blobs) {
    await e.store.put(b.digest, b.bytes);
    await e.kv.write(kvKeys.link(upstream, where.repo, b.digest), { linkedAt: opts.at });
    await e.kv.write(kvKeys.blob(b.digest), { size: b.bytes.byteLength, storedAt: opts.at });
  }
  const bytes = Buffer.from(JSON.stringify(doc));
  const digest = sha(bytes);
  const mediaType = children.length > 0 ? OCI_INDEX : OCI_MANIFEST;
  await e.store.put(digest, bytes);
  await e.kv.write(kvKeys.manifest(upstream, where.repo, digest), { mediaType, size: bytes.byteLength, storedAt: opts.at });
  if (where.tag !== null) await e.kv.write(kvKeys.tag(upstream, where.repo, where.tag), { digest, mediaType, size: bytes.byteLength, checkedAt: opts.at });
  return { upstream, repo: where.repo, tag: where.tag, digest, size: bytes.byteLength, blobs, children };
}

/** Records pulls at `at`, as the server's usage recorder does. */
async function pulled(e: Env, at: number, targets: Parameters<UsageRecorder["pulled"]>[0][]): Promise<void> {
  const usage = new UsageRecorder(e.kv, { now: () => at });
  for (const target of targets) usage.pulled(target);
  await usage.close();
}

const pulledTag = (e: Env, img: Img, at: number) => pulled(e, at, [{ kind: "tag", upstream: img.upstream, repo: img.repo, tag: img.tag! }]);

async function storeListing(store: BlobStore): Promise<Map<Digest, number>> {
  const out = new Map<Digest, number>();
  for await (const o of store.list()) out.set(o.digest, o.size);
  return out;
}

const storedBytes = async (store: BlobStore) => [...(await storeListing(store)).values()].reduce((n, s) => n + s, 0);

/** Everything in KV, as readable lines (records' keys). */
async function kvKeysNow(raw: Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const e of raw.list({ prefix: [] })) out.push(e.key.join(" "));
  return out.sort();
}

/** Whether the image's tag, manifest, links, blob records and objects are all there (true) or all gone (false). */
async function imageState(e: Env, img: Img): Promise<"kept" | "removed" | string> {
  const listing = await storeListing(e.store);
  const parts: boolean[] = [];
  const seen: string[] = [];
  const add = (what: string, present: boolean) => {
    parts.push(present);
    seen.push(`${what}:${present ? "present" : "gone"}`);
  };
  if (img.tag !== null) add("tag", (await e.kv.read(kvKeys.tag(img.upstream, img.repo, img.tag), TagRecord)) !== null);
  add("manifest record", (await e.kv.read(kvKeys.manifest(img.upstream, img.repo, img.digest), ManifestRecord)) !== null);
  add("manifest object", listing.has(img.digest));
  for (const b of img.blobs) {
    add(`link ${b.digest.slice(7, 15)}`, (await e.kv.read(kvKeys.link(img.upstream, img.repo, b.digest), LinkRecord)) !== null);
    add(`blob record ${b.digest.slice(7, 15)}`, (await e.kv.read(kvKeys.blob(b.digest), BlobRecord)) !== null);
    add(`blob object ${b.digest.slice(7, 15)}`, listing.has(b.digest));
  }
  for (const c of img.children) {
    const s = await imageState(e, c);
    add(`child ${c.digest.slice(7, 15)}`, s === "kept");
    if (s !== "kept" && s !== "removed") return `partly: child ${s}`;
  }
  if (parts.every(Boolean)) return "kept";
  if (!parts.some(Boolean)) return "removed";
  return `partly: ${seen.join(", ")}`;
}

/** KV and store agree: every blob and manifest record has its object, every object is named by a record. */
async function consistent(t: Test, e: Env): Promise<void> {
  const listing = await storeListing(e.store);
  const named = new Set<string>();
  const problems: string[] = [];
  for await (const { key } of e.kv.list(["blob"], BlobRecord)) {
    named.add(String(key[1]));
    if (!listing.has(key[1] as Digest)) problems.push(`blob record without object: ${key[1]}`);
  }
  for await (const { key } of e.kv.list(["manifest"], ManifestRecord)) {
    named.add(String(key[3]));
    if (!listing.has(key[3] as Digest)) problems.push(`manifest record without object: ${key.join(" ")}`);
  }
  for (const d of listing.keys()) if (!named.has(d)) problems.push(`object no record names: ${d}`);
  t.same(problems, [], "KV and store agree");
}

const names = (r: CollectReport, kind?: string) => r.removed.filter((i) => !kind || i.kind === kind).map((i) => i.name);
const opts = (o: Partial<CollectOptions>): CollectOptions => ({ cacheTtlMs: null, maxBytes: null, dryRun: false, by: "test", ...o });

for (const [label, open] of [["filesystem", fsEnv], ["S3 (in-memory)", s3Env]] as const) {
  t.test(`${label}: after the TTL, unpulled images go and pulled ones stay; a blob shared with a kept image stays`, async (t) => {
    const e = await open(t);
    const now = e.clock.now;
    const shared = blob(50_000);
    const keptImg = await cache(e, { repo: "app", tag: "kept" }, { at: now - 20 * DAY, layers: [shared, blob(3000)] });
    const goneImg = await cache(e, { repo: "app", tag: "gone" }, { at: now - 20 * DAY, layers: [shared, blob(7000), blob(9000)] });
    const children = [await cache(e, { repo: "multi", tag: null }, { at: now - 20 * DAY }), await cache(e, { repo: "multi", tag: null }, { at: now - 20 * DAY })];
    const goneIndex = await cache(e, { repo: "multi", tag: "old" }, { at: now - 20 * DAY, children });
    const byDigest = await cache(e, { repo: "pinned", tag: null }, { at: now - 20 * DAY });
    const recent = await cache(e, { repo: "fresh", tag: "new" }, { at: now - 1 * DAY });
    // Signatures nobody pulls: each stays while its subject stays.
    const keptSig = await cache(e, { repo: "app", tag: null }, { at: now - 20 * DAY, subject: keptImg });
    const goneSig = await cache(e, { repo: "app", tag: null }, { at: now - 20 * DAY, subject: goneImg });
    await pulledTag(e, keptImg, now - 2 * DAY);
    await pulled(e, now - 3 * DAY, [{ kind: "manifest", upstream: "local", repo: "pinned", digest: byDigest.digest }]);
    await pulledTag(e, goneImg, now - 8 * DAY); // pulled, but not within the TTL
    const before = await storedBytes(e.store);

    const report = await e.collector().run(opts({ cacheTtlMs: 7 * DAY }));

    t.equal(report.ran, true);
    t.equal(await imageState(e, keptImg), "kept", "the image pulled within the TTL stays, shared layer included");
    t.equal(await imageState(e, recent), "kept", "the image cached within the TTL stays");
    t.equal(await imageState(e, byDigest), "kept", "a manifest pulled by digest within the TTL stays, though no tag names it");
    t.same(await imageState(e, goneIndex), "removed", "the unpulled index goes with its children and their blobs");
    t.equal(await imageState(e, keptSig), "kept", "the kept image's signature stays");
    t.equal(await imageState(e, goneSig), "removed", "the removed image's signature goes");
    t.notOk(await e.kv.read(kvKeys.tag("local", "app", "gone"), TagRecord), "the unpulled tag goes");
    t.notOk(await e.kv.read(kvKeys.manifest("local", "app", goneImg.digest), ManifestRecord), "its manifest record goes");
    const listing = await storeListing(e.store);
    t.ok(listing.has(shared.digest), "the layer it shared with the kept image is still stored");
    t.ok(await e.kv.read(kvKeys.blob(shared.digest), BlobRecord), "and still recorded");
    for (const b of [goneImg.blobs[0]!, goneImg.blobs[2]!, goneImg.blobs[3]!]) t.notOk(listing.has(b.digest), `its own blob ${b.bytes.byteLength} B is deleted`);
    t.notOk(await e.kv.read(kvKeys.link("local", "app", goneImg.blobs[2]!.digest), LinkRecord), "and its link");
    t.ok(report.removed.every((i) => i.reason === "ttl"), "every removal says ttl");
    t.same(names(report, "tag").sort(), ["local/app:gone", "local/multi:old"], "the report names the tags removed");
    const after = await storedBytes(e.store);
    t.equal(report.bytesFreed, before - after, `bytes freed (${report.bytesFreed}) are what left the store`);
    t.equal(report.storeBytesBefore, before);
    t.equal(report.storeBytesAfter, after);
    t.equal(e.metrics.storeBytes.get(), after, "stowage_store_bytes is the store's size after the run");
    t.equal(e.metrics.storeObjects.get(), listing.size, "stowage_store_objects counts its objects");
    t.equal(e.metrics.gcRemovedBytes.get({ reason: "ttl" }), report.bytesFreed, "freed bytes counted by reason");
    t.equal(e.metrics.gcRemoved.get({ reason: "ttl" }), report.removed.length, "removals counted by reason");
    t.ok(e.metrics.gcLastRun.get() > 0 && e.metrics.registry.render().includes("stowage_gc_last_run_duration_seconds "), "last run time and duration exported");
    t.ok(e.logs.some((l) => l.includes('"collector removed"') && l.includes('"by":"test"') && l.includes("local/app:gone")), "each removal is logged with who asked");
    await consistent(t, e);

    const again = await e.collector().run(opts({ cacheTtlMs: 7 * DAY }));
    t.same(again.removed, [], "a second run finds nothing more to remove");
  });

  t.test(`${label}: above --max-size, least recently pulled images go first until under the low-water mark`, async (t) => {
    const e = await open(t);
    const now = e.clock.now;
    const shared = blob(20_000);
    const imgs: Img[] = [];
    // Pulled in the order 2, 0, 3, 1 (oldest first); image 3 shares a layer with image 1.
    for (let i = 0; i < 4; i++) imgs.push(await cache(e, { repo: `img${i}`, tag: "v1" }, { at: now - 40 * DAY, layers: i === 1 || i === 3 ? [blob(100_000), shared] : [blob(120_000)] }));
    for (const [i, ago] of [[2, 9], [0, 7], [3, 5], [1, 3]] as const) await pulledTag(e, imgs[i]!, now - ago * DAY);
    const total = await storedBytes(e.store);
    const maxBytes = Math.floor(total * 0.7);

    const dry = await e.collector().run(opts({ maxBytes, dryRun: true }));
    const report = await e.collector().run(opts({ maxBytes, lowWater: 0.9 }));

    t.same(names(report, "tag"), ["local/img2:v1", "local/img0:v1"], "the two least recently pulled images went, oldest first");
    t.equal(await imageState(e, imgs[3]!), "kept", "a more recently pulled image stays");
    t.equal(await imageState(e, imgs[1]!), "kept", "the most recently pulled image stays");
    t.equal(await imageState(e, imgs[2]!), "removed");
    t.equal(await imageState(e, imgs[0]!), "removed");
    const after = await storedBytes(e.store);
    t.ok(after <= 0.9 * maxBytes, `the store ends under the low-water mark (${after} <= ${0.9 * maxBytes})`);
    t.ok(report.removed.every((i) => i.reason === "size"), "every removal says size");
    t.equal(report.storeBytesAfter, after);
    t.same(names(dry), names(report), "the dry run reported the same removals");

    const under = await e.collector().run(opts({ maxBytes }));
    t.same(under.removed, [], "under the limit, nothing more goes");
    await consistent(t, e);
  });

  t.test(`${label}: orphan objects and records of missing objects are swept (what a crash mid-collection leaves)`, async (t) => {
    const e = await open(t);
    const now = e.clock.now;
    const img = await cache(e, { repo: "app", tag: "v1" }, { at: now - 1 * DAY });
    const lost = await cache(e, { repo: "app", tag: "lost" }, { at: now - 1 * DAY });
    // A crash between deleting a blob's record and its object; an object stored whose record never came.
    const orphan = blob(4321);
    await e.store.put(orphan.digest, orphan.bytes);
    const half = await cache(e, { repo: "app", tag: "half" }, { at: now - 1 * DAY });
    await e.kv.remove(kvKeys.blob(half.blobs[1]!.digest));
    // Objects lost from the store while their records stayed.
    await e.store.delete(lost.blobs[1]!.digest);
    await e.store.delete(lost.digest);
    const ghost = blob(10);
    await e.kv.write(kvKeys.blob(ghost.digest), { size: 10, storedAt: now - DAY });
    // Pulls of content never cached (served uncached while the store failed): a day ago, and just now.
    await pulled(e, now - DAY, [{ kind: "tag", upstream: "local", repo: "app", tag: "uncached" }, { kind: "blob", digest: orphan.digest }]);
    await pulled(e, now - MINUTE, [{ kind: "tag", upstream: "local", repo: "app", tag: "pulling" }]);
    await pulledTag(e, img, now - DAY);

    const report = await e.collector().run(opts({}));

    const listing = await storeListing(e.store);
    t.notOk(listing.has(orphan.digest), "the object no record named is deleted");
    t.notOk(listing.has(half.blobs[1]!.digest), "the object whose record was already deleted is deleted");
    t.same(
      report.removed.filter((i) => i.reason === "orphan").map((i) => [i.name, i.bytes]).sort(),
      [[orphan.digest, 4321], [half.blobs[1]!.digest, half.blobs[1]!.bytes.byteLength]].sort(),
      "both reported as orphans with their sizes",
    );
    t.notOk(await e.kv.read(kvKeys.blob(ghost.digest), BlobRecord), "a blob record whose object is gone is removed");
    t.notOk(await e.kv.read(kvKeys.blob(lost.blobs[1]!.digest), BlobRecord), "so is the lost layer's");
    t.notOk(await e.kv.read(kvKeys.manifest("local", "app", lost.digest), ManifestRecord), "and the manifest record whose bytes are gone");
    t.same(
      report.removed.filter((i) => i.reason === "missing").map((i) => i.name).sort(),
      [ghost.digest, lost.blobs[1]!.digest, `local/app@${lost.digest}`].sort(),
      "reported as missing",
    );
    t.equal(await imageState(e, img), "kept", "intact content is untouched (no TTL, no limit)");
    t.same(
      (await kvKeysNow(e.raw)).filter((k) => k.startsWith("usage")),
      ["usage tag local app pulling", "usage tag local app v1"],
      "usage of content no longer cached is dropped once past the grace period; the rest stays",
    );
    await consistent(t, e);
  });
}

t.test("an orphan object younger than the grace period stays (a pull may be about to record it)", async (t) => {
  const e = await fsEnv(t);
  e.clock.now = Date.now();
  const young = blob(100);
  await e.store.put(young.digest, young.bytes);
  const report = await e.collector().run(opts({}));
  t.same(report.removed, []);
  t.ok((await storeListing(e.store)).has(young.digest));
  e.clock.now = Date.now() + 11 * MINUTE;
  const later = await e.collector().run(opts({}));
  t.same(names(later), [young.digest], "swept once past the grace period");
});

t.test("blobs being fetched, leased by another instance, or just stored are never removed", async (t) => {
  const e = await fsEnv(t);
  const now = e.clock.now;
  const [busy, leased, young, plain] = [blob(100), blob(200), blob(300), blob(400)];
  const img = await cache(e, { repo: "app", tag: "old" }, { at: now - 30 * DAY, layers: [busy, leased, young, plain] });
  await e.kv.write(kvKeys.lease(leased.digest), { owner: "another-instance", expiresAt: now + 10_000 });
  await e.kv.write(kvKeys.blob(young.digest), { size: 300, storedAt: now - 2 * MINUTE });
  // A manifest stored minutes ago whose tag is not recorded yet: a pull in progress.
  const inProgress = await cache(e, { repo: "app", tag: null }, { at: now - 3 * MINUTE });

  // A TTL shorter than the grace period: only the grace period keeps what was just stored.
  const report = await e.collector({ busy: (d) => d === busy.digest }).run(opts({ cacheTtlMs: 1 * MINUTE }));

  const listing = await storeListing(e.store);
  for (const [what, b] of [["being fetched", busy], ["leased", leased], ["just stored", young]] as const) {
    t.ok(listing.has(b.digest), `the blob ${what} is still stored`);
    t.ok(await e.kv.read(kvKeys.blob(b.digest), BlobRecord), `and recorded`);
  }
  t.notOk(listing.has(plain.digest), "the image's other layer is collected");
  t.notOk(await e.kv.read(kvKeys.tag("local", "app", "old"), TagRecord), "and its tag");
  t.notOk(listing.has(img.digest), "and its manifest");
  t.equal(await imageState(e, inProgress), "kept", "the manifest of a pull in progress stays, with its blobs");
  t.notOk(names(report).includes(busy.digest));

  const purged = await e.collector({ busy: (d) => d === busy.digest }).run(opts({ purge: [{ kind: "image", upstream: "local", repo: "app", tag: null, digest: inProgress.digest }] }));
  t.ok(names(purged).includes(`local/app@${inProgress.digest}`), "a purge does not wait for the grace period");
  t.equal(await imageState(e, inProgress), "removed", "the purged image goes whole, however recently stored");
  t.ok((await storeListing(e.store)).has(busy.digest), "but a blob being fetched stays even then");
});

t.test("purge: by image, by repository glob, by upstream; then whatever became unreferenced", async (t) => {
  const e = await fsEnv(t);
  const now = e.clock.now;
  const shared = blob(5000);
  const at = now - 1 * DAY;
  const a = await cache(e, { repo: "app", tag: "1.0" }, { at, layers: [shared, blob(100)] });
  const b = await cache(e, { repo: "app", tag: "2.0" }, { at, layers: [shared, blob(200)] });
  const sig = await cache(e, { repo: "app", tag: null }, { at, subject: a });
  const x = await cache(e, { repo: "team/x", tag: "v" }, { at });
  const y = await cache(e, { repo: "team/y", tag: "v" }, { at });
  const deep = await cache(e, { repo: "team/sub/z", tag: "v" }, { at });
  const hub = await cache(e, { upstream: "hub", repo: "library/alpine", tag: "3.20" }, { at, layers: [shared] });
  const pinned = await cache(e, { upstream: "hub", repo: "library/alpine", tag: null }, { at });
  const purge = (selectors: PurgeSelector[], dryRun = false) => e.collector().run(opts({ purge: selectors, dryRun, by: "admin:alice" }));

  const r1 = await purge([{ kind: "image", upstream: "local", repo: "app", tag: "1.0", digest: null }]);
  const listing = await storeListing(e.store);
  t.notOk(await e.kv.read(kvKeys.tag("local", "app", "1.0"), TagRecord), "the purged tag is gone");
  t.notOk(await e.kv.read(kvKeys.manifest("local", "app", a.digest), ManifestRecord), "its manifest record");
  t.notOk(listing.has(a.digest), "its manifest's bytes");
  for (const own of [a.blobs[0]!, a.blobs[2]!]) {
    t.notOk(listing.has(own.digest), "its own blobs");
    t.notOk(await e.kv.read(kvKeys.blob(own.digest), BlobRecord), "and their records");
  }
  t.equal(await imageState(e, sig), "removed", "so is the signature attached to it");
  t.equal(await imageState(e, b), "kept", "the other tag of the repository stays, with the layer they shared");
  t.ok(r1.removed.every((i) => i.reason === "purge"), "reason purge");
  t.ok(e.logs.some((l) => l.includes('"by":"admin:alice"') && l.includes("local/app:1.0")), "logged with who purged");

  const r2 = await purge([{ kind: "repository", glob: "registry.example:5000/team/*" }]);
  t.same(names(r2, "tag").sort(), ["local/team/x:v", "local/team/y:v"], "a glob on the registry host: * stops at /");
  t.equal(await imageState(e, deep), "kept");
  await purge([{ kind: "repository", glob: "local/**" }], true);
  t.equal(await imageState(e, deep), "kept", "a dry run changes nothing");
  const r3 = await purge([{ kind: "repository", glob: "local/**" }]);
  t.same(names(r3, "tag").sort(), ["local/app:2.0", "local/team/sub/z:v"], "** crosses /");
  t.ok((await storeListing(e.store)).has(shared.digest), "the layer the hub image shares stays");

  const r4 = await purge([{ kind: "image", upstream: "hub", repo: "library/alpine", tag: null, digest: pinned.digest }]);
  t.same(names(r4, "manifest"), [`hub/library/alpine@${pinned.digest}`], "an image by digest");
  t.equal(await imageState(e, hub), "kept");
  await purge([{ kind: "upstream", name: "hub" }]);
  t.same([...(await storeListing(e.store)).keys()], [], "purging the last upstream empties the store");
  t.same((await kvKeysNow(e.raw)).filter((k) => !k.startsWith("usage") && !k.startsWith("stowage")), [], "and the cache's records");
  void x;
  void y;
});

t.test("a dry run reports what a run removes and changes nothing", async (t) => {
  const e = await fsEnv(t);
  const now = e.clock.now;
  await cache(e, { repo: "app", tag: "old" }, { at: now - 30 * DAY });
  await cache(e, { repo: "app", tag: "new" }, { at: now - 1 * DAY });
  const orphan = blob(77);
  await e.store.put(orphan.digest, orphan.bytes);
  const kvBefore = await kvKeysNow(e.raw);
  const storeBefore = [...(await storeListing(e.store))];

  const dry = await e.collector().run(opts({ cacheTtlMs: 7 * DAY, dryRun: true }));
  t.equal(dry.dryRun, true);
  t.ok(dry.removed.length >= 4, `it would remove the old tag, its manifest, its blobs and the orphan (${dry.removed.length} items)`);
  t.same(await kvKeysNow(e.raw), kvBefore, "KV unchanged");
  t.same([...(await storeListing(e.store))], storeBefore, "store unchanged");
  t.equal(e.metrics.gcRemoved.get({ reason: "ttl" }), 0, "nothing counted as removed");

  const real = await e.collector().run(opts({ cacheTtlMs: 7 * DAY }));
  t.same(real.removed, dry.removed, "the real run removes exactly that");
  t.equal(real.bytesFreed, dry.bytesFreed);
});

t.test("one collector at a time across instances sharing a KV", async (t) => {
  const e = await fsEnv(t);
  const now = e.clock.now;
  for (let i = 0; i < 20; i++) await cache(e, { repo: `r${i}`, tag: "old" }, { at: now - 30 * DAY });
  const [a, b] = await Promise.all([
    e.collector({ owner: "instance-a" }).run(opts({ cacheTtlMs: 7 * DAY })),
    e.collector({ owner: "instance-b" }).run(opts({ cacheTtlMs: 7 * DAY })),
  ]);
  t.same([a.ran, b.ran].sort(), [false, true], "one ran, the other stood aside");
  t.equal((a.ran ? b : a).removed.length, 0, "the one that stood aside removed nothing");
  t.equal(names(a.ran ? a : b, "tag").length, 20);

  await cache(e, { repo: "later", tag: "old" }, { at: now - 30 * DAY });
  await e.kv.write(kvKeys.gcLease(), { owner: "instance-c", expiresAt: now + 30_000 });
  const held = await e.collector({ owner: "instance-a" }).run(opts({ cacheTtlMs: 7 * DAY }));
  t.equal(held.ran, false, "while another instance holds the collector lease, run() does nothing");
  t.ok(await e.kv.read(kvKeys.tag("local", "later", "old"), TagRecord), "nothing removed");
  e.clock.now += 61_000;
  const expired = await e.collector({ owner: "instance-a" }).run(opts({ cacheTtlMs: 7 * DAY }));
  t.equal(expired.ran, true, "once that lease has expired (its holder died), a collector runs");
  t.equal(await e.kv.read(kvKeys.gcLease(), LeaseRecord), null, "and releases the lease when done");
});

t.test("pulled through the cache, collected, pulled again: the next pull fetches it anew", async (t) => {
  const reg = await new FakeRegistry().start(t);
  const layer = Buffer.from(randomBytes(30_000));
  const cfg = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const [cd, ld] = [reg.addBlob(cfg, ["app"]), reg.addBlob(layer, ["app"])];
  const doc = { schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: CONFIG, digest: cd, size: cfg.length }, layers: [{ mediaType: LAYER, digest: ld, size: layer.length }] };
  reg.addManifest("1.0", Buffer.from(JSON.stringify(doc)), { repo: "app", mediaType: OCI_MANIFEST });
  const dir = await mkdtemp(join(tmpdir(), "stowage-gc-pull-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cfgFor = loadConfig({ argv: ["--data-dir", dir, "--upstream", `local=${reg.url}`], env: {}, readFile: (p) => readFileSync(p, "utf8") });
  const log = createLogger("error", () => {});
  const pull = async () => {
    const services = await openServices(cfgFor, nodeRuntime, log);
    try {
      const result = await prefill({ ...services, upstreams: cfgFor.upstreams, defaultUpstream: cfgFor.defaultUpstream }, { refs: ["local/app:1.0"], platforms: [], jobs: 2, withReferrers: false }, silentProgress, log);
      t.same(result.images.map((i) => i.reason ?? i.status), ["ok"], "the pull succeeds");
    } finally {
      await services.close();
    }
  };
  await pull();
  const layerGets = () => reg.seen.filter((s) => s.method === "GET" && s.path.endsWith(ld)).length;
  t.equal(layerGets(), 1);

  const services = await openServices(cfgFor, nodeRuntime, log);
  const collector = new Collector({
    kv: services.kv,
    store: services.store,
    metrics: services.metrics,
    log,
    owner: "t",
    now: () => Date.now() + 30 * DAY,
    busy: (d) => services.blobs.busy(d),
  });
  // A client streaming the layer from the store while the image expires: the layer waits for it.
  const reading = await services.blobs.get({ client: services.clients.get("local")!, repo: "app" }, ld, "GET", null, log);
  t.equal(reading.source, "cache");
  const reader = reading.body!.getReader();
  const first = await reader.read();
  const during = await collector.run(opts({ cacheTtlMs: 7 * DAY }));
  t.notOk(names(during).includes(ld), "a blob a client is reading from the store is not collected");
  t.ok(names(during).includes(cd), "the rest of the expired image is");
  const rest: Uint8Array[] = [first.value!];
  for (let r = await reader.read(); !r.done; r = await reader.read()) rest.push(r.value);
  t.ok(Buffer.concat(rest).equals(layer), "the client gets the whole layer");
  const report = await collector.run(opts({ cacheTtlMs: 7 * DAY }));
  await services.close();
  t.ok(names(report).includes(ld), "once read, the layer is collected by the next run");
  await pull();
  t.equal(layerGets(), 2, "the next pull fetched the layer from upstream again");
});
