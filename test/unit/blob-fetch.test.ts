// The single-flight blob download (src/cache/blob-fetch.ts) driven directly:
// an upstream whose bodies the test feeds (or breaks) piece by piece, an
// in-memory store that fails on demand, and the inline hasher, held back where
// a test needs verification to wait. No server and no sockets, so each state
// and each turn of the download is reached on purpose, not by timing.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobTooLargeError } from "../../src/cache/blob-bounds.ts";
import { BlobFetch, type BlobFetchDeps } from "../../src/cache/blob-fetch.ts";
import { FetchLeases } from "../../src/cache/fetch-lease.ts";
import { DigestMismatchError, StoreError } from "../../src/cache/fetch-errors.ts";
import { BlobRecord, LinkRecord } from "../../src/cache/records.ts";
import { type HasherFactory, InlineHasherFactory } from "../../src/digest/hasher.ts";
import { WorkerHasherFactory } from "../../src/digest/worker-pool.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import type { ByteRange } from "../../src/registry/range.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { BlobStore, BlobUpload } from "../../src/storage/blob-store.ts";
import type { UpstreamClient, UpstreamReply } from "../../src/upstream/client.ts";
import { UpstreamError } from "../../src/upstream/upstream-error.ts";
import { sha256 } from "../support/oci.ts";
import { sleep, waitFor, within } from "../support/wait.ts";

const MiB = 1024 * 1024;

// ------------------------------------------------------------- fakes

/** A response body the test feeds: bytes pushed, then ended or broken. */
class FedBody {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private closed = false;
  readonly stream = new ReadableStream<Uint8Array>({
    start: (controller) => {
      this.controller = controller;
    },
  });

  /** Pushes `bytes` in 256 KiB pieces, as a socket would deliver them. */
  push(bytes: Uint8Array): void {
    for (let at = 0; at < bytes.byteLength; at += 256 * 1024) this.controller.enqueue(bytes.subarray(at, at + 256 * 1024));
  }

  end(): void {
    if (!this.closed) this.controller.close();
    this.closed = true;
  }

  /** The rest of the body, then its end. */
  finish(bytes: Uint8Array): void {
    this.push(bytes);
    this.end();
  }

  /** Every byte pushed was read (by the fetch). */
  get drained(): boolean {
    return this.controller.desiredSize === 1;
  }

  /** Breaks the body: reads that did not get their bytes yet fail with `reason`. */
  fail(reason: unknown): void {
    if (!this.closed) this.controller.error(reason);
    this.closed = true;
  }
}

type Call = { method: "GET" | "HEAD"; fromByte: number };

/** An upstream client whose answers the test scripts, one per request, in order. */
class FakeUpstream {
  readonly calls: Call[] = [];
  readonly aborted: unknown[] = [];
  private readonly answers: Array<(call: Call) => UpstreamReply | Promise<UpstreamReply>> = [];

  next(answer: (call: Call) => UpstreamReply | Promise<UpstreamReply>): void {
    this.answers.push(answer);
  }

  /** Answers the next request with `body` and these headers. */
  reply(body: FedBody | null, headers: Record<string, string> = {}, status = 200): UpstreamReply {
    return {
      response: new Response(body?.stream ?? null, { status, headers }),
      abort: (reason) => {
        this.aborted.push(reason);
        body?.fail(reason);
      },
    };
  }

  /** A 206 answer with all of `bytes` from `fromByte` on, as to a Range request. */
  rest(bytes: Uint8Array, fromByte: number): UpstreamReply {
    const body = new FedBody();
    body.finish(bytes.subarray(fromByte));
    return this.reply(body, { "content-range": `bytes ${fromByte}-${bytes.length - 1}/${bytes.length}` }, 206);
  }

  readonly client = {
    upstream: { name: "up" },
    blob: async (_repo: string, _digest: Digest, method: "GET" | "HEAD", _log: unknown, fromByte = 0) => {
      const call = { method, fromByte };
      this.calls.push(call);
      const answer = this.answers.shift();
      if (!answer) throw new Error(`unexpected upstream ${method} from byte ${fromByte}`);
      return answer(call);
    },
  } as unknown as UpstreamClient;
}

/** A store in memory; uploads keep their bytes readable (the spool) unless `spool` is off. */
class MemoryStore implements BlobStore {
  readonly description = "memory";
  readonly blobs = new Map<Digest, Buffer>();
  readonly opened: Array<ByteRange | undefined> = [];
  begun = 0;
  aborted = 0;
  spoolReads = 0;
  spoolsClosed = 0;
  spool = true;
  failWrites = false;
  failCommit = false;
  free: () => number | null = () => null;

