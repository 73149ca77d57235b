// An upstream that misbehaves on purpose: wrong bytes, broken connections,
// stalls, error statuses, outages, and many clients at once. Each case checks
// what the client sees and that the cache only ever holds verified bytes.
// Stowage may resume a broken blob download with a Range request, so a fault
// that happens once may end in the right bytes; one that persists must fail.
// Every case has its own upstream and its own Stowage.
import t, { type Test } from "tap";
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { get as httpGet, type IncomingMessage } from "node:http";
import { join } from "node:path";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { type Behaviour, FakeRegistry } from "../support/fake-registry.ts";
import { type InProcessStowage, startInProcessStowage } from "../support/in-process-stowage.ts";
import { attempt, expectOciError, type Outcome, sendOciError, sha256, stallingReader } from "../support/oci.ts";
import { blobPath, committed, isStored, noUploadsLeft, storeHoldsOnlyVerified } from "../support/store-state.ts";
import { sleep, waitFor, within } from "../support/wait.ts";

const TIMEOUT_S = 2;
const MiB = 1024 * 1024;
/** Blob faults hit GETs only; a HEAD is answered correctly. */
const GET = { methods: ["GET"] };

type Stowage = InProcessStowage;

/** An upstream whose token endpoint issues "t0ken" and whose repository app lists two tags. */
async function startUpstream(t: Test): Promise<FakeRegistry> {
  const up = await new FakeRegistry({ token: "t0ken" }).start(t);
  up.tagLists.set("app", ["v1", "v2"]);
  return up;
}

function startStowage(t: Test, upstreamUrl: string): Promise<Stowage> {
  return startInProcessStowage(t, ["--upstream", `local=${upstreamUrl}`, "--tag-ttl", "1", "--upstream-timeout", `${TIMEOUT_S}s`]);
}

/** A fresh upstream and Stowage for one case. */
async function setup(t: Test) {
  const up = await startUpstream(t);
  const stowage = await startStowage(t, up.url);
  return { up, stowage, blobUrl: (digest: string) => `${stowage.url}/v2/app/blobs/${digest}` };
}

/** A challenge that sends clients to the upstream's token endpoint. */
const challenge = (up: FakeRegistry) => ({ "www-authenticate": `Bearer realm="${up.url}/token",service="flaky"` });

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

/** A fault that happened once may be repaired (by resuming): the whole, right blob, or a visible failure. */
function assertFailedOrWhole(t: Test, o: Outcome, bytes: Buffer, what: string): void {
  if (o.status === 200 && o.error === null && o.body.equals(bytes)) t.pass(`${what}: the client got every byte, correct`);
  else assertFailed(t, o, bytes.length, what);
}

/**
 * After a fault: a download that completed is stored and verified; otherwise
 * nothing was committed, and with the upstream behaving again the blob is
 * fetched afresh and served whole.
 */
async function afterFault(t: Test, up: FakeRegistry, stowage: Stowage, digest: string, bytes: Buffer, o: Outcome): Promise<void> {
  await storeHoldsOnlyVerified(t, stowage, digest);
  up.off(digest);
  const url = `${stowage.url}/v2/app/blobs/${digest}`;
  if (o.status === 200 && o.error === null && o.body.equals(bytes)) {
    await committed(stowage, digest);
    await storeHoldsOnlyVerified(t, stowage, digest);
    t.ok(await isStored(stowage, digest), "the repaired download was stored");
    const before = up.blobGets(digest);
    const again = await attempt(url);
    t.ok(again.status === 200 && again.error === null && again.body.equals(bytes), "and is served again, whole");
    t.equal(up.blobGets(digest), before, "from the cache");
    return;
  }
  await noUploadsLeft(t, join(stowage.dataDir, "blobs"));
  t.notOk(await isStored(stowage, digest), "nothing was committed");
  const before = up.blobGets(digest);
  const fixed = await attempt(url);
  t.equal(fixed.status, 200, "with a well-behaved upstream: 200");
  t.ok(fixed.error === null && fixed.body.equals(bytes), "with a well-behaved upstream: the right bytes");
  t.equal(up.blobGets(digest), before + 1, "it was fetched again");
  await committed(stowage, digest);
  await storeHoldsOnlyVerified(t, stowage, digest);
  t.ok(await isStored(stowage, digest), "now it is stored");
}

