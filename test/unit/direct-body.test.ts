// Blob bodies sent from their source (src/storage/direct-body.ts): a stored file read into a few
// reused buffers (fs-store fileSource), Node writing it to the socket itself (runtime/node-send.ts)
// with the same hooks a web stream body has (bytes counted, the end reported once, a client that
// takes nothing cut off), and the same bytes whether the source is taken or read as a stream.
import t, { type Test } from "tap";
import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { open, mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LeanResponse } from "../../src/runtime/node-fetch-classes.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { directStream, observed, readingAhead, takeDirect, type BodyHooks } from "../../src/storage/direct-body.ts";
import { fileSource, filesSending, readAheadFor } from "../../src/storage/fs/fs-store.ts";
import { followSource, type Followed } from "../../src/cache/blob-follow.ts";
import { SharedReader } from "../../src/cache/blob-plumbing.ts";
import { UploadFile } from "../../src/storage/local-file.ts";
import type { Digest } from "../../src/registry/reference.ts";

const MiB = 1024 * 1024;

async function fileOf(t: Tap, bytes: Uint8Array): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "direct-body-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, "blob");
  await writeFile(path, bytes);
  return path;
}
type Tap = Test;

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const chunk of stream) parts.push(chunk);
  return Buffer.concat(parts);
}

t.test("a file source gives exactly the range asked for, as a stream and when taken", async (t) => {
  const bytes = randomBytes(3 * MiB + 12345);
  const path = await fileOf(t, bytes);
  const whole = await readAll(directStream(fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length)));
  t.ok(whole.equals(bytes), "the whole file");
  const part = await readAll(directStream(fileSource(path, await open(path, "r"), bytes.length, 1000, 2 * MiB + 77)));
  t.ok(part.equals(bytes.subarray(1000, 2 * MiB + 77)), "a range across chunk boundaries");

  const taken = takeDirect(directStream(fileSource(path, await open(path, "r"), bytes.length, 5, bytes.length)));
  t.ok(taken, "a file body can be taken by the runtime");
  const parts: Buffer[] = [];
  for (let c = await taken!.source.read(); c; c = await taken!.source.read()) parts.push(Buffer.from(c));
  t.ok(Buffer.concat(parts).equals(bytes.subarray(5)), "the taken source reads the same bytes");
});

t.test("a sent file goes out through a few reused buffers, not a fresh one per chunk", async (t) => {
  const bytes = randomBytes(16 * MiB);
  const path = await fileOf(t, bytes);
  const source = fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length);
  const buffers = new Set<ArrayBufferLike>();
  const out: Buffer[] = [];
  for (let c = await source.read(); c; c = await source.read()) {
    buffers.add(c.buffer);
    out.push(Buffer.from(c)); // copied, as the socket would, before handing it back
    source.recycle?.(c);
  }
  t.ok(Buffer.concat(out).equals(bytes), "the bytes");
  t.ok(buffers.size <= 4, `16 MiB in ${buffers.size} buffers`);
});

t.test("reads ahead: two while few files are sent, one for a busy server, none for a crowd", async (t) => {
  t.same([1, 8, 9, 32, 33, 100].map(readAheadFor), [2, 2, 1, 1, 0, 0]);
});

t.test("forty clients of one file at once: each MiB read once for all of them, every sender counted out", async (t) => {
  const bytes = randomBytes(4 * MiB + 3);
  const path = await fileOf(t, bytes);
  const fds = openFds();
  const before = filesSending();
  const neverRead = fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length);
  const sources = await Promise.all(Array.from({ length: 40 }, async () => fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length)));
  const firsts = await Promise.all(sources.map((s) => s.read()));
  t.equal(filesSending(), before + 40, "forty sending; the body never read is not counted");
  t.equal(new Set(firsts.map((c) => c!.buffer)).size, 1, "the first MiB was read into one buffer, sent to all forty");
  await waitFor(() => openFds() === fds + 2); // the joiners' own handles close in the background
  t.equal(openFds(), fds + 2, "one handle reads for all forty (and the unread body keeps its own)");
  const all = new Set<ArrayBufferLike>();
  const outs = await Promise.all(sources.map(async (source, i) => {
    const out: Buffer[] = [];
    for (let c = firsts[i] ?? null; c; c = await source.read()) {
      all.add(c.buffer);
      out.push(Buffer.from(c)); // copied, as the socket would, before handing it back
      source.recycle?.(c);
    }
    return Buffer.concat(out);
  }));
  t.ok(outs.every((o) => o.equals(bytes)), "every sender sent the whole file");
  t.ok(all.size <= 5, `5 MiB to forty clients through ${all.size} buffers in all (not one set per client)`);
  t.equal(filesSending(), before, "each sender was counted out at its end");
  neverRead.cancel();
  t.equal(filesSending(), before);
  await waitFor(() => openFds() === fds);
  t.equal(openFds(), fds, "every handle closed");
});