  async stat(digest: Digest) {
    const blob = this.blobs.get(digest);
    return blob ? { size: blob.length } : null;
  }

  async open(digest: Digest, range?: ByteRange) {
    this.opened.push(range);
    const blob = this.blobs.get(digest);
    if (!blob) return null;
    return new Response(new Uint8Array(range ? blob.subarray(range.start, range.end + 1) : blob)).body!;
  }

  async put(digest: Digest, bytes: Uint8Array) {
    this.blobs.set(digest, Buffer.from(bytes));
  }

  async begin(digest: Digest): Promise<BlobUpload> {
    this.begun++;
    const parts: Buffer[] = [];
    return {
      spoolPath: null,
      write: async (chunk) => {
        if (this.failWrites) throw new Error("the disk is on fire");
        parts.push(Buffer.from(chunk));
      },
      openReader: async () =>
        this.spool
          ? {
            read: async (offset, length) => {
              this.spoolReads++;
              return Buffer.concat(parts).subarray(offset, offset + length);
            },
            close: async () => {
              this.spoolsClosed++;
            },
          }
          : null,
      commit: async () => {
        if (this.failCommit) throw new Error("the bucket said no");
        this.blobs.set(digest, Buffer.concat(parts));
      },
      abort: async () => {
        this.aborted++;
      },
    };
  }

  async check() {}

  async delete(digest: Digest) {
    this.blobs.delete(digest);
  }

  async *list() {
    for (const [digest, blob] of this.blobs) yield { digest, size: blob.length, modifiedAt: 0 };
  }

  async freeSpace() {
    return this.free();
  }
}

/** The inline hasher whose results wait until `release()`: followers then sit one byte short. */
function heldHashers(): { factory: HasherFactory; release: () => void } {
  const inline = new InlineHasherFactory();
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const factory: HasherFactory = {
    mode: "inline",
    readsFiles: false,
    create(algorithm) {
      const hasher = inline.create(algorithm);
      return {
        update: (chunk) => hasher.update(chunk),
        finish: async () => {
          await released;
          return hasher.finish();
        },
        discard: () => hasher.discard(),
      };
    },
    close: async () => {},
  };
  return { factory, release };
}

async function setup(t: Test, deps: Partial<BlobFetchDeps> = {}) {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const store = new MemoryStore();
  const metrics = createStowageMetrics();
  const logs: string[] = [];
  const log = createLogger("debug", (line) => logs.push(line));
  const upstream = new FakeUpstream();
  const all: BlobFetchDeps = {
    store,
    metrics,
    kv,
    hashers: new InlineHasherFactory(),
    upstreamTimeoutMs: 5_000,
    leases: new FetchLeases(kv, "test"),
    ...deps,
  };
  const start = (digest: Digest) => new BlobFetch(digest, { client: upstream.client, repo: "app" }, all, log);
  /** A fetch of `bytes` whose upstream answers with a body the test feeds (with their length by default), once ready. */
  /** A fetch of `digest` (by default the bytes' own) started on an upstream reply whose body the test feeds. */
  const begin = async (bytes: Uint8Array, headers: Record<string, string> = length(bytes), digest: Digest = sha256(bytes)) => {
    const body = new FedBody();
    upstream.next(() => upstream.reply(body, headers));
    const fetch = start(digest);
    await fetch.ready;
    return { fetch, body };
  };
  return { kv, store, metrics, logs, upstream, start, begin };
}

/** Feeds the first `n` bytes, waits until the fetch has read them all, then breaks the connection. */
async function breakAt(body: FedBody, bytes: Uint8Array, n: number): Promise<void> {
  body.push(bytes.subarray(0, n));
  await waitFor(`the fetch reading ${n} bytes`, () => body.drained);
  body.fail(new Error("connection reset"));
}

/** A client follows the fetch from the start while the rest of the body arrives, and gets `bytes` whole. */
async function followWhole(t: Test, fetch: BlobFetch, body: FedBody, bytes: Buffer, what: string): Promise<void> {
  const client = readAll(fetch.follow(0, null));
  body.finish(bytes);
  const got = await client;
  t.ok(got.error === null && got.bytes.equals(bytes), what);
}

/** A whole follower stream as a client reads it; `error` is set when it broke. */
async function readAll(stream: ReadableStream<Uint8Array>): Promise<{ bytes: Buffer; error: unknown }> {
  const parts: Buffer[] = [];
  let error: unknown = null;
  try {
    for await (const part of stream) parts.push(Buffer.from(part));
  } catch (err) {
    error = err;
  }
  return { bytes: Buffer.concat(parts), error };
}

