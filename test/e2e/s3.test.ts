// The S3 blob store against a real S3 implementation (Ceph RGW): pulls through Stowage with
// --storage s3://..., checked object by object in the bucket.
import t, { type Test } from "tap";
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { CreateMultipartUploadCommand, DeleteObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { S3BlobStore } from "../../src/storage/s3/s3-store.ts";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../harness/images.ts";
import { type Rgw, rgwUnavailable, startRgw } from "../harness/rgw.ts";
import { startHttpFaultProxy } from "./http-fault-proxy.ts";
import { startTcpGate } from "./tcp-gate.ts";
import { blobStoreContract } from "../support/blob-store-contract.ts";
import { startContainerd } from "../harness/containerd.ts";
import { makeTempDir, using } from "../harness/processes.ts";
import { type RecordedRequest, startRecordingProxy } from "../harness/recording-proxy.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { startStowage } from "../harness/stowage.ts";

const unavailable = rgwUnavailable();
if (unavailable) {
  t.plan(0, `skipped: ${unavailable}`);
} else {
  await main();
}

async function main(): Promise<void> {
  let images: TestImage[] = [];
  let registry: Awaited<ReturnType<typeof startRegistry>>;
  let rgw: Rgw;
  let scratch = "";

  const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
  const blobGets = (rs: RecordedRequest[]) => rs.filter((r) => r.method === "GET" && r.path.includes("/blobs/"));
  const storageFlag = (prefix: string) => `s3://${rgw.bucket}/${prefix}?endpoint=${rgw.endpoint}`;
  const stowageEnv = () => ({
    AWS_ACCESS_KEY_ID: rgw.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: rgw.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  });
  /** Stowage whose S3 requests go through `address` (a gate or fault proxy in front of RGW). */
  const stowageVia = (tt: Test, upstreamUrl: string, address: string, prefix: string) =>
    using(tt, startStowage(
      ["--upstream", `local=${upstreamUrl}`, "--storage", `s3://${rgw.bucket}/${prefix}?endpoint=http://${address}`, "--log-level", "warn"],
      { env: stowageEnv() },
    ));
  const rgwPort = () => Number(new URL(rgw.endpoint).port);
  async function keysUnder(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await rgw.client.send(new ListObjectsV2Command({ Bucket: rgw.bucket, Prefix: prefix, ContinuationToken: token }));
      keys.push(...(page.Contents ?? []).map((o) => o.Key ?? ""));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys;
  }
  /** Commits finish after the client has its last byte, so bucket contents are polled (10 s at most). */
  async function eventually<T>(probe: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
    let v = await probe();
    for (let i = 0; i < 100 && !done(v); i++) {
      await new Promise((r) => setTimeout(r, 100));
      v = await probe();
    }
    return v;
  }
  async function copyAll(url: string, img: TestImage, label: string): Promise<string> {
    const out = join(scratch, `${label}-${img.repo.replace(/\W/g, "_")}-${Math.random().toString(36).slice(2, 8)}`);
    const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
      `docker://${new URL(url).host}/local/${img.repo}:${img.tag}`, `dir:${out}`]);
    if (r.code !== 0) throw new Error(`skopeo copy ${img.repo} failed (${r.code}): ${r.stderr}`);
    return out;
  }
  /** One series of /metrics, e.g. `stowage_store_bypass_total{op="write"}`; 0 when absent. */
  async function metric(url: string, series: string): Promise<number> {
    // Once more on a socket error: a pooled keep-alive connection may have just been closed by the server.
    const get = () => fetch(`${url}/metrics`).then((r) => r.text());
    const text = await get().catch(get);
    return Number(new RegExp(`^${series.replace(/[{}"]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  }
  /** Once S3 works again: the blobs that were served uncached are fetched once more, and stored. */
  async function pullsStoreAgain(tt: Test, url: string, upstream: Awaited<ReturnType<typeof startRecordingProxy>>, wanted: TestImage[], prefix: string, label: string): Promise<void> {
    upstream.reset();
    for (const img of wanted) await checkCopy(tt, await copyAll(url, img, label), img);
    const blobCount = new Set(wanted.flatMap((i) => i.blobs.map((b) => b.digest))).size;
    tt.equal(blobGets(upstream.requests).length, blobCount, "once S3 works again, the uncached blobs are fetched again");
    const blobKeys = [...new Set(wanted.flatMap((i) => i.blobs.map((b) => blobKey(prefix, b.digest))))];
    const stored = await eventually(() => keysUnder(`${prefix}/blobs/`), (ks) => blobKeys.every((k) => ks.includes(k)));
    tt.same(blobKeys.filter((k) => !stored.includes(k)), [], "and now stored");
  }
  const imageNamed = (name: string) => images.find((i) => i.repo.endsWith(`/${name}`))!;
  const blobKey = (prefix: string, digest: string) => `${prefix}/blobs/sha256/${digest.slice(7)}`;
  async function checkCopy(tt: Test, dir: string, img: TestImage): Promise<void> {
    tt.equal(sha256(await readFile(join(dir, "manifest.json"))), img.digest, `${img.repo}: manifest digest`);
    const files = new Set(await readdir(dir));
    for (const b of img.blobs) {
      const hex = b.digest.slice(7);
      tt.ok(files.has(hex) && sha256(await readFile(join(dir, hex))) === b.digest, `${img.repo}: blob ${hex.slice(0, 12)} intact`);
    }
  }

  t.before(async () => {
    scratch = await makeTempDir("s3");
    [images, rgw] = await Promise.all([buildTestImages(DEFAULT_IMAGE_CACHE_DIR), startRgw()]);
    t.comment(`Ceph RGW ready in ${rgw.readyMs} ms`);
    registry = await startRegistry();
    await pushTestImages(registry.url, images);
  });
  t.teardown(async () => {
    await registry?.stop();
    await rgw?.stop();
  });

  t.test("pulls through an S3 bucket: cold, warm, ranges, a blob lost from the bucket", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const prefix = "main/cache";
    const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--storage", storageFlag(prefix), "--log-level", "warn"], { env: stowageEnv() }));

    for (const img of images) await checkCopy(tt, await copyAll(stowage.url, img, "cold"), img);
    tt.ok(blobGets(upstream.requests).length > 0, "cold pulls fetched blobs upstream");

    const unique = new Map(images.flatMap((img) => img.blobs.map((b) => [b.digest, b.size] as const)));
    const wanted = [...unique.keys()].map((d) => `${prefix}/blobs/sha256/${d.slice(7)}`);
    const keys = new Set(await eventually(() => keysUnder(`${prefix}/blobs/sha256/`), (ks) => wanted.every((k) => ks.includes(k))));
    for (const digest of unique.keys()) tt.ok(keys.has(`${prefix}/blobs/sha256/${digest.slice(7)}`), `bucket holds ${digest.slice(0, 19)}`);
    const uploads = await eventually(() => rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket })), (u) => !u.Uploads?.length);
    tt.same(uploads.Uploads ?? [], [], "no multipart upload left open");

    upstream.reset();
    for (const img of images) await checkCopy(tt, await copyAll(stowage.url, img, "warm"), img);
    tt.same(blobGets(upstream.requests), [], "warm pulls send no blob request upstream");

    // A range of the largest blob, from the bucket by a ranged GET.
    const [bigDigest, bigSize] = [...unique.entries()].sort((a, b) => b[1] - a[1])[0]!;
    const big = images.find((i) => i.blobs.some((b) => b.digest === bigDigest))!;
    const [start, end] = [bigSize - 1_000_000, bigSize - 1];
    const ranged = await fetch(`${stowage.url}/v2/local/${big.repo}/blobs/${bigDigest}`, { headers: { Range: `bytes=${start}-${end}` } });
    tt.equal(ranged.status, 206, "Range on a cached blob is a 206");
    tt.equal(ranged.headers.get("content-range"), `bytes ${start}-${end}/${bigSize}`);
    const part = new Uint8Array(await ranged.arrayBuffer());
    const whole = await fetch(`${stowage.url}/v2/local/${big.repo}/blobs/${bigDigest}`);
    const wholeBytes = new Uint8Array(await whole.arrayBuffer());
    tt.equal(sha256(wholeBytes), bigDigest, "the whole blob from the bucket is intact");
    tt.ok(Buffer.from(part).equals(Buffer.from(wholeBytes.subarray(start, end + 1))), "the range has the right bytes");
    const rangedGet = new RegExp(`"GET /${rgw.bucket}/${prefix}/blobs/sha256/${bigDigest.slice(7)}(?:\\?[^ "]*)? HTTP/1.1" 206 1000000 `);
    tt.match(await eventually(() => rgw.log(), (l) => rangedGet.test(l)), rangedGet, "served by a ranged GET on the bucket");
    tt.same(blobGets(upstream.requests), [], "ranges and full reads of cached blobs send nothing upstream");

    // A blob deleted behind Stowage's back is fetched again, not reported as broken.
    const small = images.find((i) => i.repo.endsWith("oci-single"))!;
    const victim = small.blobs[0]!;
    const victimKey = `${prefix}/blobs/sha256/${victim.digest.slice(7)}`;
    await rgw.client.send(new DeleteObjectCommand({ Bucket: rgw.bucket, Key: victimKey }));
    const again = await fetch(`${stowage.url}/v2/local/${small.repo}/blobs/${victim.digest}`);
    tt.equal(again.status, 200, "a blob missing from the bucket is served");
    tt.equal(sha256(new Uint8Array(await again.arrayBuffer())), victim.digest, "with the right bytes");
    tt.equal(blobGets(upstream.requests).filter((r) => r.path.endsWith(victim.digest)).length, 1, "fetched from upstream again");
    tt.ok((await eventually(() => keysUnder(victimKey), (ks) => ks.includes(victimKey))).includes(victimKey), "and stored in the bucket again");
  });

  t.test("containerd pulls through the S3 store: ctr images pull cold, then warm from the bucket on a fresh containerd", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const prefix = "containerd";
    const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--storage", storageFlag(prefix), "--log-level", "warn"], { env: stowageEnv() }));
    const host = new URL(stowage.url).host;
    const pull = async (img: TestImage, label: string) => {
      // A fresh containerd each time: its own content store is empty, so every blob comes through Stowage.
      const containerd = await using(tt, startContainerd());
      const ref = `${host}/local/${img.repo}:${img.tag}`;
      const pulled = await containerd.ctr(["images", "pull", "--platform", "linux/arm64", "--snapshotter", "native", ref]);
      tt.equal(pulled.code, 0, `${label}: ctr images pull ${img.repo}: ${pulled.stderr.slice(-500)}`);
      const line = (await containerd.ctr(["images", "ls"])).stdout.split("\n").find((l) => l.startsWith(ref)) ?? "";
      tt.match(line, img.digest, `${label}: containerd recorded the index digest of ${img.repo}`);
      await containerd.stop();
    };
    const wanted = [imageNamed("oci-index"), imageNamed("docker-list")];
    for (const img of wanted) await pull(img, "cold");
    tt.ok(blobGets(upstream.requests).length > 0, "the cold pulls fetched blobs upstream");
    const stored = await eventually(() => keysUnder(`${prefix}/blobs/`), (ks) => ks.length > 0 && !ks.some((k) => k.includes("/_")));
    tt.ok(stored.length > 0, "and the bucket holds them");
    upstream.reset();
    for (const img of wanted) await pull(img, "warm");
    tt.same(blobGets(upstream.requests), [], "the warm pulls send no blob request upstream");
  });

  t.test("corrupted upstream bytes leave nothing under the final key", async (tt) => {
    const corrupt = await using(tt, startRecordingProxy(registry.url, { corruptBlobs: true }));
    const prefix = "corrupt";
    const stowage = await using(tt, startStowage(["--upstream", `local=${corrupt.url}`, "--storage", storageFlag(prefix), "--log-level", "error"], { env: stowageEnv() }));
    const big = images.find((i) => i.repo.endsWith("big-layer"))!;
    for (const blob of big.blobs) {
      const res = await fetch(`${stowage.url}/v2/local/${big.repo}/blobs/${blob.digest}`);
      const body = new Uint8Array(await res.arrayBuffer().catch(() => new ArrayBuffer(0)));
      tt.not(sha256(body), blob.digest, `${blob.digest.slice(0, 19)}: corrupted bytes are never served as the blob`);
    }
    tt.same(await keysUnder(`${prefix}/blobs/`), [], "nothing under the final keys");
    // The abort runs after the client's response has ended, so give it a moment.
    let open: unknown[] = [];
    for (let i = 0; i < 50; i++) {
      open = (await rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: `${prefix}/` }))).Uploads ?? [];
      if (open.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    tt.same(open, [], "the multipart uploads were aborted");
  });

  t.test("multipart uploads a crash left behind are aborted, others' are not", async (tt) => {
    const mine = "sweep/blobs/sha256/0000";
    const other = "elsewhere/blobs/sha256/0000";
    for (const Key of [mine, other]) await rgw.client.send(new CreateMultipartUploadCommand({ Bucket: rgw.bucket, Key }));
    const spoolDir = join(scratch, "sweep-spool");
    const store = await S3BlobStore.open({ bucket: rgw.bucket, prefix: "sweep", endpoint: rgw.endpoint, region: "us-east-1", credentials: rgw.credentials, spoolDir });
    tt.teardown(() => store.close());
    tt.equal(await store.abortStaleUploads(Date.now() - 60_000), 0, "a recent upload may belong to a running fetch: kept");
    tt.equal(await store.abortStaleUploads(Date.now() + 60_000), 1, "an old one under the store's prefix is aborted");
    const left = (await rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket }))).Uploads ?? [];
    tt.same(left.map((u) => u.Key), [other], "uploads outside the prefix are left alone");
  });

  t.test("S3 down: pulls are served from upstream uncached, and the cache fills again once S3 is back", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const gate = await startTcpGate("127.0.0.1", rgwPort());
    tt.teardown(() => gate.stop());
    const prefix = "outage";
    const stowage = await stowageVia(tt, upstream.url, gate.address, prefix);
    const wanted = [imageNamed("oci-index"), imageNamed("big-layer")];
    const blobCount = new Set(wanted.flatMap((i) => i.blobs.map((b) => b.digest))).size;

    gate.set("down");
    for (const img of wanted) await checkCopy(tt, await copyAll(stowage.url, img, "s3-down"), img);
    tt.ok(await metric(stowage.url, 'stowage_store_bypass_total{op="write"}') >= blobCount, "every blob served uncached is counted");
    tt.match(stowage.logs(), /could not keep a verified blob/, "and logged for the operator");
    gate.set("open");
    tt.same(await keysUnder(`${prefix}/`), [], "nothing reached the bucket while S3 was down");

    await pullsStoreAgain(tt, stowage.url, upstream, wanted, prefix, "s3-back");

    upstream.reset();
    gate.set("down");
    for (const img of wanted) await checkCopy(tt, await copyAll(stowage.url, img, "s3-down-warm"), img);
    tt.ok(blobGets(upstream.requests).length >= 1, "cached blobs the store cannot read are served from upstream");
    tt.ok(await metric(stowage.url, 'stowage_store_bypass_total{op="read"}') >= 1, "and counted");
    gate.set("open");
  });

  t.test("S3 answers 503 to every write: pulls are served uncached, nothing is left in the bucket, then it heals", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const proxy = await startHttpFaultProxy("127.0.0.1", rgwPort());
    tt.teardown(() => proxy.stop());
    const prefix = "slowdown";
    const stowage = await stowageVia(tt, upstream.url, proxy.address, prefix);
    const wanted = [imageNamed("oci-index"), imageNamed("big-layer")];
    const blobCount = new Set(wanted.flatMap((i) => i.blobs.map((b) => b.digest))).size;

    proxy.failWhen((req) => req.method === "PUT" || req.method === "POST");
    for (const img of wanted) await checkCopy(tt, await copyAll(stowage.url, img, "s3-503"), img);
    tt.ok((proxy.failed.get("PUT") ?? 0) + (proxy.failed.get("POST") ?? 0) > 0, "S3 was asked to store and refused");
    const bypassed = await eventually(() => metric(stowage.url, 'stowage_store_bypass_total{op="write"}'), (n) => n >= blobCount);
    tt.ok(bypassed >= blobCount, `every blob served uncached is counted (${bypassed})`);
    tt.same(await keysUnder(`${prefix}/`), [], "nothing reached the bucket");
    const open = (await rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: `${prefix}/` }))).Uploads ?? [];
    tt.same(open, [], "no multipart upload left open");

    // Commits still retrying against the refusing S3 would be joined by the next pull: let them end.
    tt.equal(await eventually(() => metric(stowage.url, "stowage_inflight_fetches"), (n) => n === 0), 0, "every fetch has ended");
    proxy.failWhen(null);
    await pullsStoreAgain(tt, stowage.url, upstream, wanted, prefix, "s3-503-healed");
  });

  t.test("S3 hangs (connections accepted, nothing answered): pulls still complete, uncached, in seconds", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const gate = await startTcpGate("127.0.0.1", rgwPort());
    tt.teardown(() => gate.stop());
    const prefix = "stall";
    const stowage = await stowageVia(tt, upstream.url, gate.address, prefix);
    const img = imageNamed("oci-index");
    gate.set("stall");
    const started = Date.now();
    await checkCopy(tt, await copyAll(stowage.url, img, "s3-stall"), img);
    const seconds = (Date.now() - started) / 1000;
    // Each manifest waits for S3 at most 2 s, blobs not at all (the /readyz below waits its 15 s).
    tt.ok(seconds < 20, `the pull completed in ${seconds.toFixed(1)} s`);
    const ready = await fetch(`${stowage.url}/readyz`);
    tt.equal(ready.status, 503, "/readyz says the store is failing");
    tt.match(JSON.stringify(await ready.json()), /"store":"failing \(request id [^)]+\)/, "and which check, with a request id");
    tt.match(stowage.logs(), /did not answer/, "the log says why");
    tt.match(stowage.logs(), /could not keep a manifest/, "the operator is told what was not cached");
    tt.same(await keysUnder(`${prefix}/`), [], "nothing reached the bucket");
    gate.set("open");
  });

  t.test("two instances sharing a bucket and a KV: each serves the other's cache; concurrent misses download once", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const prefix = "fleet";
    const args = ["--upstream", `local=${upstream.url}`, "--storage", storageFlag(prefix), "--kv", join(scratch, "fleet-kv.sqlite3"), "--log-level", "info"];
    const [one, two] = await Promise.all([using(tt, startStowage(args, { env: stowageEnv() })), using(tt, startStowage(args, { env: stowageEnv() }))]);

    const img = imageNamed("oci-index");
    await checkCopy(tt, await copyAll(one.url, img, "fleet-one"), img);
    await eventually(() => keysUnder(`${prefix}/blobs/`), (ks) => img.blobs.every((b) => ks.includes(blobKey(prefix, b.digest))));
    upstream.reset();
    await checkCopy(tt, await copyAll(two.url, img, "fleet-two"), img);
    tt.same(upstream.requests.map((r) => `${r.method} ${r.path}`), [], "instance 2 serves instance 1's pull without asking upstream anything");

    const big = imageNamed("big-layer");
    const layer = [...big.blobs].sort((a, b) => b.size - a.size)[0]!;
    upstream.reset();
    const pulls = await Promise.all([one, two].map(async (s) => {
      const res = await fetch(`${s.url}/v2/local/${big.repo}/blobs/${layer.digest}`);
      return { status: res.status, digest: sha256(new Uint8Array(await res.arrayBuffer())) };
    }));
    tt.same(pulls, [{ status: 200, digest: layer.digest }, { status: 200, digest: layer.digest }], "both instances serve the blob intact");
    tt.equal(blobGets(upstream.requests).filter((r) => r.path.endsWith(layer.digest)).length, 1, "one upstream download for both");
    const waits = (await metric(one.url, "stowage_lease_waits_total")) + (await metric(two.url, "stowage_lease_waits_total"));
    tt.equal(waits, 1, "the other instance waited on the KV lease");
    tt.ok((await keysUnder(blobKey(prefix, layer.digest))).includes(blobKey(prefix, layer.digest)), "one object in the bucket");
    const open = (await rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: `${prefix}/` }))).Uploads ?? [];
    tt.same(open, [], "no multipart upload left open");
  });

  t.test("the Deno Deploy profile: no writable disk, hashing inline, S3 plus the default KV", async (tt) => {
    const upstream = await using(tt, startRecordingProxy(registry.url));
    const prefix = "deploy";
    const stowage = await using(tt, startStowage(
      ["--upstream", `local=${upstream.url}`, "--storage", storageFlag(prefix), "--hash-workers", "0", "--log-level", "info"],
      { env: stowageEnv(), runtime: "deno", denoPermissions: ["--allow-net", "--allow-read", "--allow-env", "--allow-sys", "--deny-write"] },
    ));
    tt.match(stowage.logs(), /no writable disk: running diskless/, "start-up says it runs without a disk");
    tt.match(stowage.logs(), /platform's default KV/, "and which KV it uses");
    tt.match(stowage.logs(), /hashing blobs on the main thread/, "and how it hashes");

    // With no spool, a client that falls behind the download's memory window continues from the bucket.
    const big = imageNamed("big-layer");
    const layer = [...big.blobs].sort((a, b) => b.size - a.size)[0]!;
    const url = `${stowage.url}/v2/local/${big.repo}/blobs/${layer.digest}`;
    const laggard = await fetch(url);
    const eager = await fetch(url);
    tt.equal(sha256(new Uint8Array(await eager.arrayBuffer())), layer.digest, "a client reading at full speed gets the blob");
    await eventually(() => keysUnder(blobKey(prefix, layer.digest)), (ks) => ks.length === 1);
    tt.equal(sha256(new Uint8Array(await laggard.arrayBuffer())), layer.digest, "a client that stopped reading gets it intact from the bucket");
    tt.equal(blobGets(upstream.requests).length, 1, "one upstream download for both");

    for (const img of [imageNamed("oci-index"), big]) await checkCopy(tt, await copyAll(stowage.url, img, "deploy-cold"), img);
    upstream.reset();
    for (const img of [imageNamed("oci-index"), big]) await checkCopy(tt, await copyAll(stowage.url, img, "deploy-warm"), img);
    tt.same(blobGets(upstream.requests), [], "warm pulls come from the bucket");
  });

  // The BlobStore contract the unit tests run against an in-memory S3, here against RGW.
  for (const spooled of [true, false]) {
    let n = 0;
    void blobStoreContract(t, `S3 store on RGW ${spooled ? "with a spool" : "without a disk"}`, async () => {
      const prefix = `contract-${spooled ? "spool" : "diskless"}-${++n}`;
      const spoolDir = spooled ? join(scratch, `${prefix}-spool`) : null;
      const store = await S3BlobStore.open({ bucket: rgw.bucket, prefix, endpoint: rgw.endpoint, region: "us-east-1", credentials: rgw.credentials, spoolDir });
      const openUploads = async () =>
        (await rgw.client.send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: `${prefix}/` }))).Uploads ?? [];
      return {
        store,
        readers: spooled,
        leftovers: async () => [...(spoolDir ? await readdir(spoolDir) : []), ...(await openUploads()).map((u) => `multipart upload of ${u.Key}`)],
        close: async () => store.close(),
      };
    });
  }
}