// ------------------------------------------------------------- wrong bodies

t.test("wrong bytes of the right length", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(3 * MiB);
  const digest = up.addBlob(bytes);
  const wrong = Buffer.from(bytes);
  wrong[wrong.length >> 1]! ^= 0xff;
  up.on(digest, (_req, res) => {
    res.writeHead(200, { "content-length": wrong.length });
    res.end(wrong);
  }, GET);
  const o = await attempt(blobUrl(digest));
  assertFailed(t, o, bytes.length, "wrong bytes");
  t.notOk(o.body.equals(wrong), "the client never gets the wrong bytes as a complete body");
  await afterFault(t, up, stowage, digest, bytes, o);
});

// Sends half the blob, then resets the connection; ignores Range, as some servers do.
const dropHalf: Behaviour = (_req, res, bytes) => {
  res.writeHead(200, { "content-length": bytes.length });
  res.write(bytes.subarray(0, bytes.length / 2), () => res.destroy());
};

t.test("the connection drops at 50 %, once", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(4 * MiB);
  const digest = up.addBlob(bytes);
  up.once(digest, dropHalf, GET);
  const o = await attempt(blobUrl(digest));
  assertFailedOrWhole(t, o, bytes, "dropped connection");
  await afterFault(t, up, stowage, digest, bytes, o);
});

t.test("the connection drops at 50 %, once, and the retry ignores Range", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(4 * MiB);
  const digest = up.addBlob(bytes);
  let calls = 0;
  up.on(digest, (req, res, blob, url) => {
    if (calls++ === 0) return dropHalf(req, res, blob, url);
    res.writeHead(200, { "content-length": blob.length }); // the whole blob again, from byte 0
    res.end(blob);
  }, GET);
  const o = await attempt(blobUrl(digest));
  assertFailedOrWhole(t, o, bytes, "dropped connection, Range ignored");
  await afterFault(t, up, stowage, digest, bytes, o);
});

t.test("the connection drops at 50 %, every time", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(4 * MiB);
  const digest = up.addBlob(bytes);
  up.on(digest, dropHalf, GET);
  const o = await attempt(blobUrl(digest));
  assertFailed(t, o, bytes.length, "dropped connections");
  await afterFault(t, up, stowage, digest, bytes, o);
});

t.test("fewer bytes than Content-Length, then a clean close, every time", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(2 * MiB);
  const digest = up.addBlob(bytes);
  up.on(digest, (req, res) => {
    res.writeHead(200, { "content-length": bytes.length, connection: "close" });
    res.write(bytes.subarray(0, bytes.length - 1000), () => req.socket.end());
  }, GET);
  const o = await attempt(blobUrl(digest));
  assertFailed(t, o, bytes.length, "short body");
  await afterFault(t, up, stowage, digest, bytes, o);
});

t.test("more bytes than the blob, without a Content-Length", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(2 * MiB);
  const digest = up.addBlob(bytes);
  up.on(digest, (_req, res) => {
    res.writeHead(200, { "content-type": "application/octet-stream" }); // chunked
    res.write(bytes);
    res.end(randomBytes(100));
  }, GET);
  const o = await attempt(blobUrl(digest));
  assertFailed(t, o, bytes.length + 100, "extra bytes");
  t.notOk(o.status === 200 && o.error === null && o.body.subarray(0, bytes.length).equals(bytes) && o.body.length > bytes.length,
    "the client never gets the blob plus junk as a complete body");
  await afterFault(t, up, stowage, digest, bytes, o);
});