const length = (bytes: Uint8Array) => ({ "content-length": String(bytes.byteLength) });

/**
 * Waits until the fetch has written (or received) `bytes`; a timeout says where it stood. The
 * last bytes sent may wait in a partly filled batch until more arrive, so wait for less than
 * was sent (a batch less).
 */
async function reached(fetch: BlobFetch, field: "written" | "received", bytes: number): Promise<void> {
  try {
    await waitFor(`${bytes} bytes ${field}`, () => fetch[field] >= bytes);
  } catch (err) {
    const at = { state: fetch.state, received: fetch.received, written: fetch.written, error: fetch.error?.message };
    throw new Error(`${(err as Error).message}: ${JSON.stringify(at)}`);
  }
}

// ------------------------------------------------------------- the download

t.test("a miss: connecting, streaming, verified and committed, with its KV records", async (t) => {
  const { upstream, start, store, kv, metrics, logs } = await setup(t);
  const bytes = randomBytes(3 * MiB + 123);
  const digest = sha256(bytes);
  const body = new FedBody();
  let answer!: () => void;
  upstream.next(() => new Promise((resolve) => (answer = () => resolve(upstream.reply(body, length(bytes))))));
  const fetch = start(digest);
  await waitFor("the GET sent", () => upstream.calls.length === 1);
  t.equal(fetch.state, "connecting", "connecting while the upstream has not answered");
  answer();
  await within(5_000, "ready", fetch.ready);
  t.equal(fetch.state, "streaming", "streaming once it answered");
  t.equal(fetch.size, bytes.length, "the size is the Content-Length");
  const client = readAll(fetch.follow(0, null));
  body.finish(bytes);
  await within(5_000, "settled", fetch.settled);
  t.equal(fetch.state, "committed");
  const got = await client;
  t.ok(got.error === null && got.bytes.equals(bytes), "the client got the whole blob");
  t.ok(store.blobs.get(digest)?.equals(bytes), "the store holds it");
  t.equal((await kv.read(kvKeys.blob(digest), BlobRecord))?.size, bytes.length, "a blob record with its size");
  t.ok(await kv.read(kvKeys.link("up", "app", digest), LinkRecord), "and a link for this repository");
  t.equal(metrics.blobsCommitted.get(), 1, "counted as committed");
  t.same(upstream.aborted, [], "the upstream reply was read to the end, not aborted");
  t.equal(store.spoolsClosed, 1, "the spool reader is closed once everyone is done");
  t.ok(logs.some((l) => l.includes("blob cached")), "logged");
});

t.test("followers joining mid-way get every byte", async (t) => {
  await t.test("near the live edge", async (t) => {
    const { begin } = await setup(t);
    const bytes = randomBytes(6 * MiB);
    const { fetch, body } = await begin(bytes);
    const first = readAll(fetch.follow(0, null));
    body.push(bytes.subarray(0, 2 * MiB));
    await reached(fetch, "written", MiB);
    const joining = readAll(fetch.follow(0, null));
    const ranged = readAll(fetch.follow(MiB, 5 * MiB));
    body.finish(bytes.subarray(2 * MiB));
    for (const [name, got, want] of [["the first", first, bytes], ["the one joining at 2 MiB", joining, bytes], ["a range", ranged, bytes.subarray(MiB, 5 * MiB)]] as const) {
      const { bytes: had, error } = await got;
      t.ok(error === null && had.equals(want), `${name} got its bytes`);
    }
  });

  await t.test("behind the memory window: from the spool", async (t) => {
    const { store, begin } = await setup(t);
    const bytes = randomBytes(12 * MiB);
    const { fetch, body } = await begin(bytes);
    body.push(bytes.subarray(0, 10 * MiB));
    await reached(fetch, "written", 9 * MiB);
    t.equal(store.spoolReads, 0, "nobody read the spool yet");
    const behind = fetch.follow(0, null).getReader();
    const parts = [Buffer.from((await behind.read()).value!)];
    t.ok(store.spoolReads > 0, "the first bytes came from the spool (they left memory)");
    body.finish(bytes.subarray(10 * MiB));
    for (let next = await behind.read(); !next.done; next = await behind.read()) parts.push(Buffer.from(next.value));
    t.ok(Buffer.concat(parts).equals(bytes), "and every byte after");
  });

  await t.test("behind the window without a spool: from the store once committed", async (t) => {
    const { store, begin } = await setup(t);
    store.spool = false;
    const bytes = randomBytes(12 * MiB);
    const { fetch, body } = await begin(bytes);
    body.push(bytes.subarray(0, 10 * MiB));
    await reached(fetch, "written", 9 * MiB);
    const behind = readAll(fetch.follow(MiB, null));
    await sleep(50);
    t.same(store.opened, [], "it waits for the commit");
    body.finish(bytes.subarray(10 * MiB));
    const got = await behind;
    t.ok(got.error === null && got.bytes.equals(bytes.subarray(MiB)), "then gets its bytes");
    t.same(store.opened, [{ start: MiB, end: bytes.length - 1 }], "from the store");
  });

  await t.test("behind the window without a spool, uncached: from upstream with a Range request", async (t) => {
    const { upstream, store, metrics, begin } = await setup(t);
    store.spool = false;
    store.failCommit = true;
    const bytes = randomBytes(12 * MiB);
    const { fetch, body } = await begin(bytes);
    body.push(bytes.subarray(0, 10 * MiB));
    await reached(fetch, "written", 9 * MiB);
    upstream.next((call) => upstream.rest(bytes, call.fromByte));
    const behind = readAll(fetch.follow(MiB, null));
    body.finish(bytes.subarray(10 * MiB));
    const got = await behind;
    t.equal(fetch.state, "uncached");
    t.ok(got.error === null && got.bytes.equals(bytes.subarray(MiB)), "it gets its bytes");
    t.same(upstream.calls[1], { method: "GET", fromByte: MiB }, "asked upstream from where it stood");
    t.equal(metrics.storeBypass.get({ op: "read" }), 1, "counted as a read that bypassed the store");
  });
});

