// The BlobStore contract (test/support/blob-store-contract.ts) for the filesystem store and
// for the S3 store, with a spool and without a disk, against an in-memory S3; then what only
// the S3 store does (part failures, one request for small blobs, the stale-upload sweep).
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Digest } from "../../src/registry/reference.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { S3BlobStore } from "../../src/storage/s3/s3-store.ts";
import { blobStoreContract, type StoreUnderTest } from "../support/blob-store-contract.ts";
import { FakeS3 } from "../support/fake-s3.ts";

const digestOf = (bytes: Uint8Array): Digest => `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Digest;
const MiB = 1024 * 1024;

async function fsStore(dir: string): Promise<StoreUnderTest> {
  const root = join(dir, `fs-${Math.random().toString(36).slice(2)}`);
  const store = await FsBlobStore.open(root);
  return {
    store,
    readers: true,
    leftovers: () => readdir(join(root, "_uploads")),
    breakIt: () => rm(root, { recursive: true, force: true }),
    close: async () => {},
  };
}

async function s3Store(dir: string | null, fake = new FakeS3("bucket")): Promise<StoreUnderTest & { store: S3BlobStore; fake: FakeS3 }> {
  const spoolDir = dir === null ? null : join(dir, `spool-${Math.random().toString(36).slice(2)}`);
  const store = await S3BlobStore.open({ bucket: "bucket", prefix: "cache", endpoint: "http://127.0.0.1:9", region: "us-east-1", spoolDir, client: fake.client });
  return {
    store,
    fake,
    readers: spoolDir !== null,
    leftovers: async () => [
      ...(spoolDir === null ? [] : await readdir(spoolDir)),
      ...[...fake.uploads.values()].map((u) => `multipart upload of ${u.key}`),
    ],
    breakIt: async () => void (fake.bucketExists = false),
    close: async () => store.close(),
  };
}

const dir = await mkdtemp(join(tmpdir(), "stowage-store-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

await blobStoreContract(t, "filesystem", () => fsStore(dir));
await blobStoreContract(t, "S3 with a spool (fake S3)", () => s3Store(dir));
await blobStoreContract(t, "S3 without a disk (fake S3)", () => s3Store(null));

for (const [label, spool] of [["with a spool", dir], ["without a disk", null]] as const) {
  t.test(`S3 ${label}: a failed part upload fails the commit, shows nothing and aborts the multipart upload`, async (tt) => {
    const s = await s3Store(spool);
    tt.teardown(() => s.close());
    const bytes = randomBytes(3 * 8 * MiB + 1);
    const digest = digestOf(bytes);
    const upload = await s.store.begin(digest);
    s.fake.failing.add("UploadPartCommand");
    // The writes themselves succeed: clients are still served from the bytes received.
    for (let o = 0; o < bytes.byteLength; o += MiB) await upload.write(bytes.subarray(o, o + MiB));
    await tt.rejects(upload.commit(), { message: /UploadPartCommand failed/ }, "commit reports the part failure");
    tt.equal(await s.store.stat(digest), null, "nothing under the key");
    tt.same(await s.leftovers(), [], "the multipart upload was aborted and the spool removed");
    tt.notOk(s.fake.sent.includes("CompleteMultipartUploadCommand"), "never completed");
  });

  t.test(`S3 ${label}: a blob under one part is one PutObject, a larger one a multipart upload`, async (tt) => {
    const s = await s3Store(spool);
    tt.teardown(() => s.close());
    const small = randomBytes(8 * MiB - 1);
    const upload = await s.store.begin(digestOf(small));
    await upload.write(small);
    await upload.commit();
    tt.same(s.fake.sent.filter((c) => c !== "HeadBucketCommand" && c !== "ListMultipartUploadsCommand"), ["PutObjectCommand"], "one request");
    s.fake.sent.length = 0;
    const large = randomBytes(8 * MiB + 1);
    const second = await s.store.begin(digestOf(large));
    await second.write(large);
    await second.commit();
    tt.same(s.fake.sent, ["CreateMultipartUploadCommand", "UploadPartCommand", "UploadPartCommand", "CompleteMultipartUploadCommand"], "two parts");
  });
}

t.test("S3: the start-up sweep aborts multipart uploads older than an hour under the store's prefix only", async (tt) => {
  const fake = new FakeS3("bucket");
  const old = new Date(Date.now() - 2 * 60 * 60 * 1000);
  fake.uploads.set("stale", { key: "cache/blobs/sha256/00", initiated: old, parts: new Map() });
  fake.uploads.set("recent", { key: "cache/blobs/sha256/01", initiated: new Date(), parts: new Map() });
  fake.uploads.set("others", { key: "elsewhere/blobs/sha256/00", initiated: old, parts: new Map() });
  const s = await s3Store(null, fake);
  tt.teardown(() => s.close());
  for (let i = 0; i < 100 && fake.uploads.has("stale"); i++) await new Promise((r) => setTimeout(r, 10));
  tt.same([...fake.uploads.keys()].sort(), ["others", "recent"], "only the stale one under the prefix is aborted");
});

// A `stowage gc`, `import` or `export` opens the store a running server uses: opening it must not
// take the files of the server's downloads in progress away from under them (it once emptied
// _uploads, and the server's download then failed mid-blob). Files a crash left (old) still go.
for (const kind of ["filesystem", "S3 spool"] as const) {
  t.test(`${kind}: opening the store again keeps another process's uploads in progress, and removes those a crash left`, async (tt) => {
    const root = join(dir, `reopen-${Math.random().toString(36).slice(2)}`);
    const fake = new FakeS3("bucket");
    const spoolDir = join(root, "spool");
    const openStore = () =>
      kind === "filesystem"
        ? FsBlobStore.open(root)
        : S3BlobStore.open({ bucket: "bucket", prefix: "cache", endpoint: "http://127.0.0.1:9", region: "us-east-1", spoolDir, client: fake.client });
    const uploadDir = kind === "filesystem" ? join(root, "_uploads") : spoolDir;
    const first = await openStore();
    const bytes = randomBytes(3 * MiB + 5);
    const digest = digestOf(bytes);
    const upload = await first.begin(digest);
    await upload.write(bytes.subarray(0, MiB));
    const crashed = join(uploadDir, "left-by-a-crash");
    await writeFile(crashed, "partial");
    const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await utimes(crashed, twoHoursAgo, twoHoursAgo);

    const second = await openStore(); // as `stowage gc` does next to the server
    tt.same((await readdir(uploadDir)).includes("left-by-a-crash"), false, "an upload file untouched for two hours is removed");
    await upload.write(bytes.subarray(MiB));
    await upload.commit();
    const read = await first.open(digest);
    tt.ok(read, "the upload in progress committed");
    tt.equal(digestOf(new Uint8Array(await new Response(read!).arrayBuffer())), digest, "with every byte");
    await (second as { close?: () => Promise<void> }).close?.();
    await (first as { close?: () => Promise<void> }).close?.();
  });
}
