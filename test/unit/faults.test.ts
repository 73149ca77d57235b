// An upstream that misbehaves on purpose: wrong bytes, broken connections,
// stalls, error statuses, outages, and many clients at once. Each case checks
// what the client sees and that the cache only ever holds verified bytes.
import t, { type Test } from "tap";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { createServer, get as httpGet, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config.ts";
import { createLogger } from "../../src/log.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { startServer } from "../../src/server.ts";

const TIMEOUT_S = 2;
const MiB = 1024 * 1024;

const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------- fake upstream

/** How the upstream answers one request; the default is a correct, complete answer. */
type Behaviour = (req: IncomingMessage, res: ServerResponse, bytes: Buffer) => void | Promise<void>;

type Seen = { method: string; path: string };

class FlakyUpstream {
  readonly seen: Seen[] = [];
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, { bytes: Buffer; digest: string }>(); // by tag and by digest
  /** Per blob digest or manifest reference: how to misbehave. */
  readonly behaviour = new Map<string, Behaviour>();
  /** Body bytes written so far per blob digest (for clients that must join mid-way). */
  readonly progress = new Map<string, number>();
  url = "";
  private server: Server | null = null;

  async start(t: Test): Promise<this> {
    const server = createServer((req, res) => {
      void this.handle(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    this.server = server;
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    t.teardown(() => this.stop());
    return this;
  }

  /** Closes the listener and every connection: afterwards the upstream refuses connections. */
  stop(): Promise<void> {
    const server = this.server;
    if (!server) return Promise.resolve();
    this.server = null;
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  }

  blobGets(digest: string): number {
    return this.seen.filter((s) => s.method === "GET" && s.path.endsWith(`/blobs/${digest}`)).length;
  }

  addBlob(bytes: Buffer): string {
    const digest = sha256(bytes);
    this.blobs.set(digest, bytes);
    return digest;
  }

  addManifest(tag: string, bytes: Buffer): string {
    const digest = sha256(bytes);
    this.manifests.set(tag, { bytes, digest });
    this.manifests.set(digest, { bytes, digest });
    return digest;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", this.url).pathname;
    this.seen.push({ method: req.method ?? "", path });
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    const ref = m?.[3] ?? "";
    if (m?.[2] === "manifests") {
      const manifest = this.manifests.get(ref);
      const behaviour = this.behaviour.get(ref);
      if (behaviour) return behaviour(req, res, manifest?.bytes ?? Buffer.alloc(0));
      if (!manifest) return ociError(res, 404, "MANIFEST_UNKNOWN");
      res.writeHead(200, { "content-type": OCI_MANIFEST, "content-length": manifest.bytes.length, "docker-content-digest": manifest.digest });
      res.end(req.method === "HEAD" ? undefined : manifest.bytes);
      return;
    }
    const blob = this.blobs.get(ref);
    if (m?.[2] !== "blobs" || !blob) return ociError(res, 404, "BLOB_UNKNOWN");
    const behaviour = this.behaviour.get(ref);
    if (behaviour && req.method === "GET") return behaviour(req, res, blob);
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.length });
    if (req.method === "HEAD") return void res.end();
    this.progress.set(ref, blob.length);
    res.end(blob);
  }

  /** Serves the blob correctly, but in pieces with a pause between them. */
  slow(digest: string, chunk: number, delayMs: number): void {
    this.behaviour.set(digest, async (_req, res, bytes) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": bytes.length });
      for (let at = 0; at < bytes.length; at += chunk) {
        if (res.destroyed) return;
        res.write(bytes.subarray(at, at + chunk));
        this.progress.set(digest, Math.min(at + chunk, bytes.length));
        await sleep(delayMs);
      }
      res.end();
    });
  }

  async waitForProgress(digest: string, bytes: number): Promise<void> {
    const deadline = Date.now() + 10_000;
    while ((this.progress.get(digest) ?? 0) < bytes) {
      if (Date.now() > deadline) throw new Error(`the upstream never sent ${bytes} bytes of ${digest}`);
      await sleep(5);
    }
  }
}

function ociError(res: ServerResponse, status: number, code: string, headers: Record<string, string> = {}): void {
  const body = JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

// ------------------------------------------------------------------ Stowage

type Stowage = { url: string; dataDir: string; logs: string[] };

async function startStowage(t: Test, upstreamUrl: string): Promise<Stowage> {
  const dataDir = await mkdtemp(join(tmpdir(), "stowage-faults-test-"));
  const loaded = loadConfig({
    argv: ["--data-dir", dataDir, "--upstream", `local=${upstreamUrl}`, "--tag-ttl", "1", "--upstream-timeout", `${TIMEOUT_S}s`],
    env: {},
    readFile: () => {
      throw new Error("no config file in this test");
    },
  });
  // --listen rejects port 0 (operators must pick a port); the test wants any free one.
  const config = { ...loaded, listen: { hostname: "127.0.0.1", port: 0 } };
  const logs: string[] = [];
  const server = await startServer(config, nodeRuntime, createLogger("debug", (line) => logs.push(line)));
  t.teardown(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });
  return { url: server.url, dataDir, logs };
}

function blobFile(stowage: Stowage, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return join(stowage.dataDir, "blobs", "sha256", hex.slice(0, 2), hex);
}

/** The store holds nothing under the digest, or exactly the right bytes. */
async function storeHoldsOnlyVerified(t: Test, stowage: Stowage, digest: string): Promise<void> {
  let bytes: Buffer | null = null;
  try {
    bytes = await readFile(blobFile(stowage, digest));
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") throw err;
  }
  if (bytes) t.equal(sha256(bytes), digest, "the stored file has the right sha256");
  else t.pass("nothing is stored under the digest");
}

async function isStored(stowage: Stowage, digest: string): Promise<boolean> {
  return stat(blobFile(stowage, digest)).then(() => true, () => false);
}

/** Upload temp files are removed once a failed fetch has cleaned up. */
async function noLeftoverUploads(t: Test, stowage: Stowage): Promise<void> {
  const dir = join(stowage.dataDir, "blobs", "_uploads");
  const deadline = Date.now() + 5_000;
  let left = await readdir(dir);
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(20);
    left = await readdir(dir);
  }
  t.same(left, [], "no upload temp files are left behind");
}