t.test("the upstream fails", async (t) => {
  await t.test("before the first byte: ready rejects, nothing is begun", async (t) => {
    const { upstream, start, store, metrics } = await setup(t);
    upstream.next(() => {
      throw new UpstreamError("unreachable", "upstream up could not be reached");
    });
    const fetch = start(sha256("x"));
    t.type(await fetch.ready.then(() => null, (err: unknown) => err), UpstreamError, "ready rejects with the upstream's failure");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(store.begun, 0, "no store upload was begun");
    t.equal(metrics.fetchFailures.get({ reason: "unreachable" }), 1, "counted by reason");
  });

  await t.test("after the first byte, without a length: every follower's response breaks", async (t) => {
    const { upstream, start, store, metrics } = await setup(t);
    const bytes = randomBytes(3 * MiB);
    const body = new FedBody();
    upstream.next(() => upstream.reply(body));
    const fetch = start(sha256(bytes));
    await fetch.ready;
    t.equal(fetch.size, null, "no size known");
    const a = readAll(fetch.follow(0, null));
    const b = readAll(fetch.follow(0, null));
    await breakAt(body, bytes, 2 * MiB);
    for (const got of [await a, await b]) {
      t.type(got.error, UpstreamError, "the response breaks");
      t.ok(got.bytes.length < 2 * MiB && got.bytes.equals(bytes.subarray(0, got.bytes.length)), "after good bytes only");
    }
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(upstream.calls.length, 1, "not resumed: without a length the end cannot be told");
    t.equal(store.aborted, 1, "the upload is aborted");
    t.equal(store.blobs.size, 0, "nothing is stored");
    t.equal(metrics.fetchFailures.get({ reason: "unreachable" }), 1);
  });
});

t.test("a digest mismatch: the last byte is held back, the response breaks, nothing is kept", async (t) => {
  const { upstream, start, store, kv, metrics } = await setup(t);
  const bytes = randomBytes(2 * MiB + 5);
  const digest = sha256(Buffer.from("what the client asked for"));
  const body = new FedBody();
  upstream.next(() => upstream.reply(body, length(bytes)));
  const fetch = start(digest);
  await fetch.ready;
  const client = readAll(fetch.follow(0, null));
  body.finish(bytes);
  const got = await client;
  t.type(got.error, DigestMismatchError, "the response breaks with the mismatch");
  t.ok(got.bytes.equals(bytes.subarray(0, bytes.length - 1)), "after all but the last byte");
  t.equal(fetch.state, "failed");
  t.equal(store.aborted, 1, "the upload is aborted");
  t.equal(store.blobs.size, 0, "nothing is stored");
  t.equal(await kv.read(kvKeys.blob(digest), BlobRecord), null, "nothing is recorded");
  t.equal(metrics.fetchFailures.get({ reason: "digest-mismatch" }), 1);
});

