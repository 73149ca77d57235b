// Proves the e2e harness against the plain registry (no Stowage): the images are what they
// claim to be, real clients can push and pull them, and the proxies see and alter what they should.
import t from "tap";
import { existsSync } from "node:fs";
import { readdir, readFile, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, BIG_LAYER_PAYLOAD_BYTES, type TestImage } from "../harness/images.ts";
import { startContainerd } from "../harness/containerd.ts";
import { makeTempDir, removeTempDir } from "../harness/processes.ts";
import { startRecordingProxy } from "../harness/recording-proxy.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { fileSha256, sha256 } from "../support/oci.ts";

// Pinned on purpose: the images must come out byte-identical on every machine. A deliberate change
// to images.ts must update these.
const EXPECTED_DIGESTS: Record<string, string> = {
  "stowage-test/oci-single": "sha256:839e45abf91bb961950ab2f4576c761f23b35b84c33f8b7412e7e6a382c0667c",
  "stowage-test/oci-index": "sha256:bfca55409f509a7a62a4f5a9ab02d5d1509a18c5bb01830a8688598090763868",
  "stowage-test/docker-list": "sha256:eca9810a819956901ca000f4dcfb2b6c665ecfa466ab62932d4325430c453933",
  "stowage-test/docker-single": "sha256:b39012dc1eef1d4e7c25b928f3df6ee854028737dbea54fad89b4154359b32f6",
  "stowage-test/many-layers": "sha256:c90ea57700bd1adc8790be8de3066aae5c25ed46e66e39ab7f8d3cef70e1ca7f",
  "stowage-test/big-layer": "sha256:9caadf0b51a746c33e7d7b96b0ce695222c50119347795857ae485efb429e556",
};

const timings: Array<[string, number]> = [];
async function timed<T>(label: string, fn: () => Promise<T>): Promise<T> {
  const start = performance.now();
  try {
    return await fn();
  } finally {
    const ms = Math.round(performance.now() - start);
    timings.push([label, ms]);
    t.comment(`${label}: ${ms} ms`);
  }
}


const hex = (digest: string) => digest.slice("sha256:".length);
const byRepo = (images: TestImage[], name: string): TestImage => {
  const img = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!img) throw new Error(`no test image ${name}`);
  return img;
};

let images: TestImage[] = [];
let registry: Awaited<ReturnType<typeof startRegistry>>;
let registryHost = "";
let scratch = "";
const stoppers: Array<() => Promise<void>> = [];

t.before(async () => {
  scratch = await makeTempDir("harness");
  images = await timed("build images", () => buildTestImages(DEFAULT_IMAGE_CACHE_DIR));
  registry = await timed("start registry", () => startRegistry());
  registryHost = new URL(registry.url).host;
  await timed("push six images", () => pushTestImages(registry.url, images));
});

t.teardown(async () => {
  for (const stop of stoppers.reverse()) await stop().catch(() => undefined);
  await registry?.stop();
  await removeTempDir(scratch);
  const total = timings.reduce((sum, [, ms]) => sum + ms, 0);
  t.comment(`timed steps: ${total} ms in all`);
});

t.test("the six images are deterministic and shaped as promised", async (t) => {
  t.same(
    images.map((i) => [i.repo, i.kind]),
    [
      ["stowage-test/oci-single", "oci-manifest"],
      ["stowage-test/oci-index", "oci-index"],
      ["stowage-test/docker-list", "docker-list"],
      ["stowage-test/docker-single", "docker-manifest"],
      ["stowage-test/many-layers", "oci-manifest"],
      ["stowage-test/big-layer", "oci-manifest"],
    ],
  );
  for (const img of images) t.equal(img.digest, EXPECTED_DIGESTS[img.repo], `${img.repo} digest is pinned`);

  const again = await timed("rebuild images (cached)", () => buildTestImages(DEFAULT_IMAGE_CACHE_DIR));
  t.same(again, images, "a second build gives identical images");

  t.equal(byRepo(images, "oci-single").blobs.length, 3, "oci-single: config + 2 layers");
  t.equal(byRepo(images, "many-layers").blobs.length, 51, "many-layers: config + 50 layers");
  for (const name of ["oci-index", "docker-list"]) {
    const img = byRepo(images, name);
    t.same(
      img.manifests.map((m) => m.platform),
      [
        { os: "linux", architecture: "amd64" },
        { os: "linux", architecture: "arm64" },
      ],
      `${name} has amd64 and arm64 children`,
    );
    t.equal(img.blobs.length, 4, `${name}: a config and a layer per platform`);
  }
  const big = byRepo(images, "big-layer");
  const layer = big.blobs.reduce((a, b) => (b.size > a.size ? b : a));
  t.ok(layer.size >= BIG_LAYER_PAYLOAD_BYTES, `big layer is ${layer.size} bytes`);
});

