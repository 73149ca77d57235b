// Pulls every test image through Stowage with real clients (skopeo, containerd's ctr) from a
// real upstream (distribution), and checks what a user would check: exact digests, cold and
// warm, and what reaches the upstream.
import t, { type Test } from "tap";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage, testImage } from "../harness/images.ts";
import { startContainerd } from "../harness/containerd.ts";
import { makeTempDir, using } from "../harness/processes.ts";
import { type RecordedRequest, startRecordingProxy } from "../harness/recording-proxy.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { startStowage } from "../harness/stowage.ts";
import { fileSha256, sha256, stallingReader } from "../support/oci.ts";

type Registry = Awaited<ReturnType<typeof startRegistry>>;
type Stowage = Awaited<ReturnType<typeof startStowage>>;

let images: TestImage[] = [];
let registry: Registry;
let scratch = "";

const image = (name: string): TestImage => testImage(images, name);
const hostOf = (url: string) => new URL(url).host;
const blobGets = (requests: RecordedRequest[]) => requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/"));

/** skopeo copy --all through Stowage into a dir: layout; returns the dir. Throws with skopeo's stderr. */
async function copyThrough(stowage: Stowage, ref: string, label: string): Promise<string> {
  const out = join(scratch, `${label}-${Math.random().toString(36).slice(2, 8)}`);
  const r = await skopeo([
    "--insecure-policy",
    "copy",
    "--quiet",
    "--all",
    "--preserve-digests",
    "--src-tls-verify=false",
    `docker://${hostOf(stowage.url)}/${ref}`,
    `dir:${out}`,
  ]);
  if (r.code !== 0) throw new Error(`skopeo copy ${ref} failed (${r.code}): ${r.stderr}`);
  return out;
}

/** Every file in a skopeo dir: copy is named by its digest (blobs, child manifests) or is the top manifest. */
async function checkDirCopy(tt: Test, dir: string, img: TestImage): Promise<void> {
  tt.equal(await fileSha256(join(dir, "manifest.json")), img.digest, `${img.repo}: top-level manifest digest`);
  const files = new Set(await readdir(dir));
  for (const blob of img.blobs) {
    const hex = blob.digest.slice("sha256:".length);
    tt.ok(files.has(hex), `${img.repo}: has blob ${hex.slice(0, 12)}`);
    if (files.has(hex)) tt.equal(await fileSha256(join(dir, hex)), blob.digest, `${img.repo}: blob ${hex.slice(0, 12)} intact`);
  }
  for (const child of img.manifests) {
    const hex = child.digest.slice("sha256:".length);
    tt.equal(await fileSha256(join(dir, `${hex}.manifest.json`)), child.digest, `${img.repo}: child manifest ${hex.slice(0, 12)}`);
  }
}

/** Every blob file in Stowage's store must hash to its name: only verified content is ever committed. */
async function storeIsVerified(tt: Test, dataDir: string): Promise<string[]> {
  const root = join(dataDir, "blobs", "sha256");
  const found: string[] = [];
  for (const prefix of await readdir(root).catch(() => [] as string[])) {
    for (const hex of await readdir(join(root, prefix))) {
      found.push(hex);
      tt.equal(await fileSha256(join(root, prefix, hex)), `sha256:${hex}`, `stored ${hex.slice(0, 12)} matches its digest`);
    }
  }
  return found;
}

t.before(async () => {
  scratch = await makeTempDir("pull");
  images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  registry = await startRegistry();
  await pushTestImages(registry.url, images);
});

t.teardown(async () => {
  await registry?.stop();
});