t.test("the last byte waits for the digest", async (t) => {
  const held = heldHashers();
  const { begin } = await setup(t, { hashers: held.factory });
  const bytes = randomBytes(MiB + 7);
  const { fetch, body } = await begin(bytes);
  const reader = fetch.follow(0, null).getReader();
  let had = 0;
  const parts: Buffer[] = [];
  const reading = (async () => {
    for (;;) {
      const next = await reader.read();
      if (next.done) return;
      had += next.value.byteLength;
      parts.push(Buffer.from(next.value));
    }
  })();
  body.finish(bytes);
  await waitFor("all but the last byte", () => had === bytes.length - 1);
  await sleep(50);
  t.equal(had, bytes.length - 1, "the client sits one byte short while the hash is pending");
  t.equal(fetch.state, "streaming", "not verified yet");
  held.release();
  await reading;
  t.ok(Buffer.concat(parts).equals(bytes), "then gets the last byte");
  await fetch.settled;
  t.equal(fetch.state, "committed");
});

t.test("resume: a broken connection continues with a Range request", async (t) => {
  await t.test("from where it broke", async (t) => {
    const { upstream, store, metrics, logs, begin } = await setup(t);
    const bytes = randomBytes(5 * MiB);
    const { fetch, body: first } = await begin(bytes);
    upstream.next((call) => upstream.rest(bytes, call.fromByte));
    const client = readAll(fetch.follow(0, null));
    await breakAt(first, bytes, 3 * MiB);
    const got = await client;
    t.ok(got.error === null && got.bytes.equals(bytes), "the client never noticed");
    await fetch.settled;
    t.equal(fetch.state, "committed");
    t.same(upstream.calls, [{ method: "GET", fromByte: 0 }, { method: "GET", fromByte: 3 * MiB }], "resumed at 3 MiB");
    t.ok(store.blobs.get(sha256(bytes))?.equals(bytes), "the stored blob is whole");
    t.equal(metrics.resumes.get({ upstream: "up" }), 1, "counted");
    t.ok(logs.some((l) => l.includes("resuming with a Range request")), "logged");
  });

  await t.test("an upstream that ignores Range is read again, dropping what we have", async (t) => {
    const { upstream, begin } = await setup(t);
    const bytes = randomBytes(4 * MiB);
    const { fetch, body: first } = await begin(bytes);
    upstream.next(() => {
      const again = new FedBody();
      again.finish(bytes);
      return upstream.reply(again, length(bytes));
    });
    const client = readAll(fetch.follow(0, null));
    await breakAt(first, bytes, 2 * MiB);
    const got = await client;
    t.ok(got.error === null && got.bytes.equals(bytes), "the client gets each byte once");
    await fetch.settled;
    t.equal(fetch.state, "committed");
  });

  await t.test("a stall past the upstream timeout counts as a broken connection", async (t) => {
    const { upstream, logs, begin } = await setup(t, { upstreamTimeoutMs: 200 });
    const bytes = randomBytes(2 * MiB);
    const { fetch, body: first } = await begin(bytes);
    upstream.next((call) => upstream.rest(bytes, call.fromByte));
    const client = readAll(fetch.follow(0, null));
    first.push(bytes.subarray(0, MiB)); // then silence
    const got = await within(5_000, "the client", client);
    t.ok(got.error === null && got.bytes.equals(bytes), "the client gets the whole blob");
    t.type(upstream.aborted[0], UpstreamError, "the silent connection was aborted");
    t.match(String((upstream.aborted[0] as Error).message), /sent nothing for 0\.2 s/, "as a timeout");
    t.same(upstream.calls[1], { method: "GET", fromByte: MiB }, "and resumed");
    t.ok(logs.some((l) => l.includes("resuming with a Range request")));
  });

  await t.test("a resume answered from another offset fails the fetch", async (t) => {
    const { upstream, metrics, begin } = await setup(t);
    const bytes = randomBytes(3 * MiB);
    const { fetch, body: first } = await begin(bytes);
    upstream.next(() => upstream.reply(new FedBody(), { "content-range": `bytes 5-${bytes.length - 1}/${bytes.length}` }, 206));
    const client = readAll(fetch.follow(0, null));
    await breakAt(first, bytes, MiB);
    t.type((await client).error, UpstreamError, "the response breaks");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(metrics.fetchFailures.get({ reason: "bad-response" }), 1);
  });
});