t.test("the registry serves every image under its digest (skopeo inspect --raw)", async (t) => {
  for (const img of images) {
    const r = await skopeo(["inspect", "--raw", "--tls-verify=false", `docker://${registryHost}/${img.repo}:${img.tag}`]);
    t.equal(r.code, 0, `${img.repo}: inspect succeeds`, { stderr: r.stderr });
    t.equal(sha256(r.stdout), img.digest, `${img.repo}: raw manifest hashes to the digest`);
    t.equal((JSON.parse(r.stdout) as { mediaType?: string }).mediaType, img.mediaType, `${img.repo}: media type`);
  }
});

t.test("skopeo copy --all from the registry yields exactly the expected blobs", async (t) => {
  for (const img of images) {
    const dest = join(scratch, `copy-${img.repo.replace("/", "-")}`);
    const r = await timed(`skopeo copy ${img.repo}`, () =>
      skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--src-tls-verify=false", `docker://${registryHost}/${img.repo}:${img.tag}`, `dir:${dest}`]),
    );
    t.equal(r.code, 0, `${img.repo}: copy succeeds`, { stderr: r.stderr });
    t.equal(sha256(await readFile(join(dest, "manifest.json"))), img.digest, `${img.repo}: top-level manifest intact`);
    for (const m of img.manifests) {
      t.equal(sha256(await readFile(join(dest, `${hex(m.digest)}.manifest.json`))), m.digest, `${img.repo}: child ${m.platform?.architecture}`);
    }
    let matching = 0;
    for (const b of img.blobs) {
      const path = join(dest, hex(b.digest));
      if ((await stat(path)).size === b.size && (await fileSha256(path)) === b.digest) matching++;
    }
    t.equal(matching, img.blobs.length, `${img.repo}: all ${img.blobs.length} blobs copied with the right digest and size`);
    await rm(dest, { recursive: true, force: true });
  }
});

t.test("containerd fetches and unpacks the images (ctr, plain http to 127.0.0.1)", async (t) => {
  const ctd = await timed("start containerd", () => startContainerd());
  stoppers.push(() => ctd.stop());
  const index = byRepo(images, "oci-index");
  const ref = `${registryHost}/${index.repo}:${index.tag}`;

  const fetched = await timed("ctr content fetch oci-index", () => ctd.ctr(["content", "fetch", "--all-platforms", ref]));
  t.equal(fetched.code, 0, "content fetch succeeds", { stderr: fetched.stderr });
  const content = (await ctd.ctr(["content", "ls", "-q"])).stdout.split("\n");
  for (const d of [index.digest, ...index.manifests.map((m) => m.digest), ...index.blobs.map((b) => b.digest)]) {
    t.ok(content.includes(d), `content store has ${d.slice(0, 19)}`);
  }

  for (const name of ["oci-index", "docker-list"]) {
    const img = byRepo(images, name);
    const imgRef = `${registryHost}/${img.repo}:${img.tag}`;
    const pulled = await timed(`ctr images pull ${name} arm64`, () =>
      ctd.ctr(["images", "pull", "--platform", "linux/arm64", "--snapshotter", "native", imgRef]),
    );
    t.equal(pulled.code, 0, `${name}: pull + unpack succeeds`, { stderr: pulled.stderr, stdout: pulled.stdout });
    const listed = await ctd.ctr(["images", "ls"]);
    t.match(listed.stdout, new RegExp(`${imgRef.replace(/[.:/]/g, "\\$&")}\\s+\\S+\\s+${img.digest}`), `${name}: image recorded under its digest`);
    // The native snapshotter keeps plain directories: the arm64 layer's file must be there.
    const snapshots = join(dirname(ctd.address), "root", "io.containerd.snapshotter.v1.native", "snapshots");
    const file = join("stowage-test", `${name}-arm64`, "layer-0.txt");
    const found = [];
    for (const id of await readdir(snapshots)) if (existsSync(join(snapshots, id, file))) found.push(id);
    t.equal(found.length, 1, `${name}: arm64 layer unpacked (${file})`);
  }
  await ctd.stop();
  t.notOk(existsSync(dirname(ctd.address)), "containerd's temp dir is removed on stop");
});