/** Resolves once Stowage logged that it committed the blob (its KV records are written by then). */
async function committed(stowage: Stowage, digest: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!stowage.logs.some((line) => line.includes('"blob cached"') && line.includes(digest))) {
    if (Date.now() > deadline) throw new Error(`Stowage never logged that it cached ${digest}`);
    await sleep(10);
  }
}

type Outcome = {
  status: number;
  headers: Headers;
  body: Buffer;
  /** The request or the body read rejected (a broken response, as clients see it). */
  error: unknown;
  /** Nothing happened for 20 s: the response neither ended nor failed. */
  hung: boolean;
  ms: number;
};

/** Does what a client does: sends the request and reads the whole body, noting how it ended. */
async function attempt(url: string, init: RequestInit = {}): Promise<Outcome> {
  const started = Date.now();
  const hang = AbortSignal.timeout(20_000);
  const out: Outcome = { status: 0, headers: new Headers(), body: Buffer.alloc(0), error: null, hung: false, ms: 0 };
  try {
    const res = await fetch(url, { ...init, signal: hang });
    out.status = res.status;
    out.headers = res.headers;
    const parts: Buffer[] = [];
    try {
      for await (const part of res.body ?? []) parts.push(Buffer.from(part));
    } finally {
      out.body = Buffer.concat(parts);
    }
  } catch (err) {
    out.error = err;
    out.hung = hang.aborted;
  }
  out.ms = Date.now() - started;
  return out;
}