t.test("more bytes than its Content-Length announced", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(2 * MiB);
  const digest = up.addBlob(bytes);
  // Written on the raw socket: Node's HTTP server would not send a body that disagrees with its length.
  up.on(digest, (req) => {
    req.socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${bytes.length - 100}\r\nConnection: close\r\n\r\n`);
    req.socket.end(bytes);
  }, GET);
  const o = await attempt(blobUrl(digest));
  assertFailed(t, o, bytes.length, "length too small");
  await afterFault(t, up, stowage, digest, bytes, o);
});

// ------------------------------------------------------------------- stalls

// The stall cases wait out --upstream-timeout; they run side by side on one
// upstream and Stowage to keep the file quick, each on keys of its own.
t.test("stalls end within about --upstream-timeout", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bound = TIMEOUT_S * 1000 + 3000;
  const stallAfterHalf: Behaviour = (_req, res, body) => {
    res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
    res.write(body.subarray(0, body.length >> 1)); // and then nothing, until the test ends
  };

  const blobOnce = async () => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.once(digest, stallAfterHalf, GET);
    const o = await attempt(blobUrl(digest));
    assertFailedOrWhole(t, o, bytes, "blob stalled once");
    t.ok(o.ms < bound, `blob stalled once: over within about --upstream-timeout (${o.ms} ms)`);
    return async () => afterFault(t, up, stowage, digest, bytes, o);
  };

  const blobAlways = async () => {
    const bytes = randomBytes(2 * MiB);
    const digest = up.addBlob(bytes);
    up.on(digest, stallAfterHalf, GET);
    const o = await attempt(blobUrl(digest));
    assertFailed(t, o, bytes.length, "blob that always stalls");
    // A few resumes are fine; waiting on a dead upstream for much longer is not.
    t.ok(o.ms < 5 * TIMEOUT_S * 1000 + 3000, `blob that always stalls: fails after at most a few timeouts (${o.ms} ms)`);
    return async () => afterFault(t, up, stowage, digest, bytes, o);
  };

  const silentManifest = async () => {
    up.on("silent", () => {
      // accept the request and never answer
    });
    const o = await attempt(`${stowage.url}/v2/app/manifests/silent`);
    await expectOciError(t, o, 503, "UNAVAILABLE");
    t.ok(o.ms < bound, `no response headers: answered within about --upstream-timeout (${o.ms} ms)`);
  };

  const stuckManifest = async () => {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"2".repeat(64)}`, size: 2 }, layers: [] }));
    up.addManifest("stuck", bytes);
    up.on("stuck", stallAfterHalf);
    const o = await attempt(`${stowage.url}/v2/app/manifests/stuck`);
    t.notOk(o.hung, `manifest body: the client is not left hanging (${o.ms} ms)`);
    t.ok(o.ms < bound, `manifest body: answered within about --upstream-timeout (${o.ms} ms)`);
    await expectOciError(t, o, 503, "UNAVAILABLE");
    up.off("stuck");
    const later = await attempt(`${stowage.url}/v2/app/manifests/stuck`);
    t.ok(later.status === 200 && later.body.equals(bytes), "manifest body: the tag works once the upstream does");
  };

  const stuckTags = async () => {
    const ok = await attempt(`${stowage.url}/v2/app/tags/list`);
    t.equal(ok.status, 200, "a tag list is passed through");
    t.match(JSON.parse(ok.body.toString()), { name: "app", tags: ["v1", "v2"] });
    up.on("/v2/app/tags/list", stallAfterHalf);
    const o = await attempt(`${stowage.url}/v2/app/tags/list`);
    t.notOk(o.hung, `tag list: the client is not left hanging (${o.ms} ms)`);
    t.ok(o.ms < bound, `tag list: answered within about --upstream-timeout (${o.ms} ms)`);
    await expectOciError(t, o, 503, "UNAVAILABLE");
    up.off("/v2/app/tags/list");
  };

  const stuckToken = async () => {
    up.on("private", (req, res) => {
      if (req.headers.authorization === "Bearer t0ken") return sendOciError(res, 404, "MANIFEST_UNKNOWN");
      sendOciError(res, 401, "UNAUTHORIZED", challenge(up));
    });
    up.on("/token", stallAfterHalf);
    const o = await attempt(`${stowage.url}/v2/app/manifests/private`);
    t.notOk(o.hung, `token: the client is not left hanging (${o.ms} ms)`);
    t.ok(o.ms < bound, `token: answered within about --upstream-timeout (${o.ms} ms)`);
    await expectOciError(t, o, 503, "UNAVAILABLE");
    up.off("/token");
    const after = await attempt(`${stowage.url}/v2/app/manifests/private`);
    await expectOciError(t, after, 404, "MANIFEST_UNKNOWN"); // the token dance works once the body comes
  };

  const cleanups = await Promise.all([blobOnce(), blobAlways(), silentManifest(), stuckManifest(), stuckTags(), stuckToken()]);
  for (const cleanup of cleanups) await cleanup?.();
});