t.test("skopeo copy --all of every image, cold then warm, digest-exact; the warm pull sends nothing upstream", async (tt) => {
  const upstream = await using(tt, startRecordingProxy(registry.url));
  const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--log-level", "warn"]));

  for (const img of images) {
    const dir = await copyThrough(stowage, `local/${img.repo}:${img.tag}`, "cold");
    await checkDirCopy(tt, dir, img);
  }
  const coldBlobGets = blobGets(upstream.requests).length;
  tt.ok(coldBlobGets > 0, `cold pulls fetched ${coldBlobGets} blobs from upstream`);

  upstream.reset();
  for (const img of images) {
    const dir = await copyThrough(stowage, `local/${img.repo}:${img.tag}`, "warm");
    await checkDirCopy(tt, dir, img);
  }
  tt.same(blobGets(upstream.requests), [], "warm pulls send no blob request upstream");
  tt.same(upstream.requests, [], "inside the tag freshness window, warm pulls send nothing upstream at all");

  // What an operator's dashboard would show: one upstream copy of every blob, and hits for the warm pass.
  const metrics = await (await fetch(`${stowage.url}/metrics`)).text();
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, "\\$&")} (\\S+)$`, "m").exec(metrics)?.[1] ?? NaN);
  const unique = new Map(images.flatMap((img) => img.blobs.map((b) => [b.digest, b.size] as const)));
  const blobBytes = [...unique.values()].reduce((a, b) => a + b, 0);
  tt.equal(value('stowage_upstream_received_bytes_total{upstream="local"}'), blobBytes, "metrics: exactly one upstream copy of every blob");
  tt.ok(value('stowage_cache_hits_total{kind="blob"}') >= unique.size, "metrics: the warm pass was served as blob hits");
  tt.ok(value("stowage_served_from_cache_bytes_total") >= blobBytes, "metrics: bytes served from cache");
  tt.equal(value("stowage_inflight_fetches"), 0, "metrics: no fetch left in flight");

  // The default upstream serves names without an upstream prefix too.
  const single = image("oci-single");
  const inspect = await skopeo(["inspect", "--raw", "--tls-verify=false", `docker://${hostOf(stowage.url)}/${single.repo}:v1`]);
  tt.equal(inspect.code, 0, "skopeo inspect via the default upstream");
  tt.equal(sha256(inspect.stdout), single.digest, "raw manifest is byte-exact");
  await storeIsVerified(tt, stowage.dataDir);
});