t.test("chunks sockets hand back all at once go to one pool and are read into again, for this blob or the next", async (t) => {
  const bytes = randomBytes(72 * MiB);
  const path = await fileOf(t, bytes);
  const sources = await Promise.all(Array.from({ length: 20 }, async () => fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length)));
  const sent = sources.map(() => [] as Buffer[]);
  const seen = new Set<ArrayBufferLike>();
  const step = async (i: number) => {
    const c = (await sources[i]!.read())!;
    seen.add(c.buffer);
    sent[i]!.push(Buffer.from(c));
    return c;
  };
  // Client i is 3i MiB in: twenty clients spread over the layer, as a CI burst drifts apart.
  for (let i = 0; i < 20; i++) for (let n = 0; n < 3 * i; n++) sources[i]!.recycle?.(await step(i));
  let fresh = 0;
  for (let wave = 0; wave < 9; wave++) {
    const before = seen.size;
    const held = await Promise.all(sources.map((_, i) => step(i)));
    if (wave > 1) fresh += seen.size - before; // a buffer is seen a wave after it was read into (as read ahead)
    for (const [i, c] of held.entries()) sources[i]!.recycle?.(c); // every socket took its chunk at once
  }
  t.ok(fresh <= 4, `${fresh} fresh buffers over 7 waves of twenty clients 3 MiB apart (each wave hands back twenty)`);
  for (const [i, source] of sources.entries()) for (let c = await step(i); ; c = await step(i)) {
    source.recycle?.(c);
    if (sent[i]!.reduce((n, b) => n + b.length, 0) === bytes.length) break;
  }
  t.ok(sent.every((parts) => Buffer.concat(parts).equals(bytes)), "every client sent the whole file");
  for (const source of sources) t.equal(await source.read(), null);

  const next = randomBytes(8 * MiB);
  const nextPath = await fileOf(t, next);
  const reader = fileSource(nextPath, await open(nextPath, "r"), next.length, 0, next.length);
  const nextBuffers = new Set<ArrayBufferLike>();
  for (let c = await reader.read(); c; c = await reader.read()) {
    nextBuffers.add(c.buffer);
    reader.recycle?.(c);
  }
  t.ok([...nextBuffers].every((b) => seen.has(b)), "the next blob is read into the buffers the last one gave back");
});

t.test("a chunk a web stream consumer keeps is never written again, though the client beside it hands its copy back", async (t) => {
  const bytes = randomBytes(8 * MiB);
  const path = await fileOf(t, bytes);
  const kept: Uint8Array[] = [];
  const stream = directStream(fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length)).getReader();
  const sender = fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length);
  // In step: the sender takes each chunk, the stream's consumer takes the same and keeps it, then the sender hands it back.
  for (;;) {
    const theirs = await sender.read();
    const mine = await stream.read();
    if (mine.done) {
      t.equal(theirs, null);
      break;
    }
    t.equal(theirs!.buffer, mine.value.buffer, "the two share the read");
    kept.push(mine.value);
    sender.recycle?.(theirs!);
  }
  t.ok(Buffer.concat(kept).equals(bytes), "what the consumer kept is still the file's bytes");
});