t.test("cancel by the last client: the download goes on and is cached", async (t) => {
  const { upstream, store, begin } = await setup(t);
  const bytes = randomBytes(4 * MiB);
  const { fetch, body } = await begin(bytes);
  const reader = fetch.follow(0, null).getReader();
  body.push(bytes.subarray(0, 2 * MiB));
  await reader.read();
  await reader.cancel();
  t.equal(store.spoolsClosed, 0, "the spool stays open for the fetch");
  body.finish(bytes.subarray(2 * MiB));
  await fetch.settled;
  t.equal(fetch.state, "committed", "committed all the same");
  t.ok(store.blobs.get(sha256(bytes))?.equals(bytes), "the store holds the whole blob");
  t.same(upstream.aborted, [], "the upstream was not cut off");
  t.equal(store.spoolsClosed, 1, "the spool reader is closed once, at the end");
});

t.test("the store fails", async (t) => {
  await t.test("to commit: the clients are served, the fetch ends uncached", async (t) => {
    const { upstream, start, store, kv, metrics, logs } = await setup(t);
    store.failCommit = true;
    const bytes = randomBytes(2 * MiB);
    const digest = sha256(bytes);
    const body = new FedBody();
    upstream.next(() => upstream.reply(body, length(bytes)));
    const fetch = start(digest);
    await fetch.ready;
    await followWhole(t, fetch, body, bytes, "the client gets the whole blob");
    await fetch.settled;
    t.equal(fetch.state, "uncached");
    t.equal(await kv.read(kvKeys.blob(digest), BlobRecord), null, "nothing is recorded");
    t.equal(metrics.storeErrors.get({ op: "commit" }), 1, "counted as a store error");
    t.equal(metrics.storeBypass.get({ op: "write" }), 1, "and as a write that bypassed the store");
    t.ok(logs.some((l) => l.includes('"warn"') && l.includes("could not keep a verified blob")), "with a warning");
  });

  await t.test("to write: the fetch fails", async (t) => {
    const { upstream, store, metrics, begin } = await setup(t);
    store.failWrites = true;
    const bytes = randomBytes(2 * MiB);
    const { fetch, body } = await begin(bytes);
    const client = readAll(fetch.follow(0, null));
    body.finish(bytes);
    t.type((await client).error, StoreError, "the response breaks");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(upstream.aborted.length, 1, "the upstream is cut off");
    t.equal(metrics.fetchFailures.get({ reason: "store" }), 1);
    t.equal(metrics.storeErrors.get({ op: "write" }), 1);
  });
});