t.test("the recording proxy sees exactly the requests of a pull, and rewrites Location", async (t) => {
  const proxy = await startRecordingProxy(registry.url);
  stoppers.push(() => proxy.stop());
  const host = new URL(proxy.url).host;
  const index = byRepo(images, "oci-index");
  const pull = (n: number) =>
    skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--src-tls-verify=false", `docker://${host}/${index.repo}:v1`, `dir:${join(scratch, `proxied-${n}`)}`]);

  t.equal((await pull(1)).code, 0, "first copy through the proxy");
  proxy.reset();
  const second = await timed("skopeo copy via recording proxy", () => pull(2));
  t.equal(second.code, 0, "second copy through the proxy", { stderr: second.stderr });

  const blobGets = proxy.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/"));
  t.same(
    blobGets.map((r) => r.path).sort(),
    index.blobs.map((b) => `/v2/${index.repo}/blobs/${b.digest}`).sort(),
    "each blob fetched exactly once",
  );
  for (const r of blobGets) {
    const size = index.blobs.find((b) => r.path.endsWith(b.digest))?.size;
    t.equal(r.bytes, size, `${r.path.slice(-12)}: whole body counted`);
  }
  const manifestGets = proxy.requests.filter((r) => r.method === "GET" && r.path.includes("/manifests/")).map((r) => r.path);
  t.same(
    manifestGets.sort(),
    [`/v2/${index.repo}/manifests/v1`, ...index.manifests.map((m) => `/v2/${index.repo}/manifests/${m.digest}`)].sort(),
    "the index and both children fetched once each",
  );
  t.ok(proxy.requests.every((r) => r.status === 200), "every request answered 200");

  // Uploads follow the registry's absolute Location URLs; they reach the proxy only if rewritten.
  proxy.reset();
  const single = byRepo(images, "oci-single");
  const push = await skopeo(["--insecure-policy", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", single.source, `docker://${host}/stowage-test/via-proxy:v1`]);
  t.equal(push.code, 0, "push through the proxy succeeds", { stderr: push.stderr });
  // skopeo's blob-info cache outlives test runs and ports get reused, so it may mount a blob
  // from another repository (POST 201) instead of uploading it; both went through the proxy.
  const uploads = proxy.requests.filter((r) => /\/blobs\/uploads\/.+/.test(r.path));
  const mounts = proxy.requests.filter((r) => r.method === "POST" && r.path.endsWith("/blobs/uploads/") && r.status === 201);
  t.equal(uploads.filter((r) => r.method === "PUT" && r.status === 201).length + mounts.length, single.blobs.length, "every blob upload completed through the proxy", {
    requests: proxy.requests.filter((r) => r.path.includes("/blobs/")),
  });
  t.ok(proxy.requests.some((r) => r.method === "PUT" && r.path === "/v2/stowage-test/via-proxy/manifests/v1" && r.status === 201), "manifest PUT through the proxy");
  await proxy.stop();
});

t.test("the corrupting proxy makes skopeo fail with a digest error", async (t) => {
  const proxy = await startRecordingProxy(registry.url, { corruptBlobs: true });
  stoppers.push(() => proxy.stop());
  const single = byRepo(images, "oci-single");
  const r = await skopeo(["--insecure-policy", "copy", "--src-tls-verify=false", `docker://${new URL(proxy.url).host}/${single.repo}:v1`, `dir:${join(scratch, "corrupt")}`]);
  t.not(r.code, 0, "copy fails");
  t.match(r.stderr, /digest did not match/i, "because of a digest mismatch");
  const blobGet = proxy.requests.find((p) => p.method === "GET" && p.path.includes("/blobs/"));
  const size = single.blobs.find((b) => blobGet?.path.endsWith(b.digest))?.size;
  t.equal(blobGet?.bytes, size, "the corrupted body kept its length");
  await proxy.stop();
});

t.test("a registry in proxy mode pulls through from the first one", async (t) => {
  const mirror = await startRegistry({ proxyRemoteUrl: registry.url });
  stoppers.push(() => mirror.stop());
  const img = byRepo(images, "docker-single");
  const r = await skopeo(["inspect", "--raw", "--tls-verify=false", `docker://${new URL(mirror.url).host}/${img.repo}:${img.tag}`]);
  t.equal(r.code, 0, "inspect through the mirror", { stderr: r.stderr });
  t.equal(sha256(r.stdout), img.digest, "same manifest digest");
  await mirror.stop();
  t.notOk(existsSync(mirror.rootDir), "its data dir is removed on stop");
});

t.test("the registry restarts on the same port with the same data", async (t) => {
  const { port, rootDir, url } = registry;
  await registry.stop({ keepData: true });
  await t.rejects(fetch(`${url}/v2/`), "nothing answers while it is stopped");
  registry = await timed("restart registry", () => startRegistry({ port, rootDir }));
  t.equal(registry.url, url, "same URL");
  const img = byRepo(images, "oci-index");
  const res = await fetch(`${url}/v2/${img.repo}/manifests/${img.tag}`, { method: "HEAD", headers: { Accept: img.mediaType } });
  t.equal(res.headers.get("docker-content-digest"), img.digest, "still serves the pushed index");
  await registry.stop();
  t.notOk(existsSync(rootDir), "data dir removed once stopped without keepData");
  await t.rejects(fetch(`${url}/v2/`), "port released");
});