t.test("a client leaving in the middle leaves the others' bytes whole", async (t) => {
  const bytes = randomBytes(6 * MiB + 100);
  const path = await fileOf(t, bytes);
  const fds = openFds();
  const leaver = fileSource(path, await open(path, "r"), bytes.length, 0, bytes.length);
  const stayers = await Promise.all([0, MiB + 17].map(async (start) => ({ start, source: fileSource(path, await open(path, "r"), bytes.length, start, bytes.length) })));
  const got = await leaver.read();
  t.ok(got, "the leaver read a chunk");
  const outs = await Promise.all(stayers.map(async ({ start, source }, i) => {
    const out: Buffer[] = [];
    for (let c = await source.read(), n = 0; c; c = await source.read(), n++) {
      if (i === 0 && n === 1) leaver.cancel(); // the chunk it held is still out there: never reused
      out.push(Buffer.from(c));
      source.recycle?.(c);
    }
    return { start, out: Buffer.concat(out) };
  }));
  for (const { start, out } of outs) t.ok(out.equals(bytes.subarray(start)), `from ${start}: the bytes`);
  t.ok(Buffer.from(got!).equals(bytes.subarray(0, MiB)), "the leaver's last chunk was not written over");
  await waitFor(() => openFds() === fds);
  t.equal(openFds(), fds, "every handle closed");
});