/** A broken answer must look broken: an error status, a failed read, or a body shorter than announced. */
function assertFailed(t: Test, o: Outcome, size: number, what: string): void {
  t.notOk(o.hung, `${what}: the client is not left hanging`);
  const short = o.body.length < size;
  t.ok(o.status >= 400 || o.error !== null || short, `${what}: the client sees a failure (status ${o.status}, ${o.body.length}/${size} bytes, error: ${String(o.error)})`);
  if (o.status === 200 && o.error === null) {
    const declared = o.headers.get("content-length");
    t.ok(declared !== null && Number(declared) > o.body.length, `${what}: a short body is at least shorter than its Content-Length`);
  }
}

async function expectOciError(t: Test, o: Outcome, status: number, code: string): Promise<void> {
  t.equal(o.status, status, `status ${status}`);
  t.match(o.headers.get("content-type") ?? "", /^application\/json/, "JSON");
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(o.body.toString("utf8"));
  } catch {
    // stays null; the match below shows the body
  }
  t.match(parsed, { errors: [{ code }] }, `code ${code}: ${o.body.toString("utf8").slice(0, 300)}`);
}

/** After a failure: with the upstream behaving again, the blob is fetched afresh and served whole. */
async function recovers(t: Test, up: FlakyUpstream, stowage: Stowage, digest: string, bytes: Buffer): Promise<void> {
  up.behaviour.delete(digest);
  const before = up.blobGets(digest);
  const o = await attempt(`${stowage.url}/v2/app/blobs/${digest}`);
  t.equal(o.status, 200, "with a well-behaved upstream: 200");
  t.ok(o.error === null && o.body.equals(bytes), "with a well-behaved upstream: the right bytes");
  t.equal(up.blobGets(digest), before + 1, "it was fetched again: nothing had been committed");
  await committed(stowage, digest);
  await storeHoldsOnlyVerified(t, stowage, digest);
  t.ok(await isStored(stowage, digest), "now it is stored");
}

// -------------------------------------------------------------------- cases

