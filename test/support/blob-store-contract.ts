// What every BlobStore must do, as one suite each store runs (the filesystem store, the S3
// store with and without a spool against a fake S3, and against Ceph RGW in test/e2e/s3.test.ts).
import type { Test } from "tap";
import { createHash, randomBytes } from "node:crypto";
import type { Digest } from "../../src/registry/reference.ts";
import type { BlobStore, BlobUpload } from "../../src/storage/blob-store.ts";

export type StoreUnderTest = {
  store: BlobStore;
  /** Upload files and unfinished multipart uploads still there; none once every upload ended. */
  leftovers(): Promise<string[]>;
  /** Whether uploads offer a reader of what was written (not S3 without a local disk). */
  readers: boolean;
  /** Makes the store unusable, so check() must fail; absent where a test cannot do that. */
  breakIt?: () => Promise<void>;
  close(): Promise<void>;
};

/** Larger than two S3 parts (8 MiB each) and not a multiple of anything in use. */
const LARGE = 2 * 8 * 1024 * 1024 + 12_345;

const digestOf = (bytes: Uint8Array): Digest => `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Digest;

async function readAll(stream: ReadableStream<Uint8Array> | null): Promise<Uint8Array | null> {
  return stream ? new Uint8Array(await new Response(stream).arrayBuffer()) : null;
}

/** Writes `bytes` in odd-sized chunks with several writes in flight at once, as a fetch does. */
async function writeInChunks(upload: BlobUpload, bytes: Uint8Array, chunk = 65_537): Promise<void> {
  let inFlight: Promise<void>[] = [];
  for (let o = 0; o < bytes.byteLength; o += chunk) {
    inFlight.push(upload.write(bytes.subarray(o, o + chunk)));
    if (inFlight.length === 8) {
      await Promise.all(inFlight);
      inFlight = [];
    }
  }
  await Promise.all(inFlight);
}

/** Equal bytes, reported without dumping megabytes on failure. */
function sameBytes(t: Test, got: Uint8Array | null, want: Uint8Array, what: string): void {
  if (got === null) return void t.fail(`${what}: the store has no such blob`);
  t.equal(got.byteLength, want.byteLength, `${what}: length`);
  t.ok(Buffer.from(got).equals(Buffer.from(want)), `${what}: bytes`);
}

/** Runs the suite as subtests of `t`, each on a store fresh from `open`. */
export function blobStoreContract(t: Test, name: string, open: () => Promise<StoreUnderTest>): Promise<unknown> {
  return t.test(`BlobStore contract: ${name}`, async (suite) => {
    const withStore = (title: string, body: (tt: Test, s: StoreUnderTest) => Promise<void>) =>
      suite.test(title, async (tt) => {
        const s = await open();
        tt.teardown(() => s.close());
        await body(tt, s);
      });

    await withStore("a missing digest: stat and open answer null", async (tt, { store }) => {
      const digest = digestOf(randomBytes(16));
      tt.equal(await store.stat(digest), null, "stat");
      tt.equal(await store.open(digest), null, "open");
      tt.equal(await store.open(digest, { start: 0, end: 3 }), null, "ranged open");
    });

    await withStore("an upload is invisible until commit, then reads back whole", async (tt, { store, leftovers }) => {
      const bytes = randomBytes(300_001);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await writeInChunks(upload, bytes);
      tt.equal(await store.stat(digest), null, "stat before commit: nothing (a caller verifies before committing)");
      tt.equal(await store.open(digest), null, "open before commit: nothing");
      await upload.commit();
      tt.same(await store.stat(digest), { size: bytes.byteLength }, "stat after commit");
      sameBytes(tt, await readAll(await store.open(digest)), bytes, "read after commit");
      tt.same(await leftovers(), [], "no upload files or open multipart uploads left");
    });

    await withStore("a blob of several S3 parts: whole and ranged reads, across part edges", async (tt, { store, leftovers }) => {
      const bytes = randomBytes(LARGE);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await writeInChunks(upload, bytes, 1_000_003);
      await upload.commit();
      sameBytes(tt, await readAll(await store.open(digest)), bytes, "whole blob");
      const part = 8 * 1024 * 1024;
      for (const [start, end] of [[0, 0], [part - 10, part + 10], [2 * part - 1, 2 * part], [LARGE - 5, LARGE - 1], [0, LARGE - 1]] as const) {
        sameBytes(tt, await readAll(await store.open(digest, { start, end })), bytes.subarray(start, end + 1), `bytes ${start}-${end}`);
      }
      tt.same(await leftovers(), [], "nothing left over");
    });

    await withStore("an empty blob", async (tt, { store }) => {
      const digest = digestOf(new Uint8Array(0));
      const upload = await store.begin(digest);
      await upload.commit();
      tt.same(await store.stat(digest), { size: 0 }, "stat: 0 bytes");
      sameBytes(tt, await readAll(await store.open(digest)), new Uint8Array(0), "read");
    });

    await withStore("put stores verified bytes in one step; putting them again is harmless", async (tt, { store, leftovers }) => {
      const bytes = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, note: "a manifest" }));
      const digest = digestOf(bytes);
      await store.put(digest, bytes);
      tt.same(await store.stat(digest), { size: bytes.byteLength }, "stat");
      await store.put(digest, bytes);
      sameBytes(tt, await readAll(await store.open(digest)), bytes, "read after the second put");
      tt.same(await leftovers(), [], "nothing left over");
    });

    await withStore("the upload's reader follows the writes and outlives the commit", async (tt, { store, readers }) => {
      const bytes = randomBytes(200_000);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await upload.write(bytes.subarray(0, 100_000));
      const reader = await upload.openReader();
      if (!readers) {
        tt.equal(reader, null, "no reader where there is no local disk");
        await upload.abort();
        return;
      }
      if (!reader) return void tt.fail("no reader");
      sameBytes(tt, await reader.read(0, 100_000), bytes.subarray(0, 100_000), "what was written so far");
      await upload.write(bytes.subarray(100_000));
      sameBytes(tt, await reader.read(150_000, 50_000), bytes.subarray(150_000), "bytes written after the reader opened");
      await upload.commit();
      sameBytes(tt, await reader.read(0, 1000), bytes.subarray(0, 1000), "still readable after commit");
      await reader.close();
    });

    await withStore("abort leaves nothing behind: no blob, no upload file, no multipart upload", async (tt, { store, leftovers }) => {
      const bytes = randomBytes(LARGE);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await writeInChunks(upload, bytes, 1_000_003); // parts are uploading by now
      await upload.abort();
      await upload.abort();
      tt.equal(await store.stat(digest), null, "no blob");
      tt.same(await leftovers(), [], "no upload files or open multipart uploads");
      await tt.rejects(upload.commit(), "commit after abort throws");
    });

    await withStore("commit is final: a second commit throws, a later abort keeps the blob", async (tt, { store }) => {
      const bytes = randomBytes(1000);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await upload.write(bytes);
      await upload.commit();
      await tt.rejects(upload.commit(), "a second commit throws");
      await upload.abort();
      sameBytes(tt, await readAll(await store.open(digest)), bytes, "the blob is still there");
    });

    await withStore("concurrent writers of one digest: each has its own upload, the blob ends up whole", async (tt, { store, leftovers }) => {
      const bytes = randomBytes(LARGE);
      const digest = digestOf(bytes);
      const [a, b, c] = await Promise.all([store.begin(digest), store.begin(digest), store.begin(digest)]);
      await Promise.all([writeInChunks(a!, bytes, 999_999), writeInChunks(b!, bytes, 77_777), writeInChunks(c!, bytes.subarray(0, 5_000_000))]);
      await c!.abort(); // one writer gives up (its bytes failed verification, say)
      await Promise.all([a!.commit(), b!.commit()]);
      sameBytes(tt, await readAll(await store.open(digest)), bytes, "the blob");
      tt.same(await leftovers(), [], "no upload files or open multipart uploads left");
    });

    await withStore("list() shows every stored object with its size and time, and no upload in progress", async (tt, { store }) => {
      const started = Date.now();
      const small = new TextEncoder().encode(`{"a manifest":${Math.random()}}`);
      const blobs = [randomBytes(10), randomBytes(70_000), randomBytes(1), randomBytes(4096)];
      await store.put(digestOf(small), small);
      for (const b of blobs) {
        const upload = await store.begin(digestOf(b));
        await upload.write(b);
        await upload.commit();
      }
      const pending = randomBytes(5000);
      const open = await store.begin(digestOf(pending));
      await open.write(pending);
      const listed = new Map<string, { size: number; modifiedAt: number }>();
      for await (const o of store.list()) listed.set(o.digest, o);
      const want = [small, ...blobs];
      tt.same([...listed.keys()].sort(), want.map(digestOf).sort(), "exactly the committed objects (not the upload in progress)");
      for (const b of want) tt.equal(listed.get(digestOf(b))?.size, b.byteLength, `size of a ${b.byteLength}-byte object`);
      for (const o of listed.values()) {
        // Clocks of a remote store may differ from ours by a little.
        tt.ok(o.modifiedAt > started - 120_000 && o.modifiedAt < Date.now() + 120_000, `written just now (${new Date(o.modifiedAt).toISOString()})`);
      }
      await open.abort();
    });

    await withStore("delete() removes an object, and a missing one quietly", async (tt, { store }) => {
      const keep = randomBytes(3000);
      const gone = randomBytes(2000);
      for (const b of [keep, gone]) await store.put(digestOf(b), b);
      await store.delete(digestOf(gone));
      tt.equal(await store.stat(digestOf(gone)), null, "stat: gone");
      tt.equal(await store.open(digestOf(gone)), null, "open: gone");
      await store.delete(digestOf(gone));
      await store.delete(digestOf(randomBytes(8)));
      tt.pass("deleting an absent object does not throw");
      const listed: string[] = [];
      for await (const o of store.list()) listed.push(o.digest);
      tt.same(listed, [digestOf(keep)], "the other object is still listed");
      sameBytes(tt, await readAll(await store.open(digestOf(keep))), keep, "and still readable");
    });

    await withStore("a reader that opened a blob before it was deleted gets its bytes or an error, never other bytes", async (tt, { store }) => {
      const bytes = randomBytes(LARGE);
      const digest = digestOf(bytes);
      const upload = await store.begin(digest);
      await writeInChunks(upload, bytes, 1_000_003);
      await upload.commit();
      const stream = await store.open(digest);
      if (!stream) return void tt.fail("no stream");
      const reader = stream.getReader();
      const first = await reader.read();
      await store.delete(digest);
      const parts: Uint8Array[] = first.value ? [first.value] : [];
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parts.push(value);
        }
        sameBytes(tt, new Uint8Array(Buffer.concat(parts)), bytes, "the whole blob, as it was");
      } catch (err) {
        tt.ok(err instanceof Error, `a clean error: ${String(err)}`);
      }
      tt.equal(await store.stat(digest), null, "gone for the next reader");
    });

    await withStore("check() passes on a working store and fails on a broken one", async (tt, s) => {
      await s.store.check();
      tt.pass("check() passes");
      const free = await s.store.freeSpace();
      tt.ok(free === null || (Number.isFinite(free) && free >= 0), `freeSpace() is a byte count or null (${free})`);
      if (!s.breakIt) return;
      await s.breakIt();
      await tt.rejects(s.store.check(), "check() throws once the store is unusable");
    });
  });
}