/** A fetch of `bytes` that has received, spooled and verified them all, `inMemory` its window, and its spool reader. */
async function finishedFetch(t: Tap, bytes: Uint8Array, inMemory: Followed["inMemory"]): Promise<{ fetch: Followed; reader: SharedReader }> {
  const dir = await mkdtemp(join(tmpdir(), "direct-body-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const upload = await UploadFile.create(dir, `sha256:${"a".repeat(64)}` as Digest);
  t.teardown(() => upload.remove());
  await upload.write(bytes);
  const fetch: Followed = {
    error: null,
    received: bytes.length,
    written: bytes.length,
    spooled: bytes.length,
    complete: true,
    releasable: () => bytes.length,
    inMemory,
    nextChange: () => Promise.resolve(),
    restFrom: () => Promise.reject(new Error("not here")),
  };
  return { fetch, reader: new SharedReader(await upload.openReader()) };
}

t.test("a follower's spool reads go through a few reused buffers once sent, and never into a batch of the fetch's", async (t) => {
  const bytes = randomBytes(12 * MiB + 5);
  // The first MiB is still in memory as a batch of the fetch's; the rest is read from the spool.
  const batch = new Uint8Array(bytes.subarray(0, MiB));
  const { fetch, reader } = await finishedFetch(t, bytes, (position, limit) => (position < MiB ? batch.subarray(position, Math.min(MiB, limit)) : null));
  const source = followSource(fetch, reader, 0, null);
  const spoolBuffers = new Set<ArrayBufferLike>();
  let inBatch = 0;
  const out: Buffer[] = [];
  for (let c = await source.read(); c; c = await source.read()) {
    if (c.buffer === batch.buffer) inBatch++;
    else spoolBuffers.add(c.buffer);
    out.push(Buffer.from(c)); // copied, as the socket would, before handing it back
    source.recycle?.(c);
  }
  t.ok(Buffer.concat(out).equals(bytes), "the bytes, from memory then from the spool");
  t.ok(spoolBuffers.size <= 2, `11 MiB from the spool in ${spoolBuffers.size} buffers`);
  t.equal(inBatch, 1, "the batch was sent once and never read into");
  t.ok(Buffer.from(batch).equals(bytes.subarray(0, MiB)), "and is unchanged");
});

t.test("twenty followers behind the window read each MiB of the spool once, and one starting mid-chunk lines up with them", async (t) => {
  const bytes = randomBytes(8 * MiB + 5);
  const { fetch, reader } = await finishedFetch(t, bytes, () => null); // every byte is behind the memory window
  const starts = [...Array.from({ length: 20 }, () => 0), MiB + 77];
  const sources = starts.map((start) => followSource(fetch, reader, start, null));
  reader.release(); // the fetch is done with it; the followers keep it open
  const all = new Set<ArrayBufferLike>();
  const firstOfLate: ArrayBufferLike[] = [];
  const outs: Buffer[][] = starts.map(() => []);
  // In step, as sockets of the same speed would take them.
  for (let live = sources.length; live > 0;) {
    live = 0;
    const chunks = await Promise.all(sources.map((s) => s.read()));
    chunks.forEach((c, i) => {
      if (!c) return;
      live++;
      if (i === 20) firstOfLate.push(c.buffer);
      else if (c.byteLength === MiB) all.add(c.buffer); // the 5-byte tail is each follower's own read
      outs[i]!.push(Buffer.from(c));
    });
    chunks.forEach((c, i) => c && sources[i]!.recycle?.(c));
  }
  starts.forEach((start, i) => t.ok(Buffer.concat(outs[i]!).equals(bytes.subarray(start)), `follower ${i + 1} (from ${start}): the bytes`));
  t.ok(all.size <= 4, `8 whole MiB to twenty followers through ${all.size} buffers in all, not twenty sets`);
  t.equal(firstOfLate.length, 8, "the late follower: a short read up to the next MiB, six whole ones, the tail");
  t.ok(firstOfLate.slice(1, -1).every((b) => all.has(b)), "after its first short read, it shares the others' chunks");
});

t.test("a follower reads one chunk ahead: the next read runs while the last chunk is being sent", async (t) => {
  let started = 0;
  const chunks = [new Uint8Array([1]), new Uint8Array([2]), new Uint8Array([3])];
  const source = readingAhead({ read: async () => chunks[started++] ?? null, cancel: () => {} });
  t.same(await source.read(), chunks[0]);
  t.equal(started, 2, "the second read started when the first chunk was given");
  t.same(await source.read(), chunks[1]);
  t.same(await source.read(), chunks[2]);
  t.equal(await source.read(), null);
});

t.test("a body read as a stream is not taken from under its reader", async (t) => {
  const stream = directStream({ read: async () => null, cancel: () => {} });
  const reader = stream.getReader();
  t.equal(takeDirect(stream), null);
  reader.releaseLock();
});

/** A server on 127.0.0.1 answering every request with `body()` and the given length. */
async function serving(t: Tap, body: () => ReadableStream<Uint8Array>, length: number, clientTimeoutMs = 60_000) {
  const listening = await nodeRuntime.serve(
    async () => new Response(body(), { headers: { "content-type": "application/octet-stream", "content-length": String(length) } }),
    { hostname: "127.0.0.1", port: 0 },
    { clientTimeoutMs },
  );
  t.teardown(() => listening.close());
  return `http://127.0.0.1:${listening.port}/`;
}

t.test("Node sends a file body whole and calls its hooks as a stream body would", async (t) => {
  const bytes = randomBytes(5 * MiB + 3);
  const path = await fileOf(t, bytes);
  let counted = 0;
  let ends = 0;
  const hooks: BodyHooks = { onChunk: (n) => (counted += n), onEnd: () => ends++ };
  const url = await serving(t, () => observed(directStream(fileSourceAt(path, bytes.length)), hooks), bytes.length);
  for (let i = 0; i < 3; i++) {
    const res = await fetch(url);
    t.equal(res.status, 200);
    t.ok(Buffer.from(await res.arrayBuffer()).equals(bytes), `response ${i + 1}: the bytes`);
  }
  await waitFor(() => ends === 3);
  t.equal(counted, 3 * bytes.length, "every byte counted");
  t.equal(ends, 3, "the end reported once per response");
});

t.test("bytes in memory (a manifest) go out with the head in one write, never as a stream", async (t) => {
  const bytes = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, layers: [] }));
  let streamsMade = 0;
  class Watched extends LeanResponse {
    override get body() {
      const made = super.body;
      if (made) streamsMade++;
      return made;
    }
  }
  const listening = await nodeRuntime.serve(
    async (req) =>
      new Watched(req.method === "HEAD" ? null : bytes, {
        headers: [["content-type", "application/vnd.oci.image.manifest.v1+json"], ["set-cookie", "a=1; Path=/"], ["set-cookie", "b=2; Path=/"]],
      }),
    { hostname: "127.0.0.1", port: 0 },
    { clientTimeoutMs: 60_000 },
  );
  t.teardown(() => listening.close());
  // One connection, three requests, read raw: each answer must be complete as written.
  const socket = connect(listening.port, "127.0.0.1");
  t.teardown(() => socket.destroy());
  let raw = "";
  socket.on("data", (d) => (raw += d.toString("latin1")));
  const ask = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
  socket.write(ask + ask + "HEAD / HTTP/1.1\r\nhost: x\r\n\r\n");
  const body = Buffer.from(bytes).toString("latin1");
  await waitFor(() => raw.split("HTTP/1.1 200").length === 4 && raw.endsWith("\r\n\r\n"));
  const answers = raw.split("HTTP/1.1 200 OK\r\n").slice(1);
  t.equal(answers.length, 3, "three answers on one connection");
  for (const [i, a] of answers.slice(0, 2).entries()) {
    t.match(a, new RegExp(`content-length: ${bytes.length}\r\n`, "i"), `GET ${i + 1}: its length`);
    t.match(a, /content-type: application\/vnd\.oci\.image\.manifest\.v1\+json\r\n/i, `GET ${i + 1}: its type`);
    t.notMatch(a, /transfer-encoding/i, `GET ${i + 1}: not chunked`);
    t.match(a, /set-cookie: a=1; Path=\/\r\nset-cookie: b=2; Path=\/\r\n/i, `GET ${i + 1}: both cookies, each a field of its own`);
    t.ok(a.endsWith(`\r\n\r\n${body}`), `GET ${i + 1}: the bytes`);
  }
  t.notOk(answers[2]!.includes(body), "HEAD: no body");
  t.equal(streamsMade, 0, "no response body was made into a stream");
});

