// Air-gapped sites, end to end with real parts: prefill from a Kubernetes manifest on the
// connected side, export a bundle, then on the dark side (upstream gone, --offline) import it
// and pull every image with skopeo and containerd, digest-exact, with no connection attempt
// towards the upstream. Also: skopeo reads the bundle itself, the same import into Ceph RGW,
// incremental bundles, and damaged bundles.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { execFile } from "node:child_process";
import { createServer, type Socket } from "node:net";
import { copyFile, readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage, testImage } from "../harness/images.ts";
import { startContainerd } from "../harness/containerd.ts";
import { makeTempDir, using } from "../harness/processes.ts";
import { startRecordingProxy } from "../harness/recording-proxy.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { type Rgw, rgwUnavailable, startRgw } from "../harness/rgw.ts";
import { runStowage, startStowage } from "../harness/stowage.ts";
import { fileSha256 } from "../support/oci.ts";

type Stowage = Awaited<ReturnType<typeof startStowage>>;

let images: TestImage[] = [];
let registry: Awaited<ReturnType<typeof startRegistry>>;
let scratch = "";

const image = (name: string): TestImage => testImage(images, name);
const hostOf = (url: string) => new URL(url).host;

/** Listens where the upstream was and counts every connection attempt (and refuses it). */
async function connectionCounter(port: number): Promise<{ count(): number; stop(): Promise<void> }> {
  let count = 0;
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    count++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    count: () => count,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The names in a tar, as GNU tar lists them. */
function tarNames(file: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile("tar", ["-tf", file], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout) => (err ? reject(err) : resolve(stdout.split("\n").filter(Boolean))));
  });
}
const blobNames = (names: string[]) => names.filter((n) => n.startsWith("blobs/"));

/** skopeo copy --all through Stowage into a dir: layout; digest-exact check against the test image. */
async function pullAndCheck(tt: Test, stowage: Stowage, ref: string, img: TestImage): Promise<void> {
  const out = join(scratch, `pull-${Math.random().toString(36).slice(2, 8)}`);
  const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false", `docker://${hostOf(stowage.url)}/${ref}`, `dir:${out}`]);
  tt.equal(r.code, 0, `skopeo copy --all ${ref}: ${r.stderr.slice(-400)}`);
  if (r.code !== 0) return;
  await checkDir(tt, out, img, ref);
}

async function checkDir(tt: Test, dir: string, img: TestImage, what: string): Promise<void> {
  tt.equal(await fileSha256(join(dir, "manifest.json")), img.digest, `${what}: top-level manifest digest`);
  const files = new Set(await readdir(dir));
  for (const blob of img.blobs) {
    const hex = blob.digest.slice("sha256:".length);
    tt.ok(files.has(hex) && (await fileSha256(join(dir, hex))) === blob.digest, `${what}: blob ${hex.slice(0, 12)} present and intact`);
  }
  for (const child of img.manifests) {
    const hex = child.digest.slice("sha256:".length);
    tt.equal(await fileSha256(join(dir, `${hex}.manifest.json`)), child.digest, `${what}: child manifest ${hex.slice(0, 12)}`);
  }
}

/** What a data dir's KV says about content (tags, manifests, links, blobs), timestamps left out. */
async function contentRecords(dataDir: string): Promise<string[]> {
  const kv = await openKv(join(dataDir, "kv.sqlite3"));
  try {
    const out: string[] = [];
    for (const kind of ["tag", "manifest", "link", "blob"]) {
      for await (const e of kv.list({ prefix: [kind] })) {
        const v = { ...(e.value as Record<string, unknown>) };
        for (const k of ["checkedAt", "storedAt", "linkedAt"]) delete v[k];
        out.push(`${JSON.stringify(e.key)} ${JSON.stringify(v)}`);
      }
    }
    return out.sort();
  } finally {
    kv.close();
  }
}

async function storedObjects(dataDir: string): Promise<string[]> {
  const root = join(dataDir, "blobs", "sha256");
  const found: string[] = [];
  for (const prefix of await readdir(root).catch(() => [] as string[])) found.push(...(await readdir(join(root, prefix))));
  return found.sort();
}

/** Every object in the store hashes to its name: only verified content is committed. */
async function storeIsVerified(tt: Test, dataDir: string, what: string): Promise<void> {
  const root = join(dataDir, "blobs", "sha256");
  let bad = 0;
  for (const hex of await storedObjects(dataDir)) {
    if ((await fileSha256(join(root, hex.slice(0, 2), hex))) !== `sha256:${hex}`) bad++;
  }
  tt.equal(bad, 0, `${what}: every stored object matches its digest`);
}

