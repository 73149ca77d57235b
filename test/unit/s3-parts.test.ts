// How the S3 store sends a large blob's parts (against the in-memory S3): a part that fails
// for a passing reason is tried again, one S3 refuses is not, and with a spool no part goes up
// until the blob is received, then two at a time.
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Digest } from "../../src/registry/reference.ts";
import { S3BlobStore } from "../../src/storage/s3/s3-store.ts";
import { FakeS3 } from "../support/fake-s3.ts";

const MiB = 1024 * 1024;
const digestOf = (bytes: Uint8Array): Digest => `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Digest;

const dir = await mkdtemp(join(tmpdir(), "stowage-s3-parts-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

type Send = FakeS3["send"];
type Command = Parameters<Send>[0];
/** A fake S3 whose requests go through `around` first. */
function fakeWith(around: (name: string, send: () => Promise<unknown>, command: Command) => Promise<unknown>): FakeS3 {
  const fake = new FakeS3("bucket");
  const send: Send = fake.send.bind(fake);
  fake.send = (command, options) => around(command.constructor.name, () => send(command, options), command);
  return fake;
}

async function open(fake: FakeS3, spool: boolean): Promise<S3BlobStore> {
  const spoolDir = spool ? join(dir, `spool-${Math.random().toString(36).slice(2)}`) : null;
  return S3BlobStore.open({ bucket: "bucket", prefix: "cache", endpoint: "http://127.0.0.1:9", region: "us-east-1", spoolDir, client: fake.client });
}

async function store(s: S3BlobStore, bytes: Uint8Array): Promise<Digest> {
  const digest = digestOf(bytes);
  const upload = await s.begin(digest);
  for (let o = 0; o < bytes.byteLength; o += MiB) await upload.write(bytes.subarray(o, o + MiB));
  await upload.commit();
  return digest;
}

const s3Error = (name: string, status: number) => Object.assign(new Error(`${name} (injected)`), { name, $metadata: { httpStatusCode: status } });

for (const spool of [true, false]) {
  const label = spool ? "with a spool" : "without a disk";

  t.test(`S3 ${label}: a part that fails once with a 503 is sent again and the blob is stored whole`, async (tt) => {
    let failed = 0;
    const fake = fakeWith(async (name, send) => {
      if (name === "UploadPartCommand" && failed === 0) {
        failed++;
        throw s3Error("ServiceUnavailable", 503);
      }
      return send();
    });
    const s = await open(fake, spool);
    tt.teardown(() => s.close());
    const bytes = randomBytes(2 * 8 * MiB + 123);
    const digest = await store(s, bytes);
    tt.equal(failed, 1, "one part failed once");
    tt.ok(Buffer.from(fake.objects.get(s.keyOf(digest)) ?? []).equals(bytes), "the stored object is the blob");
  });

  t.test(`S3 ${label}: a part S3 refuses (400) is not sent again; the commit fails and nothing is stored`, async (tt) => {
    const tried: unknown[] = [];
    const fake = fakeWith(async (name, send, command) => {
      if (name === "UploadPartCommand") {
        tried.push(command.input.PartNumber);
        throw s3Error("InvalidArgument", 400);
      }
      return send();
    });
    const s = await open(fake, spool);
    tt.teardown(() => s.close());
    const bytes = randomBytes(8 * MiB + 1);
    await tt.rejects(store(s, bytes), { name: "InvalidArgument" });
    tt.ok(tried.length > 0, "a part was sent");
    tt.same(tried, [...new Set(tried)], "no part was sent twice");
    tt.equal(await s.stat(digestOf(bytes)), null, "nothing under the key");
  });
}

t.test("S3 with a spool: no part goes up while the blob is still being received (the download keeps the cores)", async (tt) => {
  const fake = new FakeS3("bucket");
  const s = await open(fake, true);
  tt.teardown(() => s.close());
  const bytes = randomBytes(3 * 8 * MiB);
  const upload = await s.begin(digestOf(bytes));
  for (let o = 0; o < bytes.byteLength; o += MiB) await upload.write(bytes.subarray(o, o + MiB));
  await new Promise((r) => setTimeout(r, 50));
  tt.notOk(fake.sent.includes("UploadPartCommand"), "no part before the commit");
  await upload.commit();
  tt.equal(fake.sent.filter((c) => c === "UploadPartCommand").length, 3, "three parts at the commit");
});

t.test("S3 with a spool: two parts go up at once while S3 is slow", async (tt) => {
  let running = 0;
  let most = 0;
  const fake = fakeWith(async (name, send) => {
    if (name !== "UploadPartCommand") return send();
    most = Math.max(most, ++running);
    try {
      await new Promise((r) => setTimeout(r, 100));
      return await send();
    } finally {
      running--;
    }
  });
  const s = await open(fake, true);
  tt.teardown(() => s.close());
  const bytes = randomBytes(6 * 8 * MiB);
  const digest = await store(s, bytes);
  tt.equal(most, 2, "parts in flight at most");
  tt.ok(Buffer.from(fake.objects.get(s.keyOf(digest)) ?? []).equals(bytes), "the stored object is the blob");
});