t.test("a client that leaves in the middle ends the body: the file is released and the end reported", async (t) => {
  const bytes = randomBytes(64 * MiB);
  const path = await fileOf(t, bytes);
  let ends = 0;
  let cancelled = 0;
  const url = await serving(t, () => {
    const source = fileSourceAt(path, bytes.length);
    const cancel = source.cancel;
    source.cancel = (reason) => (cancelled++, cancel(reason));
    return observed(directStream(source), { onEnd: () => ends++ });
  }, bytes.length);
  const res = await fetch(url);
  const reader = res.body!.getReader();
  await reader.read();
  await reader.cancel();
  await waitFor(() => ends === 1 && cancelled === 1);
  t.equal(ends, 1, "end reported");
  t.equal(cancelled, 1, "source cancelled once");
});

t.test("a client that takes nothing is cut off after the stall time, with the stall reported", async (t) => {
  const bytes = randomBytes(64 * MiB);
  const path = await fileOf(t, bytes);
  let stalls = 0;
  let ends = 0;
  const url = new URL(await serving(t, () => observed(directStream(fileSourceAt(path, bytes.length)), {
    onEnd: () => ends++,
    stall: { ms: 300, onStall: () => stalls++ },
  }), bytes.length));
  // A raw client that sends a request and never reads the answer.
  const socket = connect(Number(url.port), "127.0.0.1");
  socket.pause();
  socket.write(`GET / HTTP/1.1\r\nhost: ${url.host}\r\n\r\n`);
  const closed = new Promise<void>((r) => socket.once("close", () => r()));
  socket.on("error", () => {});
  t.teardown(() => socket.destroy());
  await waitFor(() => stalls === 1 && ends === 1, 5_000);
  t.equal(stalls, 1, "the stall was reported");
  socket.resume(); // drain what was buffered: the server has closed its side
  await closed;
  t.pass("the connection was closed");
});

function fileSourceAt(path: string, size: number) {
  // The handle opens on the first read, as fs-store's open would have it by then.
  let real: ReturnType<typeof fileSource> | null = null;
  const opening = open(path, "r").then((h) => (real = fileSource(path, h, size, 0, size)));
  return {
    read: async () => (await opening, real!.read()),
    recycle: (c: Uint8Array) => real?.recycle?.(c),
    forget: (c: Uint8Array) => real?.forget?.(c),
    cancel: (reason?: unknown) => void opening.then(() => real!.cancel(reason)),
  };
}

function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

async function waitFor(ok: () => boolean, ms = 5_000): Promise<void> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}