t.test("containerd: ctr content fetch, images pull --platform linux/arm64, and mirror mode (?ns=)", async (tt) => {
  const upstream = await using(tt, startRecordingProxy(registry.url));
  const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--log-level", "info"]));
  const containerd = await using(tt, startContainerd());
  const host = hostOf(stowage.url);

  const index = image("oci-index");
  const fetched = await containerd.ctr(["content", "fetch", "--all-platforms", `${host}/local/${index.repo}:v1`]);
  tt.equal(fetched.code, 0, `ctr content fetch: ${fetched.stderr.slice(-500)}`);
  const content = await containerd.ctr(["content", "ls", "-q"]);
  for (const blob of index.blobs) tt.match(content.stdout, blob.digest, `content store has ${blob.digest.slice(0, 19)}`);

  for (const name of ["oci-index", "docker-list"]) {
    const img = image(name);
    const ref = `${host}/local/${img.repo}:v1`;
    const pulled = await containerd.ctr(["images", "pull", "--platform", "linux/arm64", "--snapshotter", "native", ref]);
    tt.equal(pulled.code, 0, `ctr images pull ${name}: ${pulled.stderr.slice(-500)}`);
    const listed = await containerd.ctr(["images", "ls"]);
    const line = listed.stdout.split("\n").find((l) => l.startsWith(ref));
    tt.match(line ?? "", img.digest, `${name}: containerd recorded the index digest`);
  }

  // Mirror mode: containerd asks Stowage for the upstream's own host name and adds ?ns=<host>.
  const hostsDir = join(scratch, "hosts");
  const upstreamHost = hostOf(upstream.url);
  await mkdir(join(hostsDir, upstreamHost), { recursive: true });
  await writeFile(
    join(hostsDir, upstreamHost, "hosts.toml"),
    `server = "http://${upstreamHost}"\n\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`,
  );
  const single = image("docker-single");
  const mirrored = await containerd.ctr(["images", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", `${upstreamHost}/${single.repo}:v1`]);
  tt.equal(mirrored.code, 0, `ctr pull through the mirror: ${mirrored.stderr.slice(-500)}`);
  tt.match(stowage.logs(), `"path":"/v2/${single.repo}/manifests/v1","status":200`, "the pull went through Stowage as a mirror");

  const unknown = await fetch(`${stowage.url}/v2/library/alpine/manifests/latest?ns=quay.io`);
  tt.equal(unknown.status, 404, "a mirror request for a registry Stowage does not proxy is a 404 (containerd tries its next host)");
  tt.equal((await unknown.json()).errors[0].code, "NAME_UNKNOWN");
});

t.test("10 concurrent cold pulls of the large image cause one upstream blob fetch", async (tt) => {
  const upstream = await using(tt, startRecordingProxy(registry.url));
  const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--log-level", "warn"]));
  const big = image("big-layer");
  const started = Date.now();
  const dirs = await Promise.all(Array.from({ length: 10 }, (_, i) => copyThrough(stowage, `local/${big.repo}:v1`, `concurrent${i}`)));
  tt.comment(`10 concurrent cold pulls of ${big.repo}: ${Date.now() - started} ms`);
  for (const dir of dirs) await checkDirCopy(tt, dir, big);
  for (const blob of big.blobs) {
    const gets = blobGets(upstream.requests).filter((r) => r.path.endsWith(blob.digest));
    tt.equal(gets.length, 1, `one upstream GET for blob ${blob.digest.slice(0, 19)} (${blob.size} bytes)`);
  }
  await storeIsVerified(tt, stowage.dataDir);
});

t.test("a client that stops reading a blob is cut off after --client-timeout; others are still served", async (tt) => {
  const stowage = await using(tt, startStowage(["--upstream", `local=${registry.url}`, "--client-timeout", "1s", "--log-level", "warn"]));
  const big = image("big-layer");
  const layer = [...big.blobs].sort((a, b) => b.size - a.size)[0]!;
  const path = `/v2/local/${big.repo}/blobs/${layer.digest}`;
  const warm = await fetch(stowage.url + path);
  tt.equal(sha256(new Uint8Array(await warm.arrayBuffer())), layer.digest, "cached first");
  // Four times --client-timeout without reading.
  const received = await stallingReader(stowage.url, path, 4000, 20_000);
  tt.ok(received < layer.size, `the stuck connection was closed before the blob was sent (${received} of ${layer.size} bytes after the pause)`);
  tt.match(stowage.logs(), /--client-timeout/, "the operator is told");
  const again = await fetch(stowage.url + path);
  tt.equal(sha256(new Uint8Array(await again.arrayBuffer())), layer.digest, "others are still served");
});

t.test("a stopped upstream: cached tags are still served, a miss is a clear 503", async (tt) => {
  const upstream = await using(tt, startRecordingProxy(registry.url));
  // --tag-ttl 0: every tag pull would revalidate, so only stale-if-error can serve it.
  const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--tag-ttl", "0", "--upstream-timeout", "3s"]));
  const cached = image("oci-index");
  await copyThrough(stowage, `local/${cached.repo}:v1`, "before-outage");
  await upstream.stop();

  const dir = await copyThrough(stowage, `local/${cached.repo}:v1`, "during-outage");
  await checkDirCopy(tt, dir, cached);
  tt.match(stowage.logs(), "upstream unavailable; serving the last known digest", "the operator is told it served stale");

  const miss = await fetch(`${stowage.url}/v2/local/${image("docker-single").repo}/manifests/v1`);
  tt.equal(miss.status, 503, "an uncached image fails with 503");
  const body = await miss.json();
  tt.equal(body.errors[0].code, "UNAVAILABLE");
  tt.match(body.errors[0].message, "upstream", "the message says the upstream is the problem");
});

t.test("an upstream serving corrupted bytes leaves nothing in the cache; a good upstream then heals it", async (tt) => {
  const corrupt = await using(tt, startRecordingProxy(registry.url, { corruptBlobs: true }));
  const img = image("oci-single");
  const first = await using(tt, startStowage(["--upstream", `local=${corrupt.url}`, "--log-level", "warn"]));
  const dataDir = first.dataDir;
  const failed = await skopeo([
    "--insecure-policy",
    "copy",
    "--quiet",
    "--src-tls-verify=false",
    `docker://${hostOf(first.url)}/local/${img.repo}:v1`,
    `dir:${join(scratch, "corrupt")}`,
  ]);
  tt.not(failed.code, 0, "skopeo's pull fails instead of receiving corrupted layers");
  tt.match(first.logs(), "nothing was cached", "the operator is told why");
  const stored = await storeIsVerified(tt, dataDir);
  for (const blob of img.blobs) {
    tt.notOk(stored.includes(blob.digest.slice(7)), `corrupted blob ${blob.digest.slice(0, 19)} was not committed`);
  }
  await first.stop({ keepData: true });
  await corrupt.stop();

  const good = await using(tt, startRecordingProxy(registry.url));
  const second = await using(tt, startStowage(["--upstream", `local=${good.url}`, "--data-dir", dataDir, "--log-level", "warn"]));
  const dir = await copyThrough(second, `local/${img.repo}:v1`, "healed");
  await checkDirCopy(tt, dir, img);
  await storeIsVerified(tt, dataDir);
});

t.test("raw HTTP: headers and errors clients depend on", async (tt) => {
  const stowage = await using(tt, startStowage(["--upstream", `local=${registry.url}`, "--log-level", "warn"]));
  const list = image("docker-list");
  const head = await fetch(`${stowage.url}/v2/local/${list.repo}/manifests/v1`, { method: "HEAD" });
  tt.equal(head.status, 200);
  tt.equal(head.headers.get("content-type"), list.mediaType, "HEAD carries the upstream media type");
  tt.equal(head.headers.get("docker-content-digest"), list.digest);
  tt.ok(Number(head.headers.get("content-length")) > 0, "HEAD carries Content-Length");
  tt.equal(head.headers.get("docker-distribution-api-version"), "registry/2.0");

  const blob = image("oci-single").blobs[0]!;
  const url = `${stowage.url}/v2/local/${image("oci-single").repo}/blobs/${blob.digest}`;
  const part = await fetch(url, { headers: { range: "bytes=0-9" } });
  tt.equal(part.status, 206);
  tt.equal(part.headers.get("content-range"), `bytes 0-9/${blob.size}`);
  tt.equal((await part.arrayBuffer()).byteLength, 10);
  const beyond = await fetch(url, { headers: { range: `bytes=${blob.size + 10}-` } });
  tt.equal(beyond.status, 416);
  tt.equal(beyond.headers.get("content-range"), `bytes */${blob.size}`);
  await beyond.body?.cancel();

  const push = await fetch(`${stowage.url}/v2/local/x/blobs/uploads/`, { method: "POST" });
  tt.equal(push.status, 405);
  tt.equal((await push.json()).errors[0].code, "UNSUPPORTED");
  const html = await fetch(`${stowage.url}/index.html`);
  tt.equal(html.headers.get("content-type"), "application/json", "unknown paths answer JSON, never HTML");
  await html.body?.cancel();
  const missing = await fetch(`${stowage.url}/v2/local/stowage-test/nope/manifests/v1`);
  tt.equal(missing.status, 404);
  tt.equal((await missing.json()).errors[0].code, "MANIFEST_UNKNOWN");
  const raw = await readFile(join(DEFAULT_IMAGE_CACHE_DIR, "..", "stowage-test-images", "docker-list", "manifest.json")).catch(() => null);
  if (raw) {
    const served = new Uint8Array(await (await fetch(`${stowage.url}/v2/local/${list.repo}/manifests/${list.digest}`)).arrayBuffer());
    tt.same(Buffer.from(served), raw, "the manifest list is served byte for byte");
  }
});
