// Bundles end to end in one process: a cache filled as pulls fill it, exported, imported into
// an empty store and KV (fs and S3), read by skopeo; truncated, damaged and incomplete bundles;
// incremental bundles; a second import; referrers; memory with a 256 MiB blob.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { exportBundle, type ExportOptions } from "../../src/bundle/export.ts";
import { importBundle, type ImportDeps } from "../../src/bundle/import.ts";
import { ABSENT_ANNOTATION } from "../../src/bundle/common.ts";
import { readTar, tarWriter, type TarWriteEntry } from "../../src/bundle/tar.ts";
import { recordReferrers } from "../../src/cache/referrers-cache.ts";
import { InlineHasherFactory, type HasherFactory } from "../../src/digest/hasher.ts";
import { WorkerHasherFactory } from "../../src/digest/worker-pool.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { silentProgress, type Progress } from "../../src/progress/progress.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { BlobStore } from "../../src/storage/blob-store.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { S3BlobStore } from "../../src/storage/s3/s3-store.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { FakeS3 } from "../support/fake-s3.ts";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR } from "../harness/images.ts";
import { DOCKER_HUB } from "../support/upstreams.ts";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";

const LOCAL: Upstream = { name: "local", url: "http://127.0.0.1:5999", host: "127.0.0.1:5999", aliases: ["127.0.0.1:5999"], dockerHub: false, allowPrivateNetwork: true };
const HUB = DOCKER_HUB;
const UPSTREAMS = [LOCAL, HUB];

// ------------------------------------------------------------------ images