t.test("bounds", async (t) => {
  await t.test("a declared length above --max-blob-size is refused before any byte is read", async (t) => {
    const { upstream, start, store, metrics } = await setup(t, { maxBlobBytes: MiB });
    const body = new FedBody();
    upstream.next(() => upstream.reply(body, { "content-length": String(2 * MiB) }));
    const fetch = start(sha256("big"));
    const err = await fetch.ready.then(() => null, (e: unknown) => e);
    t.type(err, BlobTooLargeError);
    t.equal((err as BlobTooLargeError).status, 403, "403 DENIED: a retry cannot succeed");
    t.match((err as Error).message, /is 2 MiB, more than this Stowage's --max-blob-size of 1 MiB; it was not downloaded/);
    await fetch.settled;
    t.equal(upstream.aborted.length, 1, "the connection is closed");
    t.equal(store.begun, 0, "nothing was spooled");
    t.equal(metrics.fetchFailures.get({ reason: "too-large" }), 1);
  });

  await t.test("a body without a length is cut off once past --max-blob-size", async (t) => {
    const { upstream, start, store } = await setup(t, { maxBlobBytes: MiB });
    const body = new FedBody();
    upstream.next(() => upstream.reply(body));
    const fetch = start(sha256("big"));
    await fetch.ready;
    const client = readAll(fetch.follow(0, null));
    body.push(randomBytes(2 * MiB));
    t.type((await client).error, BlobTooLargeError, "the response breaks");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(store.aborted, 1, "the spool is dropped");
  });

  await t.test("short of the disk reserve at the start: served without spooling, uncached", async (t) => {
    const { store, metrics, logs, begin } = await setup(t, { diskReserveBytes: 100 * MiB });
    store.free = () => 101 * MiB;
    const bytes = randomBytes(2 * MiB);
    const { fetch, body } = await begin(bytes);
    t.equal(store.begun, 0, "no upload is begun");
    await followWhole(t, fetch, body, bytes, "the client gets the whole blob");
    await fetch.settled;
    t.equal(fetch.state, "uncached");
    t.equal(metrics.storeBypass.get({ op: "write" }), 1);
    t.match(logs.join("\n"), /"free":"101 MiB","needed":"2 MiB","reserve":"100 MiB"/, "the warning gives the figures");
  });

  await t.test("the disk runs short while spooling: spooling stops, the download goes on uncached", async (t) => {
    const { store, begin } = await setup(t, { diskReserveBytes: 100 * MiB, diskCheckBytes: MiB });
    let checks = 0;
    store.free = () => (checks++ === 0 ? 1000 * MiB : 50 * MiB);
    const bytes = randomBytes(6 * MiB);
    const { fetch, body } = await begin(bytes);
    t.equal(store.begun, 1, "spooling started while there was room");
    await followWhole(t, fetch, body, bytes, "the client gets the whole blob");
    await fetch.settled;
    t.ok(checks >= 2, `free space was checked again (${checks} checks)`);
    t.equal(fetch.state, "uncached");
    t.equal(store.aborted, 1, "the spool is dropped");
    t.equal(store.blobs.size, 0);
  });

  await t.test("a download counts what parallel ones still have to write", async (t) => {
    const { upstream, start, store, logs } = await setup(t, { diskReserveBytes: 100 * MiB });
    // 110 MiB free: either fits alone, not both.
    store.free = () => 110 * MiB;
    const a = randomBytes(8 * MiB);
    const b = randomBytes(8 * MiB);
    const bodyA = new FedBody();
    const bodyB = new FedBody();
    upstream.next(() => upstream.reply(bodyA, length(a)));
    upstream.next(() => upstream.reply(bodyB, length(b)));
    const first = start(sha256(a));
    await first.ready;
    const second = start(sha256(b));
    await second.ready;
    bodyA.push(a);
    bodyA.end();
    bodyB.push(b);
    bodyB.end();
    await Promise.all([first.settled, second.settled]);
    t.equal(first.state, "committed", "the first is cached");
    t.equal(second.state, "uncached", "the second, which did not fit beside it, is not");
    t.match(logs.join("\n"), /"promisedToOtherDownloads":"8 MiB"/, "the warning says why");
  });
});

t.test("another instance stored the blob: committed without a download", async (t) => {
  await t.test("linked for this repository after the upstream confirms it", async (t) => {
    const { upstream, start, kv } = await setup(t);
    const digest = sha256("stored elsewhere");
    await kv.write(kvKeys.blob(digest), { size: 16, storedAt: Date.now() });
    upstream.next(() => upstream.reply(null));
    const fetch = start(digest);
    await fetch.ready;
    t.equal(fetch.state, "committed");
    t.same(upstream.calls, [{ method: "HEAD", fromByte: 0 }], "one HEAD, no GET");
    t.ok(await kv.read(kvKeys.link("up", "app", digest), LinkRecord), "the link is recorded");
  });

  await t.test("already linked: no upstream request at all", async (t) => {
    const { upstream, start, kv } = await setup(t);
    const digest = sha256("stored and linked");
    await kv.write(kvKeys.blob(digest), { size: 17, storedAt: Date.now() });
    await kv.write(kvKeys.link("up", "app", digest), { linkedAt: Date.now() });
    const fetch = start(digest);
    await fetch.ready;
    t.equal(fetch.state, "committed");
    t.same(upstream.calls, []);
  });
});

// ------------------------------------------------------------- hashed from the spool

t.test("with a spool, the digest worker hashes the bytes from it (filesystem store)", async (t) => {
  const hashers = await WorkerHasherFactory.start(1, nodeRuntime.spawnWorker!);
  t.teardown(() => hashers.close());
  /**
   * A filesystem store in a fresh directory; its free space is `free()` when given, and the
   * fetch uses `wrap(fs)` instead when given.
   */
  const fsSetup = async (t: Test, deps: Partial<BlobFetchDeps> = {}, free?: () => number, wrap?: (fs: FsBlobStore) => BlobStore) => {
    const root = await mkdtemp(join(tmpdir(), "stowage-blob-fetch-"));
    t.teardown(() => rm(root, { recursive: true, force: true }));
    const fs = await FsBlobStore.open(root, free ? { statfs: async () => ({ bavail: free(), bsize: 1 }) } : {});
    const s = await setup(t, { store: wrap ? wrap(fs) : fs, hashers, ...deps });
    const uploadsLeft = async () => (await readdir(join(root, "_uploads"))).length;
    return { ...s, fs, uploadsLeft };
  };
  t.ok(hashers.readsFiles, "the worker factory reads files");

  await t.test("a good blob, broken mid-way and resumed: hashed right, committed", async (t) => {
    const { upstream, fs, begin } = await fsSetup(t);
    const bytes = randomBytes(5 * MiB + 77);
    const { fetch, body: first } = await begin(bytes);
    upstream.next((call) => upstream.rest(bytes, call.fromByte));
    const client = readAll(fetch.follow(0, null));
    await breakAt(first, bytes, 3 * MiB);
    const got = await client;
    t.ok(got.error === null && got.bytes.equals(bytes), "the client got the whole blob");
    await fetch.settled;
    t.equal(fetch.state, "committed");
    const stored = await fs.open(sha256(bytes));
    t.ok(stored && (await readAll(stored)).bytes.equals(bytes), "the store holds exactly the blob");
  });

  await t.test("a digest mismatch still fails every client and commits nothing", async (t) => {
    const { begin, fs, kv, uploadsLeft } = await fsSetup(t);
    const bytes = randomBytes(3 * MiB + 5);
    const digest = sha256(Buffer.from("not these bytes"));
    const { fetch, body } = await begin(bytes, length(bytes), digest);
    const clients = [readAll(fetch.follow(0, null)), readAll(fetch.follow(MiB, null))];
    body.finish(bytes);
    for (const got of await Promise.all(clients)) t.type(got.error, DigestMismatchError, "a client's response breaks with the mismatch");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(await fs.stat(digest), null, "nothing is stored under the digest");
    t.equal(await kv.read(kvKeys.blob(digest), BlobRecord), null, "nothing is recorded");
    t.equal(await uploadsLeft(), 0, "the spool is removed");
  });

  await t.test("the verified bytes are the spool's: a store that writes other bytes than it got fails the digest", async (t) => {
    // Clients get the bytes from memory, the worker hashes the file: only the file is wrong.
    const corrupting = (fs: FsBlobStore) => {
      const store = Object.create(fs) as FsBlobStore;
      store.begin = async (digest) => {
        const upload = await fs.begin(digest);
        let first = true;
        return {
          spoolPath: upload.spoolPath,
          write: (chunk) => {
            if (!first) return upload.write(chunk);
            first = false;
            const bad = Buffer.from(chunk);
            bad[0]! ^= 0xff;
            return upload.write(bad);
          },
          openReader: () => upload.openReader(),
          commit: () => upload.commit(),
          abort: () => upload.abort(),
        };
      };
      return store;
    };
    const { begin, fs, uploadsLeft } = await fsSetup(t, {}, undefined, corrupting);
    const bytes = randomBytes(2 * MiB);
    const digest = sha256(bytes);
    const { fetch, body } = await begin(bytes);
    const client = readAll(fetch.follow(0, null));
    body.finish(bytes);
    t.type((await client).error, DigestMismatchError, "the response breaks");
    await fetch.settled;
    t.equal(fetch.state, "failed");
    t.equal(await fs.stat(digest), null, "nothing is committed");
    t.equal(await uploadsLeft(), 0, "the spool is removed");
  });

  await t.test("spooling stops for lack of disk space: the rest is hashed from memory, the blob still verified", async (t) => {
    let checks = 0;
    const { begin, fs } = await fsSetup(t, { diskReserveBytes: 100 * MiB, diskCheckBytes: MiB }, () => (checks++ === 0 ? 1000 * MiB : 50 * MiB));
    const bytes = randomBytes(6 * MiB + 3);
    const { fetch, body } = await begin(bytes);
    await followWhole(t, fetch, body, bytes, "the client gets the whole blob");
    await fetch.settled;
    t.equal(fetch.state, "uncached", "verified, not cached");
    t.equal(await fs.stat(sha256(bytes)), null);
  });

  await t.test("spooling stops, and the bytes are wrong: the mismatch is still caught", async (t) => {
    let checks = 0;
    const { begin } = await fsSetup(t, { diskReserveBytes: 100 * MiB, diskCheckBytes: MiB }, () => (checks++ === 0 ? 1000 * MiB : 50 * MiB));
    const bytes = randomBytes(6 * MiB);
    const wrong = Buffer.from(bytes);
    wrong[wrong.length - 2]! ^= 1; // past where spooling stops
    const { fetch, body } = await begin(bytes);
    const client = readAll(fetch.follow(0, null));
    body.finish(wrong);
    t.type((await client).error, DigestMismatchError);
    await fetch.settled;
    t.equal(fetch.state, "failed");
  });
});