// ------------------------------------------------------ tokens and statuses

t.test("a token that lives less than the early-refresh margin is still used", async (t) => {
  const { up, stowage } = await setup(t);
  // Against the spec's 60 s minimum, but seen in the wild.
  up.on("/token", (_req, res) => {
    const body = JSON.stringify({ token: "t0ken", expires_in: 5 });
    res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
    res.end(body);
  });
  up.on("short-lived", (req, res) => {
    if (req.headers.authorization === "Bearer t0ken") return sendOciError(res, 404, "MANIFEST_UNKNOWN");
    sendOciError(res, 401, "UNAUTHORIZED", challenge(up));
  });
  const o = await attempt(`${stowage.url}/v2/other/manifests/short-lived`);
  await expectOciError(t, o, 404, "MANIFEST_UNKNOWN");
});

t.test("error statuses with nothing cached, and a 429 honoured for its Retry-After", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  up.on("broken", (_req, res) => sendOciError(res, 500, "UNKNOWN"));
  await expectOciError(t, await attempt(`${stowage.url}/v2/app/manifests/broken`), 503, "UNAVAILABLE");

  const bytes = randomBytes(1000);
  const digest = up.addBlob(bytes);
  up.on(digest, (_req, res) => sendOciError(res, 502, "UNKNOWN"), GET);
  await expectOciError(t, await attempt(blobUrl(digest)), 503, "UNAVAILABLE");

  up.on("busy", (_req, res) => sendOciError(res, 429, "TOOMANYREQUESTS", { "retry-after": "2" }));
  const limited = await attempt(`${stowage.url}/v2/app/manifests/busy`);
  await expectOciError(t, limited, 429, "TOOMANYREQUESTS");
  t.equal(limited.headers.get("retry-after"), "2", "Retry-After is passed on");

  // Inside the window Stowage does not knock again: the client is told to wait, the upstream sees nothing.
  const before = up.requests.length;
  const limitedBlob = await attempt(blobUrl(digest));
  await expectOciError(t, limitedBlob, 429, "TOOMANYREQUESTS");
  t.ok(Number(limitedBlob.headers.get("retry-after")) >= 1, "the client learns how long to wait");
  t.equal(up.requests.length, before, "no request reached the rate-limiting upstream");

  await sleep(2100);
  await afterFault(t, up, stowage, digest, bytes, limitedBlob);
});