t.test("a misbehaving upstream", async (t) => {
  const up = await new FlakyUpstream().start(t);
  const stowage = await startStowage(t, up.url);
  const blobUrl = (digest: string) => `${stowage.url}/v2/app/blobs/${digest}`;

  await t.test("wrong bytes of the right length", async (t) => {
    const bytes = randomBytes(3 * MiB);
    const digest = up.addBlob(bytes);
    const wrong = Buffer.from(bytes);
    wrong[wrong.length >> 1]! ^= 0xff;
    up.behaviour.set(digest, (_req, res) => {
      res.writeHead(200, { "content-length": wrong.length });
      res.end(wrong);
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "wrong bytes");
    t.notOk(o.body.equals(wrong), "the client never gets the wrong bytes as a complete body");
    await noLeftoverUploads(t, stowage);
    await storeHoldsOnlyVerified(t, stowage, digest);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("the connection drops at 50 %", async (t) => {
    const bytes = randomBytes(4 * MiB);
    const digest = up.addBlob(bytes);
    up.behaviour.set(digest, (_req, res) => {
      res.writeHead(200, { "content-length": bytes.length });
      res.write(bytes.subarray(0, bytes.length / 2), () => res.destroy());
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "dropped connection");
    await noLeftoverUploads(t, stowage);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("fewer bytes than Content-Length, then a clean close", async (t) => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.behaviour.set(digest, (req, res) => {
      res.writeHead(200, { "content-length": bytes.length, connection: "close" });
      res.write(bytes.subarray(0, bytes.length - 1000), () => req.socket.end());
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "short body");
    await noLeftoverUploads(t, stowage);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("more bytes than the blob, without a Content-Length", async (t) => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.behaviour.set(digest, (_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" }); // chunked
      res.write(bytes);
      res.end(randomBytes(100));
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length + 100, "extra bytes");
    t.notOk(o.status === 200 && o.error === null && o.body.subarray(0, bytes.length).equals(bytes) && o.body.length > bytes.length,
      "the client never gets the blob plus junk as a complete body");
    await noLeftoverUploads(t, stowage);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("more bytes than its Content-Length announced", async (t) => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    // Written on the raw socket: Node's HTTP server would not send a body that disagrees with its length.
    up.behaviour.set(digest, (req) => {
      req.socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${bytes.length - 100}\r\nConnection: close\r\n\r\n`);
      req.socket.end(bytes);
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "length too small");
    await noLeftoverUploads(t, stowage);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("a stall in the middle of the body", async (t) => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.behaviour.set(digest, (_req, res) => {
      res.writeHead(200, { "content-length": bytes.length });
      res.write(bytes.subarray(0, MiB)); // and then nothing, until the test ends
    });
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "stalled upstream");
    t.ok(o.ms < TIMEOUT_S * 1000 + 3000, `the client fails within about --upstream-timeout (${o.ms} ms)`);
    await noLeftoverUploads(t, stowage);
    t.notOk(await isStored(stowage, digest), "nothing was committed");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("no response headers within --upstream-timeout", async (t) => {
    up.behaviour.set("silent", () => {
      // accept the request and never answer
    });
    const o = await attempt(`${stowage.url}/v2/app/manifests/silent`);
    await expectOciError(t, o, 503, "UNAVAILABLE");
    t.ok(o.ms < TIMEOUT_S * 1000 + 3000, `answered within about --upstream-timeout (${o.ms} ms)`);
  });

  await t.test("error statuses with nothing cached", async (t) => {
    up.behaviour.set("broken", (_req, res) => ociError(res, 500, "UNKNOWN"));
    await expectOciError(t, await attempt(`${stowage.url}/v2/app/manifests/broken`), 503, "UNAVAILABLE");

    up.behaviour.set("busy", (_req, res) => ociError(res, 429, "TOOMANYREQUESTS", { "retry-after": "7" }));
    const limited = await attempt(`${stowage.url}/v2/app/manifests/busy`);
    await expectOciError(t, limited, 429, "TOOMANYREQUESTS");
    t.equal(limited.headers.get("retry-after"), "7", "Retry-After is passed on");

    const bytes = randomBytes(1000);
    const digest = up.addBlob(bytes);
    up.behaviour.set(digest, (_req, res) => ociError(res, 502, "UNKNOWN"));
    await expectOciError(t, await attempt(blobUrl(digest)), 503, "UNAVAILABLE");
    up.behaviour.set(digest, (_req, res) => ociError(res, 429, "TOOMANYREQUESTS", { "retry-after": "7" }));
    const limitedBlob = await attempt(blobUrl(digest));
    await expectOciError(t, limitedBlob, 429, "TOOMANYREQUESTS");
    t.equal(limitedBlob.headers.get("retry-after"), "7");
    await recovers(t, up, stowage, digest, bytes);
  });

  await t.test("a manifest whose bytes do not match its digest is refused and not cached", async (t) => {
    const good = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"1".repeat(64)}`, size: 2 }, layers: [] }));
    const digest = up.addManifest("tampered", good);
    const forged = Buffer.from(good.toString().replace('"layers":[]', '"layers":[ ]'));
    const lying: Behaviour = (req, res) => {
      res.writeHead(200, { "content-type": OCI_MANIFEST, "content-length": forged.length, "docker-content-digest": digest });
      res.end(req.method === "HEAD" ? undefined : forged);
    };
    up.behaviour.set(digest, lying);
    up.behaviour.set("tampered", lying);
    const byDigest = await attempt(`${stowage.url}/v2/app/manifests/${digest}`);
    t.equal(byDigest.status, 502, "by digest: 502");
    t.notOk(byDigest.body.equals(forged), "the forged bytes are not served");
    const byTag = await attempt(`${stowage.url}/v2/app/manifests/tampered`);
    t.equal(byTag.status, 502, "by tag, with a Docker-Content-Digest the bytes do not match: 502");

    up.behaviour.delete(digest);
    up.behaviour.delete("tampered");
    const fixed = await attempt(`${stowage.url}/v2/app/manifests/${digest}`);
    t.equal(fixed.status, 200);
    t.ok(fixed.body.equals(good), "once the upstream is honest, the real manifest");
  });

  await t.test("ten clients at once on a cold 8 MiB blob, one late, one giving up", async (t) => {
    const bytes = randomBytes(8 * MiB);
    const digest = up.addBlob(bytes);
    up.slow(digest, 256 * 1024, 30); // about 1 s in all
    const clients = Array.from({ length: 10 }, () => attempt(blobUrl(digest)));

    const quitter = new AbortController();
    const quitting = (async () => {
      const res = await fetch(blobUrl(digest), { signal: quitter.signal });
      const reader = res.body!.getReader();
      let got = 0;
      while (got < MiB) {
        const { done, value } = await reader.read();
        if (done) break;
        got += value.byteLength;
      }
      quitter.abort();
      return got;
    })();

    await up.waitForProgress(digest, bytes.length / 2);
    const late = attempt(blobUrl(digest));

    const results = await Promise.all(clients);
    results.forEach((o, i) => {
      t.equal(o.status, 200, `client ${i}: 200`);
      t.ok(o.error === null && o.body.equals(bytes), `client ${i}: all ${bytes.length} bytes, correct`);
    });
    const lateResult = await late;
    t.equal(lateResult.status, 200, "the late client: 200");
    t.ok(lateResult.error === null && lateResult.body.equals(bytes), "the late client gets every byte");
    t.ok((await quitting) >= MiB, "the quitting client read some before it left");
    t.equal(up.blobGets(digest), 1, "the upstream saw exactly one GET for the blob");
    await committed(stowage, digest);
    await storeHoldsOnlyVerified(t, stowage, digest);
    t.ok(await isStored(stowage, digest));
  });

  await t.test("a client that never reads holds up neither the others nor the commit", async (t) => {
    const bytes = randomBytes(16 * MiB);
    const digest = up.addBlob(bytes);
    up.slow(digest, MiB, 20);
    const paused = new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpGet(blobUrl(digest), (res) => {
        res.pause();
        resolve(res);
      });
      req.on("error", reject);
    });
    const stalledResponse = await paused;
    t.equal(stalledResponse.statusCode, 200);

    const readers = await Promise.all([attempt(blobUrl(digest)), attempt(blobUrl(digest))]);
    for (const o of readers) t.ok(o.status === 200 && o.error === null && o.body.equals(bytes), "a reading client gets every byte");
    await committed(stowage, digest);
    await storeHoldsOnlyVerified(t, stowage, digest);
    t.ok(await isStored(stowage, digest), "committed while one client still had not read");

    // It may still read it all, late.
    const parts: Buffer[] = [];
    stalledResponse.on("data", (part: Buffer) => parts.push(part));
    await new Promise<void>((resolve, reject) => {
      stalledResponse.on("end", resolve);
      stalledResponse.on("error", reject);
      stalledResponse.resume();
    });
    t.ok(Buffer.concat(parts).equals(bytes), "the paused client, resumed after the commit, gets every byte");
    t.equal(up.blobGets(digest), 1, "one upstream GET");
  });

  await t.test("a range of a blob still being fetched", async (t) => {
    const bytes = randomBytes(4 * MiB);
    const digest = up.addBlob(bytes);
    up.slow(digest, 128 * 1024, 25); // about 0.8 s
    const full = attempt(blobUrl(digest));
    await up.waitForProgress(digest, MiB);

    const middle = await attempt(blobUrl(digest), { headers: { range: "bytes=1000-1999" } });
    t.equal(middle.status, 206);
    t.equal(middle.headers.get("content-range"), `bytes 1000-1999/${bytes.length}`);
    t.ok(middle.body.equals(bytes.subarray(1000, 2000)), "the requested bytes");

    const ahead = await attempt(blobUrl(digest), { headers: { range: `bytes=${3 * MiB}-${3 * MiB + 99}` } });
    t.equal(ahead.status, 206, "a range not yet received waits for it");
    t.ok(ahead.body.equals(bytes.subarray(3 * MiB, 3 * MiB + 100)));

    const last = await attempt(blobUrl(digest), { headers: { range: "bytes=-10" } });
    t.equal(last.status, 206, "the last bytes come once the blob is verified");
    t.equal(last.headers.get("content-range"), `bytes ${bytes.length - 10}-${bytes.length - 1}/${bytes.length}`);
    t.ok(last.body.equals(bytes.subarray(bytes.length - 10)));

    const beyond = await attempt(blobUrl(digest), { headers: { range: `bytes=${bytes.length}-` } });
    t.equal(beyond.status, 416);
    t.equal(beyond.headers.get("content-range"), `bytes */${bytes.length}`);

    const whole = await full;
    t.ok(whole.error === null && whole.body.equals(bytes), "the full download is unharmed");
    t.equal(up.blobGets(digest), 1, "no second upstream GET");
  });

  await t.test("KV says cached but the file is gone", async (t) => {
    const bytes = randomBytes(MiB + 3);
    const digest = up.addBlob(bytes);
    const first = await attempt(blobUrl(digest));
    t.ok(first.body.equals(bytes));
    await committed(stowage, digest);
    await rm(blobFile(stowage, digest));

    const head = await attempt(blobUrl(digest), { method: "HEAD" });
    t.equal(head.status, 200, "HEAD still answers");
    t.equal(head.headers.get("content-length"), String(bytes.length));

    const again = await attempt(blobUrl(digest));
    t.equal(again.status, 200);
    t.ok(again.error === null && again.body.equals(bytes), "fetched again from upstream, correct");
    t.equal(up.blobGets(digest), 2, "one more upstream GET");
    const deadline = Date.now() + 5_000;
    while (!(await isStored(stowage, digest)) && Date.now() < deadline) await sleep(20);
    await storeHoldsOnlyVerified(t, stowage, digest);
    t.ok(await isStored(stowage, digest), "the file is back");
  });
});

t.test("the upstream goes down after things were cached", async (t) => {
  const up = await new FlakyUpstream().start(t);
  const stowage = await startStowage(t, up.url);
  const layer = randomBytes(512 * 1024);
  const layerDigest = up.addBlob(layer);
  const uncachedDigest = up.addBlob(randomBytes(1000));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: layerDigest, size: layer.length },
    layers: [],
  }));
  const manifestDigest = up.addManifest("v1", manifest);

  t.equal((await attempt(`${stowage.url}/v2/app/manifests/v1`)).status, 200);
  t.equal((await attempt(`${stowage.url}/v2/app/blobs/${layerDigest}`)).status, 200);
  await committed(stowage, layerDigest);
  await sleep(1100); // past --tag-ttl 1
  await up.stop();

  const tag = await attempt(`${stowage.url}/v2/app/manifests/v1`);
  t.equal(tag.status, 200, "the tag is still served");
  t.ok(tag.body.equals(manifest), "with the last known manifest");
  t.equal(tag.headers.get("x-stowage-cache"), "stale");
  t.equal(tag.headers.get("docker-content-digest"), manifestDigest);

  const byDigest = await attempt(`${stowage.url}/v2/app/manifests/${manifestDigest}`);
  t.equal(byDigest.status, 200, "a manifest by digest needs no upstream");
  t.ok(byDigest.body.equals(manifest));

  const blob = await attempt(`${stowage.url}/v2/app/blobs/${layerDigest}`);
  t.equal(blob.status, 200, "a cached blob is still served");
  t.ok(blob.body.equals(layer));

  const uncached = await attempt(`${stowage.url}/v2/app/blobs/${uncachedDigest}`);
  await expectOciError(t, uncached, 503, "UNAVAILABLE");
  const unknownTag = await attempt(`${stowage.url}/v2/app/manifests/never-seen`);
  await expectOciError(t, unknownTag, 503, "UNAVAILABLE");
});