t.before(async () => {
  scratch = await makeTempDir("airgap");
  images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  registry = await startRegistry();
  await pushTestImages(registry.url, images);
});

t.teardown(async () => {
  await registry?.stop();
});

t.test("prefill from a Kubernetes manifest, export, then import and serve with the upstream gone and --offline", async (tt) => {
  // The upstream as the connected side sees it; on the dark side its address answers nothing.
  const upstream = await startRecordingProxy(registry.url);
  let upstreamStopped = false;
  tt.teardown(async () => {
    if (!upstreamStopped) await upstream.stop();
  });
  const host = hostOf(upstream.url);
  const wanted = ["oci-index", "docker-list", "big-layer", "oci-single"].map(image);
  const connected = await makeTempDir("airgap-connected");
  const yamlPath = join(scratch, "deploy.yaml");
  await writeFile(
    yamlPath,
    [
      "apiVersion: apps/v1",
      "kind: Deployment",
      "metadata: {name: web}",
      "spec:",
      "  template:",
      "    spec:",
      "      initContainers:",
      `        - name: init\n          image: ${host}/stowage-test/docker-list:v1`,
      "      containers:",
      `        - name: web\n          image: "${host}/stowage-test/oci-index:v1"`,
      `        - name: sidecar\n          image: ${host}/stowage-test/oci-single:v1`,
      "---",
      "apiVersion: batch/v1",
      "kind: CronJob",
      "metadata: {name: batch}",
      "spec:",
      "  jobTemplate:",
      "    spec:",
      "      template:",
      "        spec:",
      "          containers:",
      `            - name: batch\n              image: ${host}/stowage-test/big-layer:v1`,
      "",
    ].join("\n"),
  );
  const common = ["--data-dir", connected, "--upstream", `local=${upstream.url}`];

  const prefilled = await runStowage(["prefill", "--from", yamlPath, ...common]);
  tt.equal(prefilled.code, 0, `prefill succeeds: ${prefilled.output.slice(-1500)}`);
  const fetchedBlobs = upstream.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/")).length;
  const uniqueBlobs = new Set(wanted.flatMap((i) => i.blobs.map((b) => b.digest))).size;
  tt.equal(fetchedBlobs, uniqueBlobs, "prefill fetched each blob of the four images once");

  upstream.reset();
  const again = await runStowage(["prefill", "--from", yamlPath, ...common]);
  tt.equal(again.code, 0, "a second prefill succeeds");
  tt.same(upstream.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/")), [], "a second prefill downloads nothing");

  const bundle = join(scratch, "full.tar");
  const exported = await runStowage(["export", "--all", "-o", bundle, ...common]);
  tt.equal(exported.code, 0, `export --all succeeds: ${exported.output.slice(-1500)}`);
  const names = await tarNames(bundle);
  tt.ok(names.includes("index.json") && names.includes("oci-layout"), "the bundle is an OCI image layout");

  // Standard tools read the bundle as it is. skopeo's oci-archive transport looks only at OCI
  // media types in index.json (it skips Docker schema 2 entries); the bundle keeps every
  // manifest byte for byte, so Docker-format images stay Docker-format and digest-exact.
  for (const img of wanted.filter((i) => i.mediaType.startsWith("application/vnd.oci."))) {
    const ref = `${host}/${img.repo}:${img.tag}`;
    const dir = join(scratch, `from-archive-${img.repo.split("/")[1]}`);
    const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", `oci-archive:${bundle}:${ref}`, `dir:${dir}`]);
    tt.equal(r.code, 0, `skopeo reads oci-archive:BUNDLE:${ref}: ${r.stderr.slice(-400)}`);
    if (r.code === 0) await checkDir(tt, dir, img, `oci-archive ${img.repo}`);
  }

  // containerd imports the bundle whole, Docker-format images included, under their full names.
  {
    const containerd = await using(tt, startContainerd());
    const r = await containerd.ctr(["images", "import", "--all-platforms", bundle]);
    tt.equal(r.code, 0, `ctr images import: ${r.stderr.slice(-400)}`);
    const listed = await containerd.ctr(["images", "ls"]);
    for (const img of wanted) {
      const ref = `${host}/${img.repo}:${img.tag}`;
      tt.match(listed.stdout.split("\n").find((l) => l.startsWith(ref + " ")) ?? "", img.digest, `ctr images import: ${ref} with its digest`);
    }
    await containerd.stop();
  }

  // The dark side: the upstream's address answers nothing, and every connection attempt is counted.
  await upstream.stop();
  upstreamStopped = true;
  const gone = await using(tt, connectionCounter(Number(new URL(upstream.url).port)));
  const dark = await makeTempDir("airgap-dark");
  const darkArgs = ["--data-dir", dark, "--upstream", `local=${upstream.url}`, "--offline", "on"];
  const imported = await runStowage(["import", bundle, ...darkArgs]);
  tt.equal(imported.code, 0, `import succeeds: ${imported.output.slice(-1500)}`);
  tt.same(await contentRecords(dark), await contentRecords(connected), "the dark side has exactly the records of the connected side");
  await storeIsVerified(tt, dark, "after import");
  const twice = await runStowage(["import", bundle, ...darkArgs]);
  tt.equal(twice.code, 0, "importing the same bundle again succeeds");
  tt.same(await contentRecords(dark), await contentRecords(connected), "and changes nothing");

  const stowage = await using(tt, startStowage([...darkArgs, "--log-level", "warn"]));
  for (const img of wanted) await pullAndCheck(tt, stowage, `local/${img.repo}:${img.tag}`, img);

  const containerd = await using(tt, startContainerd());
  for (const img of [image("oci-index"), image("docker-list"), image("big-layer")]) {
    const ref = `${hostOf(stowage.url)}/local/${img.repo}:${img.tag}`;
    const pulled = await containerd.ctr(["images", "pull", "--platform", "linux/arm64", "--snapshotter", "native", ref]);
    tt.equal(pulled.code, 0, `ctr images pull ${img.repo}: ${pulled.stderr.slice(-400)}`);
    const listed = await containerd.ctr(["images", "ls"]);
    tt.match(listed.stdout.split("\n").find((l) => l.startsWith(ref)) ?? "", img.digest, `${img.repo}: containerd has the exact digest`);
  }

  const started = Date.now();
  const miss = await fetch(`${stowage.url}/v2/local/stowage-test/oci-single/manifests/not-imported`);
  const body = await miss.json();
  tt.equal(miss.status, 404, "a tag that was not imported is a 404");
  tt.equal(body.errors?.[0]?.code, "MANIFEST_UNKNOWN");
  tt.match(body.errors?.[0]?.message, /offline/, "saying the upstream is offline");
  tt.ok(Date.now() - started < 2_000, `answered at once (${Date.now() - started} ms), not after a connect timeout`);
  tt.equal(gone.count(), 0, "no connection attempt reached the upstream's address on the dark side");
});

t.test("import into the S3 store on Ceph RGW, then serve offline from it", { skip: rgwUnavailable() ?? false }, async (tt) => {
  const rgw: Rgw = await using(tt, startRgw());
  const env = {
    AWS_ACCESS_KEY_ID: rgw.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: rgw.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  };
  const connected = await makeTempDir("airgap-s3-connected");
  const common = ["--upstream", `local=${registry.url}`];
  const wanted = [image("oci-index"), image("docker-single")];
  const prefilled = await runStowage(["prefill", ...wanted.map((i) => `local/${i.repo}:${i.tag}`), "--data-dir", connected, ...common]);
  tt.equal(prefilled.code, 0, `prefill by upstream name: ${prefilled.output.slice(-800)}`);
  const bundle = join(scratch, "s3.tar");
  const exported = await runStowage(["export", ...wanted.map((i) => `local/${i.repo}:${i.tag}`), "-o", bundle, "--data-dir", connected, ...common]);
  tt.equal(exported.code, 0, `export: ${exported.output.slice(-800)}`);

  const dark = await makeTempDir("airgap-s3-dark");
  const darkArgs = ["--data-dir", dark, "--storage", `s3://${rgw.bucket}/airgap?endpoint=${rgw.endpoint}`, ...common, "--offline", "on"];
  const imported = await runStowage(["import", bundle, ...darkArgs], { env });
  tt.equal(imported.code, 0, `import into S3: ${imported.output.slice(-800)}`);
  tt.same(await contentRecords(dark), await contentRecords(connected), "the same records as the connected side");
  const stowage = await using(tt, startStowage([...darkArgs, "--log-level", "warn"], { env }));
  for (const img of wanted) await pullAndCheck(tt, stowage, `local/${img.repo}:${img.tag}`, img);
});

t.test("an incremental bundle (--since) carries only what the previous one lacks, and imports while a server serves the store", async (tt) => {
  const connected = await makeTempDir("airgap-inc-connected");
  const common = ["--data-dir", connected, "--upstream", `local=${registry.url}`];
  const run = async (args: string[], what: string) => {
    const r = await runStowage([...args, ...common]);
    tt.equal(r.code, 0, `${what}: ${r.output.slice(-800)}`);
  };
  await run(["prefill", "local/stowage-test/oci-single:v1", "local/stowage-test/oci-index:v1"], "first prefill");
  const first = join(scratch, "first.tar");
  await run(["export", "--all", "-o", first], "first export");
  await run(["prefill", "local/stowage-test/many-layers:v1", "local/stowage-test/docker-list:v1"], "second prefill");
  const increment = join(scratch, "increment.tar");
  await run(["export", "--all", "--since", first, "-o", increment], "incremental export");
  const full = join(scratch, "everything.tar");
  await run(["export", "--all", "-o", full], "full export");

  const firstBlobs = new Set(blobNames(await tarNames(first)));
  const incBlobs = blobNames(await tarNames(increment));
  tt.ok(incBlobs.length > 0, `the increment has ${incBlobs.length} blobs`);
  tt.same(incBlobs.filter((n) => firstBlobs.has(n)), [], "and none of them is in the previous bundle");
  tt.ok((await stat(increment)).size < (await stat(full)).size, "it is smaller than a full bundle");

  const inOrder = await makeTempDir("airgap-inc-a");
  const whole = await makeTempDir("airgap-inc-b");
  const dark = (dir: string) => ["--data-dir", dir, "--upstream", `local=${registry.url}`, "--offline", "on"];
  const importInto = async (bundle: string, dir: string) => {
    const r = await runStowage(["import", bundle, ...dark(dir)]);
    tt.equal(r.code, 0, `import ${bundle}: ${r.output.slice(-800)}`);
  };
  await importInto(first, inOrder);
  // The increment goes in while a server serves the same store and KV, and it serves the new images at once.
  const serving = await using(tt, startStowage([...dark(inOrder), "--log-level", "warn"]));
  await importInto(increment, inOrder);
  for (const name of ["many-layers", "docker-list"]) await pullAndCheck(tt, serving, `local/stowage-test/${name}:v1`, image(name));
  await importInto(full, whole);
  tt.same(await contentRecords(inOrder), await contentRecords(whole), "previous + increment gives the same records as one full bundle");
  tt.same(await storedObjects(inOrder), await storedObjects(whole), "and the same stored objects");
});

t.test("damaged bundles: each is reported, nothing unverified is kept, a good bundle completes the store", async (tt) => {
  const connected = await makeTempDir("airgap-bad-connected");
  const common = ["--upstream", `local=${registry.url}`];
  const big = image("big-layer");
  const r0 = await runStowage(["prefill", `local/${big.repo}:v1`, "local/stowage-test/oci-single:v1", "--data-dir", connected, ...common]);
  tt.equal(r0.code, 0, `prefill: ${r0.output.slice(-800)}`);
  const good = join(scratch, "good.tar");
  const r1 = await runStowage(["export", "--all", "-o", good, "--data-dir", connected, ...common]);
  tt.equal(r1.code, 0, `export: ${r1.output.slice(-800)}`);

  // Cut in the middle of the big layer.
  const truncated = join(scratch, "truncated.tar");
  await copyFile(good, truncated);
  await truncate(truncated, Math.floor((await stat(good)).size / 2));
  // One byte flipped inside the big layer (the largest blob sits in the middle of the file).
  const flipped = join(scratch, "flipped.tar");
  const bytes = await readFile(good);
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  await writeFile(flipped, bytes);

  const dark = await makeTempDir("airgap-bad-dark");
  const darkArgs = ["--data-dir", dark, ...common, "--offline", "on"];
  for (const [file, what] of [[truncated, /truncat|ends/i], [flipped, /sha256|digest|corrupt/i]] as const) {
    const r = await runStowage(["import", file, ...darkArgs]);
    tt.not(r.code, 0, `import of ${file} exits non-zero`);
    tt.match(r.output, what, "and says what is wrong");
    await storeIsVerified(tt, dark, `after ${file}`);
    const records = await contentRecords(dark);
    tt.notOk(records.some((r) => r.includes(`"tag","local","${big.repo}"`)), "the damaged image is not tagged");
  }
  const r2 = await runStowage(["import", good, ...darkArgs]);
  tt.equal(r2.code, 0, `the good bundle then imports: ${r2.output.slice(-800)}`);
  tt.same(await contentRecords(dark), await contentRecords(connected), "and completes the store");
});