t.test("a manifest whose bytes do not match its digest is refused and not cached", async (t) => {
  const { up, stowage } = await setup(t);
  const good = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"1".repeat(64)}`, size: 2 }, layers: [] }));
  const { digest } = up.addManifest("tampered", good);
  const forged = Buffer.from(good.toString().replace('"layers":[]', '"layers":[ ]'));
  const lying: Behaviour = (req, res) => {
    res.writeHead(200, { "content-type": OCI_MANIFEST, "content-length": forged.length, "docker-content-digest": digest });
    res.end(req.method === "HEAD" ? undefined : forged);
  };
  up.on(digest, lying);
  up.on("tampered", lying);
  const byDigest = await attempt(`${stowage.url}/v2/app/manifests/${digest}`);
  t.equal(byDigest.status, 502, "by digest: 502");
  t.notOk(byDigest.body.equals(forged), "the forged bytes are not served");
  const byTag = await attempt(`${stowage.url}/v2/app/manifests/tampered`);
  t.equal(byTag.status, 502, "by tag, with a Docker-Content-Digest the bytes do not match: 502");

  up.off(digest);
  up.off("tampered");
  const fixed = await attempt(`${stowage.url}/v2/app/manifests/${digest}`);
  t.equal(fixed.status, 200);
  t.ok(fixed.body.equals(good), "once the upstream is honest, the real manifest");
});

// ------------------------------------------------------- many clients at once

t.test("ten clients at once on a cold 8 MiB blob, one late, one giving up", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(8 * MiB);
  const digest = up.addBlob(bytes);
  up.slow(digest, 256 * 1024, 30); // about 1 s in all
  const clients = Array.from({ length: 10 }, () => attempt(blobUrl(digest)));

  const quitter = new AbortController();
  const quitting = (async () => {
    const res = await fetch(blobUrl(digest), { signal: AbortSignal.any([quitter.signal, AbortSignal.timeout(20_000)]) });
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
  t.ok((await within(20_000, "the quitting client", quitting)) >= MiB, "the quitting client read some before it left");
  t.equal(up.blobGets(digest), 1, "the upstream saw exactly one GET for the blob");
  await committed(stowage, digest);
  await storeHoldsOnlyVerified(t, stowage, digest);
  t.ok(await isStored(stowage, digest));
});

t.test("a client that never reads holds up neither the others nor the commit", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
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
  const stalledResponse = await within(20_000, "response headers", paused);
  t.equal(stalledResponse.statusCode, 200);

  const readers = await Promise.all([attempt(blobUrl(digest)), attempt(blobUrl(digest))]);
  for (const o of readers) t.ok(o.status === 200 && o.error === null && o.body.equals(bytes), "a reading client gets every byte");
  await committed(stowage, digest);
  await storeHoldsOnlyVerified(t, stowage, digest);
  t.ok(await isStored(stowage, digest), "committed while one client still had not read");

  // It may still read it all, late.
  const parts: Buffer[] = [];
  stalledResponse.on("data", (part: Buffer) => parts.push(part));
  await within(20_000, "the paused client's body", new Promise<void>((resolve, reject) => {
    stalledResponse.on("end", resolve);
    stalledResponse.on("error", reject);
    stalledResponse.on("aborted", () => reject(new Error("response aborted")));
    stalledResponse.resume();
  })).catch((err) => {
    stalledResponse.destroy();
    throw err;
  });
  t.ok(Buffer.concat(parts).equals(bytes), "the paused client, resumed after the commit, gets every byte");
  t.equal(up.blobGets(digest), 1, "one upstream GET");
});

t.test("a range of a blob still being fetched", async (t) => {
  const { up, blobUrl } = await setup(t);
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

t.test("KV says cached but the file is gone", async (t) => {
  const { up, stowage, blobUrl } = await setup(t);
  const bytes = randomBytes(MiB + 3);
  const digest = up.addBlob(bytes);
  const first = await attempt(blobUrl(digest));
  t.ok(first.body.equals(bytes));
  await committed(stowage, digest);
  await rm(blobPath(join(stowage.dataDir, "blobs"), digest));

  const head = await attempt(blobUrl(digest), { method: "HEAD" });
  t.equal(head.status, 200, "HEAD still answers");
  t.equal(head.headers.get("content-length"), String(bytes.length));

  const again = await attempt(blobUrl(digest));
  t.equal(again.status, 200);
  t.ok(again.error === null && again.body.equals(bytes), "fetched again from upstream, correct");
  t.equal(up.blobGets(digest), 2, "one more upstream GET");
  await waitFor("the file is back", () => isStored(stowage, digest), 5_000, 20).catch(() => {});
  await storeHoldsOnlyVerified(t, stowage, digest);
  t.ok(await isStored(stowage, digest), "the file is back");
});

// ------------------------------------------------------------------ outages

t.test("the upstream goes down after things were cached", async (t) => {
  const { up, stowage } = await setup(t);
  const layer = randomBytes(512 * 1024);
  const layerDigest = up.addBlob(layer);
  const uncachedDigest = up.addBlob(randomBytes(1000));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: layerDigest, size: layer.length },
    layers: [],
  }));
  const manifestDigest = up.addManifest("v1", manifest).digest;

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

// ---------------------------------------------- upstream protection, stuck clients

t.test("no more than --upstream-concurrency requests reach the upstream at once", async (t) => {
  const up = await startUpstream(t);
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--upstream-concurrency", "2", "--upstream-timeout", `${TIMEOUT_S}s`]);
  let now = 0;
  let most = 0;
  for (let i = 0; i < 8; i++) {
    const config = { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"a".repeat(64)}`, size: 2 };
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [], n: i }));
    const tag = `slow${i}`;
    up.addManifest(tag, bytes);
    up.on(tag, async (_req, res) => {
      most = Math.max(most, ++now);
      await sleep(200);
      now--;
      res.writeHead(200, { "content-type": OCI_MANIFEST, "content-length": bytes.length });
      res.end(bytes);
    });
  }
  const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => fetch(`${stowage.url}/v2/app/manifests/slow${i}`)));
  t.same(answers.map((a) => a.status), Array(8).fill(200), "every client is answered");
  await Promise.all(answers.map((a) => a.arrayBuffer()));
  t.equal(most, 2, "the upstream saw at most 2 requests at a time");
});