type Obj = { digest: Digest; bytes: Uint8Array; mediaType: string };
const sha = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}` as Digest;
const obj = (bytes: Uint8Array | string, mediaType = "application/vnd.oci.image.layer.v1.tar+gzip"): Obj => {
  const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  return { digest: sha(b), bytes: b, mediaType };
};
const desc = (o: Obj, extra: Record<string, unknown> = {}) => ({ mediaType: o.mediaType, digest: o.digest, size: o.bytes.byteLength, ...extra });

/** An image of one platform: its manifest and its blobs (config first). */
type Img = { root: Obj; manifests: Obj[]; blobs: Obj[] };

function singleImage(name: string, opts: { docker?: boolean; arch?: string; layers?: Obj[]; subject?: Obj; artifactType?: string } = {}): Img {
  const docker = opts.docker ?? false;
  const config = obj(JSON.stringify({ architecture: opts.arch ?? "amd64", os: "linux", name }), docker ? "application/vnd.docker.container.image.v1+json" : "application/vnd.oci.image.config.v1+json");
  // Real gzip: skopeo recompresses a "gzip" layer that is not, which would change the digests it reports.
  const gzipType = docker ? "application/vnd.docker.image.rootfs.diff.tar.gzip" : undefined;
  const layers = opts.layers ?? [obj(gzipSync(randomBytes(40_000)), gzipType), obj(gzipSync(randomBytes(3000)), gzipType)];
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: docker ? DOCKER_MANIFEST : OCI_MANIFEST, config: desc(config), layers: layers.map((l) => desc(l)) };
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  if (opts.subject) doc.subject = desc(opts.subject);
  const manifest = obj(JSON.stringify(doc), docker ? DOCKER_MANIFEST : OCI_MANIFEST);
  return { root: manifest, manifests: [manifest], blobs: [config, ...layers] };
}

function indexImage(name: string, archs = ["amd64", "arm64"]): Img & { children: Img[] } {
  const children = archs.map((arch) => singleImage(`${name}-${arch}`, { arch }));
  const index = obj(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: children.map((c, i) => desc(c.root, { platform: { os: "linux", architecture: archs[i] } })) }),
    OCI_INDEX,
  );
  return { root: index, manifests: [index, ...children.flatMap((c) => c.manifests)], blobs: children.flatMap((c) => c.blobs), children };
}

// ------------------------------------------------------------------ a cache

type Side = { dir: string; raw: Kv; kv: TypedKv; store: BlobStore; s3?: FakeS3 };

async function side(t: Test, kind: "fs" | "s3" = "fs"): Promise<Side> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-bundle-"));
  const raw = (await openKv(join(dir, "kv.sqlite3"))) as unknown as Kv;
  t.teardown(async () => {
    raw.close();
    await rm(dir, { recursive: true, force: true });
  });
  if (kind === "fs") return { dir, raw, kv: new TypedKv(raw), store: await FsBlobStore.open(join(dir, "blobs")) };
  const s3 = new FakeS3("bucket");
  const store = await S3BlobStore.open({ bucket: "bucket", prefix: "cache", endpoint: "http://127.0.0.1:9", region: "us-east-1", spoolDir: join(dir, "spool"), client: s3.client });
  return { dir, raw, kv: new TypedKv(raw), store, s3 };
}

/** What a pull of `img` leaves: manifests stored and recorded, blobs stored with blob and link records, the tag last. */
async function pull(s: Side, upstream: Upstream, repo: string, tag: string | null, img: Img, skip: { manifests?: Obj[]; blobs?: Obj[] } = {}): Promise<void> {
  const now = Date.now();
  for (const b of img.blobs) {
    if (skip.blobs?.includes(b)) continue;
    await s.store.put(b.digest, b.bytes);
    await s.kv.write(kvKeys.link(upstream.name, repo, b.digest), { linkedAt: now });
    await s.kv.write(kvKeys.blob(b.digest), { size: b.bytes.byteLength, storedAt: now });
  }
  for (const m of img.manifests) {
    if (skip.manifests?.includes(m)) continue;
    await s.store.put(m.digest, m.bytes);
    await s.kv.write(kvKeys.manifest(upstream.name, repo, m.digest), { mediaType: m.mediaType, size: m.bytes.byteLength, storedAt: now });
  }
  if (tag) await s.kv.write(kvKeys.tag(upstream.name, repo, tag), { digest: img.root.digest, mediaType: img.root.mediaType, size: img.root.bytes.byteLength, checkedAt: now });
}

const TIMESTAMPS = new Set(["checkedAt", "storedAt", "linkedAt"]);

/** Every cache record, timestamps left out (they say when, not what). */
async function records(s: Side): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const prefix of ["tag", "manifest", "link", "blob", "referrers"]) {
    for await (const e of s.raw.list({ prefix: [prefix] })) {
      out[JSON.stringify(e.key)] = Object.fromEntries(Object.entries(e.value as Record<string, unknown>).filter(([k]) => !TIMESTAMPS.has(k)));
    }
  }
  return out;
}

/** Every raw record with its versionstamp: any write changes it. */
async function rawRecords(s: Side): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of s.raw.list({ prefix: [] })) out[JSON.stringify(e.key)] = `${e.versionstamp} ${JSON.stringify(e.value)}`;
  return out;
}

/** The store's objects by digest with the sha256 of their bytes (fs: files; S3: the fake's objects). */
async function storeContents(s: Side): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (s.s3) {
    for (const [key, bytes] of s.s3.objects) out[key.split("/").pop()!] = sha(bytes);
    return out;
  }
  const root = join(s.dir, "blobs", "sha256");
  for (const sub of await readdir(root).catch(() => [])) {
    for (const f of await readdir(join(root, sub))) out[f] = sha(await readFile(join(root, sub, f)));
  }
  return out;
}

async function uploadsLeft(s: Side): Promise<string[]> {
  if (s.s3) return [...[...s.s3.uploads.values()].map((u) => u.key), ...(await readdir(join(s.dir, "spool")).catch(() => []))];
  return readdir(join(s.dir, "blobs", "_uploads"));
}

function deps(s: Side) {
  return { kv: s.kv, store: s.store, upstreams: UPSTREAMS, defaultUpstream: "docker.io" };
}

function importDeps(s: Side, hashers: HasherFactory = new InlineHasherFactory()): ImportDeps {
  return {
    ...deps(s),
    hashers,
    recordReferrers: (upstream, repo, subject, descriptors) => recordReferrers({ kv: s.kv, store: s.store }, upstream, repo, subject, descriptors),
  };
}

const quiet = createLogger("error", () => {});

async function exportToBytes(s: Side, options: Partial<ExportOptions> & Pick<ExportOptions, "refs">, progress: Progress = silentProgress) {
  const chunks: Buffer[] = [];
  const out = new WritableStream<Uint8Array>({ write: (c) => void chunks.push(Buffer.from(c)) });
  const summary = await exportBundle(deps(s), { since: null, withReferrers: false, ...options }, out, progress, quiet);
  return { bytes: Buffer.concat(chunks), summary };
}

function streamOf(bytes: Uint8Array, piece = 64 * 1024): ReadableStream<Uint8Array> {
  let o = 0;
  return new ReadableStream({
    pull(c) {
      if (o >= bytes.byteLength) return c.close();
      c.enqueue(bytes.slice(o, o + piece));
      o += piece;
    },
  });
}

async function importBytes(s: Side, bytes: Uint8Array, progress: Progress = silentProgress) {
  return importBundle(importDeps(s), { stream: streamOf(bytes), size: bytes.byteLength }, progress, quiet);
}

async function entriesOf(bytes: Uint8Array): Promise<Array<{ name: string; bytes: Buffer }>> {
  const out = [];
  for await (const e of readTar(streamOf(bytes))) out.push({ name: e.name, bytes: Buffer.from(await new Response(e.body).arrayBuffer()) });
  return out;
}

async function rebuild(entries: Array<{ name: string; bytes: Uint8Array }>): Promise<Buffer> {
  const list: TarWriteEntry[] = entries.map((e) => ({ name: e.name, size: e.bytes.byteLength, body: e.bytes }));
  return Buffer.from(await new Response(tarWriter(list)).arrayBuffer());
}

/** Where an entry's data starts in a tar we wrote (its ustar header sits just before it). */
function dataOffset(tar: Buffer, name: string): number {
  const at = tar.indexOf(Buffer.from(name + "\0"));
  if (at < 0 || at % 512 !== 0) throw new Error(`no header for ${name}`);
  return at + 512;
}

const blobName = (o: Obj) => `blobs/sha256/${o.digest.slice(7)}`;

/** A recording progress: what each item ended as. */
function recordingProgress() {
  const items: Array<{ label: string; total: number | null; bytes: number; end: string | null }> = [];
  const progress: Progress = {
    item(label, total) {
      const it = { label, total, bytes: 0, end: null as string | null };
      items.push(it);
      return { add: (n) => void (it.bytes += n), setTotal: (n) => void (it.total = n), done: (note) => void (it.end = `done${note ? `: ${note}` : ""}`), fail: (r) => void (it.end = `failed: ${r}`) };
    },
    finish() {},
  };
  return { progress, items };
}

// ------------------------------------------------------------------ fixtures

/** A cache with an index image (two platforms), a Docker Hub image, and an image pulled by digest. */
async function filledCache(t: Test) {
  const src = await side(t);
  const multi = indexImage("multi");
  const alpine = singleImage("alpine", { docker: true });
  const byDigest = singleImage("app");
  await pull(src, LOCAL, "stowage-test/multi", "v1", multi);
  await pull(src, HUB, "library/alpine", "3.20", alpine);
  await pull(src, LOCAL, "team/app", null, byDigest);
  const refs = ["127.0.0.1:5999/stowage-test/multi:v1", "alpine:3.20", `local/team/app@${byDigest.root.digest}`];
  const names = ["127.0.0.1:5999/stowage-test/multi:v1", "docker.io/library/alpine:3.20", `127.0.0.1:5999/team/app@${byDigest.root.digest}`];
  return { src, multi, alpine, byDigest, refs, names };
}

// ------------------------------------------------------------------ tests

t.test("round trip: export, import into an empty fs or S3 store, same records and bytes", async (t) => {
  const { src, multi, alpine, byDigest, refs, names } = await filledCache(t);
  const { progress, items } = recordingProgress();
  const { bytes, summary } = await exportToBytes(src, { refs }, progress);
  t.same(summary.images.map((i) => [i.ref, i.status]), names.map((n) => [n, "ok"]), "every image exported, by its full reference");
  t.same(summary.images.map((i) => i.digest), [multi.root.digest, alpine.root.digest, byDigest.root.digest]);
  const objects = new Set([...multi.manifests, ...multi.blobs, ...alpine.manifests, ...alpine.blobs, ...byDigest.manifests, ...byDigest.blobs].map((o) => o.digest));
  t.equal(summary.blobs, objects.size, "each object once");
  t.same(items.map((i) => i.end), ["done", "done", "done"], "one progress item per image");
  t.ok(items.every((i) => i.bytes === i.total), "each item's bytes reach its total");

  const entries = await entriesOf(bytes);
  t.same(entries.slice(0, 2).map((e) => e.name), ["oci-layout", "index.json"], "oci-layout and index.json come first");
  t.equal(entries.length, 2 + objects.size);
  const index = JSON.parse(entries[1]!.bytes.toString());
  t.same(index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations["org.opencontainers.image.ref.name"]), names);
  t.same(index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations["io.containerd.image.name"]), names);

  const all = await exportToBytes(src, { refs: "all" });
  t.same(all.summary.images.map((i) => i.ref).sort(), [...names].sort(), "--all finds the same three images (the digest pull too, not the index's children)");

  for (const kind of ["fs", "s3"] as const) {
    const dst = await side(t, kind);
    const watched = recordingProgress();
    const result = await importBytes(dst, bytes, watched.progress);
    t.same(result.problems, [], `${kind}: no problems`);
    t.same(watched.items.map((i) => [i.label, i.end]), [["bundle", "done"], ...names.map((n) => [n, "done"])], `${kind}: progress for the bundle, then one item per image`);
    t.equal(watched.items[0]!.bytes, bytes.length, "the bundle item counts every byte read");
    t.same(result.images, names.map((ref) => ({ ref, status: "ok" })), `${kind}: every image imported`);
    t.equal(result.blobsWritten, objects.size);
    t.same(await records(dst), await records(src), `${kind}: the same tag, manifest, blob and link records as the pulls left`);
    t.same(await storeContents(dst), await storeContents(src), `${kind}: the same objects in the store`);
    t.same(await uploadsLeft(dst), [], `${kind}: no uploads left behind`);
  }
});

t.test("skopeo reads the exported bundle as oci-archive:, digests match", async (t) => {
  const { src, multi, alpine, refs, names } = await filledCache(t);
  const { bytes } = await exportToBytes(src, { refs });
  const file = join(src.dir, "bundle.tar");
  await writeFile(file, bytes);
  const out = join(src.dir, "copy");
  await run("skopeo", ["copy", "--all", `oci-archive:${file}:${names[0]}`, `oci:${out}:multi`]);
  const copied = JSON.parse(await readFile(join(out, "index.json"), "utf8"));
  t.equal(copied.manifests[0].digest, multi.root.digest, "skopeo copy --all: the index digest");
  for (const child of multi.children) t.ok((await stat(join(out, "blobs", "sha256", child.root.digest.slice(7)))).isFile(), `child ${child.root.digest.slice(7, 19)} copied`);
  // skopeo 1.9 looks names up only among OCI-typed descriptors: it cannot find a Docker schema 2
  // image in any OCI layout, even one it wrote itself (--preserve-digests). Import reads it.
  const index = JSON.parse((await entriesOf(bytes))[1]!.bytes.toString());
  t.same(index.manifests[1], { mediaType: DOCKER_MANIFEST, digest: alpine.root.digest, size: alpine.root.bytes.byteLength, annotations: { "org.opencontainers.image.ref.name": names[1], "io.containerd.image.name": names[1] } }, "the Docker image is named with its own media type");
  const digestRef = (await run("skopeo", ["inspect", "--raw", `oci-archive:${file}:${names[2]}`], { encoding: "buffer" })).stdout;
  t.equal(sha(digestRef), names[2]!.split("@")[1], "a digest reference (host/repo@sha256:…) is found too");
});

t.test("an image the cache lacks, or lacks part of, is reported and left out; the others are written", async (t) => {
  const src = await side(t);
  const full = singleImage("full");
  const partial = indexImage("partial");
  const broken = singleImage("broken");
  await pull(src, LOCAL, "full", "v1", full);
  // Only amd64 of the index was pulled (a pull by a single client): arm64 is absent, not missing.
  await pull(src, LOCAL, "partial", "v1", partial, { manifests: [partial.children[1]!.root], blobs: partial.children[1]!.blobs });
  await pull(src, LOCAL, "broken", "v1", broken, { blobs: [broken.blobs[2]!] });
  const { bytes, summary } = await exportToBytes(src, { refs: ["local/full:v1", "local/partial:v1", "local/broken:v1", "local/never:v1", "quay.io/x/y:1"] });
  const byRef = Object.fromEntries(summary.images.map((i) => [i.ref, i]));
  t.equal(byRef["127.0.0.1:5999/full:v1"]?.status, "ok");
  t.equal(byRef["127.0.0.1:5999/partial:v1"]?.status, "ok", "an index with one platform cached is exported with that platform");
  t.match(byRef["127.0.0.1:5999/broken:v1"]?.reason, `layer ${broken.blobs[2]!.digest} is missing from the cache`);
  t.match(byRef["127.0.0.1:5999/never:v1"]?.reason, /not in the cache: run stowage prefill 127\.0\.0\.1:5999\/never:v1 first/);
  t.match(byRef["quay.io/x/y:1"]?.reason, /registry quay\.io is not one of the configured upstreams/);

  const entries = await entriesOf(bytes);
  const index = JSON.parse(entries[1]!.bytes.toString());
  t.equal(index.manifests.length, 2, "index.json names the two complete images");
  t.equal(index.manifests[1].annotations[ABSENT_ANNOTATION], partial.children[1]!.root.digest, "the platform never pulled is named as absent");
  t.notOk(entries.some((e) => e.name === blobName(broken.root)), "nothing of the incomplete image is written");

  const dst = await side(t);
  const result = await importBytes(dst, bytes);
  t.same(result.images.map((i) => i.status), ["ok", "ok"], "both import");
  t.same(await records(dst), Object.fromEntries(Object.entries(await records(src)).filter(([k]) => !k.includes('"broken"') && !k.includes(broken.blobs[0]!.digest) && !k.includes(broken.blobs[1]!.digest))));
});

t.test("truncated, damaged and incomplete bundles: reported, nothing unverified kept, whole images imported, a good bundle completes the store", async (t) => {
  const src = await side(t);
  const first = indexImage("first");
  const second = singleImage("second", { layers: [obj(randomBytes(300_000)), obj(randomBytes(200_000))] });
  await pull(src, LOCAL, "first", "v1", first);
  await pull(src, LOCAL, "second", "v1", second);
  const refs = ["local/first:v1", "local/second:v1"];
  const { bytes: good } = await exportToBytes(src, { refs });
  const target = second.blobs[1]!; // the 300 kB layer, written after everything of the first image
  const at = dataOffset(good, blobName(target));

  const cases: Array<{ name: string; bundle: () => Promise<Buffer>; problem: RegExp; reason: RegExp }> = [
    {
      name: "truncated in the middle of a blob",
      bundle: async () => good.subarray(0, at + 150_000),
      problem: new RegExp(`ends inside blobs/sha256/${target.digest.slice(7)}: 150000 of its 300000 bytes`),
      reason: new RegExp(`layer ${target.digest} is in the bundle but incomplete \\(150000 of 300000 bytes\\)`),
    },
    {
      name: "one flipped byte",
      bundle: async () => {
        const b = Buffer.from(good);
        b[at + 123_456] = b[at + 123_456]! ^ 1;
        return b;
      },
      problem: new RegExp(`blobs/sha256/${target.digest.slice(7)}: damaged: it hashes to sha256:`),
      reason: new RegExp(`layer ${target.digest} is in the bundle but damaged`),
    },
    {
      name: "a manifest naming a blob the bundle lacks",
      bundle: async () => rebuild((await entriesOf(good)).filter((e) => e.name !== blobName(target))),
      problem: /^$/,
      reason: new RegExp(`layer ${target.digest} is missing from the bundle and the store`),
    },
  ];
  for (const [c, kind] of cases.flatMap((c) => [[c, "fs"], [c, "s3"]] as const)) {
    await t.test(`${c.name} (${kind} store)`, async (t) => {
      const dst = await side(t, kind);
      const result = await importBytes(dst, await c.bundle());
      t.equal(result.images[0]?.status, "ok", "the complete image is imported");
      t.equal(result.images[1]?.status, "failed", "the other is not");
      t.match(result.images[1]?.reason, c.reason, String(result.images[1]?.reason));
      if (c.problem.source !== "^$") t.ok(result.problems.some((p) => c.problem.test(p)), `the problem is named: ${result.problems.join(" | ")}`);
      const stored = await storeContents(dst);
      t.notOk(target.digest.slice(7) in stored, "the bad blob is not in the store");
      t.same(await uploadsLeft(dst), [], "no upload left behind");
      const recs = await records(dst);
      t.notOk(Object.keys(recs).some((k) => k.includes('"second"')), "no record of the failed image (tag, manifest, links)");
      t.notOk(Object.keys(recs).some((k) => k.includes(target.digest)), "no record of the bad blob");
      t.ok(recs[JSON.stringify(["tag", "local", "first", "v1"])], "the complete image's tag is recorded");
      for (const b of second.blobs.filter((b) => b !== target && b.digest.slice(7) in stored)) {
        t.ok(recs[JSON.stringify(["blob", b.digest])], `a verified blob of the failed image has its blob record (${b.digest.slice(7, 19)})`);
      }
      t.notOk(recs[JSON.stringify(["blob", second.root.digest])], "its manifest has none, as after a pull");
      const again = await importBytes(dst, good);
      t.same(again.images.map((i) => i.status), ["ok", "ok"], "a good bundle afterwards imports everything");
      t.same(await records(dst), await records(src), "and the records are complete");
      t.same(await storeContents(dst), await storeContents(src), "and the store");
    });
  }

  await t.test("a bad index.json is reported; the blobs are still verified, no image is recorded", async (t) => {
    const dst = await side(t);
    const entries = (await entriesOf(good)).map((e) => (e.name === "index.json" ? { name: e.name, bytes: Buffer.from('{"schemaVersion":2,"manifests":"no"}') } : e));
    const result = await importBytes(dst, await rebuild(entries));
    t.match(result.problems.join("\n"), /index\.json is not an OCI image index/);
    t.same(result.images, []);
    t.same(Object.keys(await records(dst)).filter((k) => !k.startsWith('["blob"')), [], "no tag, manifest or link records (only the verified blobs' own)");
  });
});

t.test("--since: the incremental bundle has no blob of the previous one; both in order give the same as one full bundle", async (t) => {
  const src = await side(t);
  const a = indexImage("a");
  const shared = a.children[0]!.blobs[1]!;
  const b = singleImage("b", { layers: [shared, obj(randomBytes(5000))] });
  await pull(src, LOCAL, "a", "v1", a);
  const { bytes: first } = await exportToBytes(src, { refs: ["local/a:v1"] });
  await pull(src, LOCAL, "b", "v1", b);
  const { bytes: second, summary } = await exportToBytes(src, { refs: ["local/a:v1", "local/b:v1"], since: streamOf(first) });
  const { bytes: full } = await exportToBytes(src, { refs: ["local/a:v1", "local/b:v1"] });

  const firstBlobs = new Set((await entriesOf(first)).map((e) => e.name).filter((n) => n.startsWith("blobs/")));
  const secondEntries = await entriesOf(second);
  const secondBlobs = secondEntries.map((e) => e.name).filter((n) => n.startsWith("blobs/"));
  t.same(secondBlobs.filter((n) => firstBlobs.has(n)), [], "no blob of the previous bundle");
  t.same(secondBlobs.sort(), [b.root, b.blobs[0]!, b.blobs[2]!].map(blobName).sort(), "only what is new (the shared layer is not)");
  t.same(summary.images.map((i) => i.status), ["ok", "ok"]);
  t.equal(JSON.parse(secondEntries[1]!.bytes.toString()).manifests.length, 2, "index.json still names both images");

  const inOrder = await side(t);
  t.same((await importBytes(inOrder, first)).images.map((i) => i.status), ["ok"]);
  const incremental = await importBytes(inOrder, second);
  t.same(incremental.images.map((i) => i.status), ["ok", "ok"], "the incremental bundle imports on top of the first");
  const whole = await side(t);
  await importBytes(whole, full);
  t.same(await records(inOrder), await records(whole), "the same records as one full bundle");
  t.same(await storeContents(inOrder), await storeContents(whole), "the same store");
  t.same(await records(inOrder), await records(src), "and as the cache it came from");

  const alone = await side(t);
  const orphan = await importBytes(alone, second);
  t.match(orphan.images[0]?.reason, /is missing from the bundle and the store/, "imported alone, the incremental bundle names what it lacks");
});

t.test("importing twice changes nothing", async (t) => {
  const { src, refs } = await filledCache(t);
  const { bytes } = await exportToBytes(src, { refs });
  const dst = await side(t);
  const once = await importBytes(dst, bytes);
  const before = { kv: await rawRecords(dst), store: await storeContents(dst) };
  const mtimes = async () => {
    const out: Record<string, number> = {};
    const root = join(dst.dir, "blobs", "sha256");
    for (const sub of await readdir(root)) for (const f of await readdir(join(root, sub))) out[f] = (await stat(join(root, sub, f))).mtimeMs;
    return out;
  };
  const mtimesBefore = await mtimes();
  const twice = await importBytes(dst, bytes);
  t.same(twice.images, once.images);
  t.equal(twice.blobsWritten, 0, "nothing written to the store");
  t.equal(twice.blobsSkipped, once.blobsWritten, "every object found already there");
  t.same(await rawRecords(dst), before.kv, "no KV record written (versionstamps unchanged)");
  t.same(await mtimes(), mtimesBefore, "no store object rewritten");
});

t.test("--with-referrers: attached artifacts and cosign tags travel and are recorded as referrers", async (t) => {
  const src = await side(t);
  const img = indexImage("signed");
  const sbom = singleImage("sbom", { subject: img.root, artifactType: "application/spdx+json", layers: [obj('{"spdx":true}', "application/spdx+json")] });
  const sig = singleImage("sig", { layers: [obj("signature", "application/vnd.dev.cosign.simplesigning.v1+json")] });
  await pull(src, LOCAL, "signed", "v1", img);
  await pull(src, LOCAL, "signed", null, sbom);
  await recordReferrers({ kv: src.kv, store: src.store }, "local", "signed", img.root.digest, [
    { mediaType: OCI_MANIFEST, digest: sbom.root.digest, size: sbom.root.bytes.byteLength, artifactType: "application/spdx+json" },
  ]);
  await pull(src, LOCAL, "signed", `sha256-${img.root.digest.slice(7)}.sig`, sig);

  const without = await exportToBytes(src, { refs: ["local/signed:v1"] });
  t.equal(without.summary.images.length, 1, "without the flag, the image alone");
  const { bytes, summary } = await exportToBytes(src, { refs: ["local/signed:v1"], withReferrers: true });
  t.same(summary.images.map((i) => i.ref), [
    "127.0.0.1:5999/signed:v1",
    `127.0.0.1:5999/signed@${sbom.root.digest}`,
    `127.0.0.1:5999/signed:sha256-${img.root.digest.slice(7)}.sig`,
  ]);
  const dst = await side(t);
  const result = await importBytes(dst, bytes);
  t.same(result.images.map((i) => i.status), ["ok", "ok", "ok"]);
  t.same(await records(dst), await records(src), "the same records, the referrers list included");
  const before = await rawRecords(dst);
  await importBytes(dst, bytes);
  t.same(await rawRecords(dst), before, "a second import records nothing again (the referrers list neither)");
});

t.test("memory stays bounded: export and import of a 256 MiB blob", async (t) => {
  const src = await side(t);
  const size = 256 * MiB;
  // The layer goes into the store in pieces, as a download does, never whole in memory.
  const hash = createHash("sha256");
  const seed = randomBytes(4 * MiB);
  for (let i = 0; i < size / (4 * MiB); i++) {
    const p = Buffer.from(seed);
    p.writeUInt32BE(i, 0);
    hash.update(p);
  }
  const layerDigest = `sha256:${hash.digest("hex")}` as Digest;
  const upload = await src.store.begin(layerDigest);
  for (let i = 0; i < size / (4 * MiB); i++) {
    const p = Buffer.from(seed);
    p.writeUInt32BE(i, 0);
    await upload.write(p);
  }
  await upload.commit();
  const layer: Obj = { digest: layerDigest, bytes: new Uint8Array(0), mediaType: "application/vnd.oci.image.layer.v1.tar" };
  const config = obj('{"architecture":"amd64","os":"linux"}', "application/vnd.oci.image.config.v1+json");
  const manifest = obj(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc(config), layers: [{ mediaType: layer.mediaType, digest: layer.digest, size }] }), OCI_MANIFEST);
  await pull(src, LOCAL, "big", "v1", { root: manifest, manifests: [manifest], blobs: [config] });
  await src.kv.write(kvKeys.link("local", "big", layerDigest), { linkedAt: Date.now() });
  await src.kv.write(kvKeys.blob(layerDigest), { size, storedAt: Date.now() });

  const file = join(src.dir, "big.tar");
  // The hashers a command uses: sha256 in worker threads (started before the baseline is taken).
  const hashers = await WorkerHasherFactory.start(2, nodeRuntime.spawnWorker!);
  t.teardown(() => hashers.close());
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const base = process.memoryUsage().rss;
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  t.teardown(() => clearInterval(sampler));

  let started = performance.now();
  const summary = await exportBundle(deps(src), { refs: ["local/big:v1"], since: null, withReferrers: false }, Writable.toWeb(createWriteStream(file)) as WritableStream<Uint8Array>, silentProgress, quiet);
  t.equal(summary.images[0]?.status, "ok");
  const exportPeak = peak - base;
  const exportMs = performance.now() - started;
  const dst = await side(t);
  started = performance.now();
  const result = await importBundle(
    importDeps(dst, hashers),
    { stream: Readable.toWeb(createReadStream(file, { highWaterMark: 256 * 1024 })) as ReadableStream<Uint8Array>, size: (await stat(file)).size },
    silentProgress,
    quiet,
  );
  clearInterval(sampler);
  const importMs = performance.now() - started;
  const growth = peak - base;
  t.comment(`256 MiB blob: RSS growth ${(exportPeak / MiB).toFixed(1)} MiB during export, ${(growth / MiB).toFixed(1)} MiB peak through export and import`);
  const rate = (ms: number) => `${((size / MiB) / (ms / 1000)).toFixed(0)} MiB/s`;
  t.comment(`export ${rate(exportMs)}, import ${rate(importMs)} (sha256 in worker threads, fs store)`);
  t.same(result.images, [{ ref: "127.0.0.1:5999/big:v1", status: "ok" }]);
  t.equal((await dst.store.stat(layerDigest))?.size, size, "the blob arrived (verified against its digest on the way in)");
  t.equal(result.blobsWritten, 3);
  // What this guards is that the blob never sits whole in memory: that would grow RSS by its
  // 256 MiB. A tighter bound would test V8's collection timing in this test process instead (its
  // default young generation alone holds up to 48 MiB of garbage; growth was 40-70 MiB here), so
  // the footprint figures belong to `npm run bench` (the air-gap rows), not to this test.
  t.ok(growth < size / 2, `RSS grew ${(growth / MiB).toFixed(1)} MiB, under half the blob's 256 MiB: it is never held whole`);
});