// Node closes the idle socket, and the blob body's own watchdog ends the response (as on Deno).
t.test("a client that stops reading is cut off after --client-timeout", async (t) => {
  const up = await startUpstream(t);
  // 2 s, not less: on a loaded machine a well-behaved client can see a pause of a second.
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--client-timeout", "2s", "--upstream-timeout", `${TIMEOUT_S}s`]);
  const bytes = randomBytes(64 * MiB); // far more than socket buffers hold
  const digest = up.addBlob(bytes);
  const warm = await fetch(`${stowage.url}/v2/app/blobs/${digest}`);
  t.equal(sha256(new Uint8Array(await warm.arrayBuffer())), digest, "cached first");
  // Three times --client-timeout without reading.
  const received = await stallingReader(stowage.url, `/v2/app/blobs/${digest}`, 6000, 10_000);
  t.ok(received < bytes.length, `the server closed the stuck connection before sending the blob (${received} of ${bytes.length} bytes after the pause)`);
  t.ok(stowage.logs.some((l) => l.includes("for --client-timeout")), "the operator is told");
  const again = await fetch(`${stowage.url}/v2/app/blobs/${digest}`);
  t.equal(sha256(new Uint8Array(await again.arrayBuffer())), digest, "others are still served");
});

// Node ends a kept-alive connection that stays idle between requests (its keepAliveTimeout, 5 s)
// through the same 'timeout' event as a stuck client: that is housekeeping, not a client to report.
t.test("a kept-alive connection left idle between requests is closed without a client-timeout warning", async (t) => {
  const up = await startUpstream(t);
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--client-timeout", "2s"]);
  const { connect } = await import("node:net");
  const { port, hostname } = new URL(stowage.url);
  const socket = connect(Number(port), hostname);
  let answer = "";
  socket.on("error", () => {});
  socket.on("data", (d: Buffer) => (answer += d.toString("latin1")));
  const closed = new Promise<number>((resolve) => {
    const from = Date.now();
    socket.on("close", () => resolve(Date.now() - from));
  });
  socket.write(`GET /v2/ HTTP/1.1\r\nhost: ${stowage.url.slice(7)}\r\n\r\n`);
  const after = await within(15_000, "the server closes the idle connection", closed);
  t.match(answer, /^HTTP\/1\.1 200 /, "the request was answered on it first");
  t.ok(after >= 1500, `it was closed for being idle, after ${after} ms`);
  t.notOk(stowage.logs.some((l) => l.includes("for --client-timeout")), "no client-timeout warning for it");
});