t.test("a bundle skopeo wrote (oci-archive) imports, named by a full reference", async (t) => {
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const image = images.find((i) => i.kind === "oci-index")!;
  const dst = await side(t);
  const file = join(dst.dir, "skopeo.tar");
  const ref = `127.0.0.1:5999/${image.repo}:v1`;
  await run("skopeo", ["copy", "--all", "--preserve-digests", image.source, `oci-archive:${file}:${ref}`]);
  const result = await importBundle(importDeps(dst), { stream: Readable.toWeb(createReadStream(file)) as ReadableStream<Uint8Array>, size: null }, silentProgress, quiet);
  t.same(result.images, [{ ref, status: "ok" }], JSON.stringify(result.problems));
  const tag = (await records(dst))[JSON.stringify(["tag", "local", image.repo, "v1"])] as { digest: string };
  t.equal(tag.digest, image.digest, "the tag names the index skopeo copied");
  for (const b of image.blobs) t.ok((await records(dst))[JSON.stringify(["link", "local", image.repo, b.digest])], `blob ${b.digest.slice(7, 19)} linked`);
});

t.test("export fails whole, saying why, when the output breaks or the --since bundle is cut short", async (t) => {
  const { src, refs } = await filledCache(t);
  let taken = 0;
  const breaking = new WritableStream<Uint8Array>({
    write(c) {
      taken += c.byteLength;
      if (taken > 20_000) throw new Error("No space left on device");
    },
  });
  const { progress, items } = recordingProgress();
  await t.rejects(exportBundle(deps(src), { refs, since: null, withReferrers: false }, breaking, progress, quiet), {
    name: "Error",
    message: /the bundle could not be written: No space left on device/,
  });
  t.match(items.find((i) => i.end?.startsWith("failed"))?.end, /No space left on device/, "the image being written is marked failed");

  const { bytes } = await exportToBytes(src, { refs });
  const out = new WritableStream<Uint8Array>();
  await t.rejects(exportBundle(deps(src), { refs, since: streamOf(bytes.subarray(0, bytes.length - 2000)), withReferrers: false }, out, silentProgress, quiet), {
    message: /--since: the previous bundle cannot be read whole/,
  });
});
