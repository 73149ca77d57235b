// Prefill against an in-test upstream, through the same cache services a server uses: what it
// stores and records must be what pulls would, a second run must fetch nothing, and one bad
// reference must not stop the others.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import type { Config } from "../../src/config/types.ts";
import type { Kv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { prefill, type PrefillOptions, type PrefillResult } from "../../src/prefill/prefill.ts";
import { createProgress, silentProgress, type Progress } from "../../src/progress/progress.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST } from "../../src/registry/media-types.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { openServices } from "../../src/services.ts";
import { FakeRegistry, type Manifest } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { sendOciError } from "../support/oci.ts";

const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip";

type Built = { manifest: Manifest; blobs: Digest[]; size: number };

let counter = 0;
/** An image manifest with a config and layers of the sizes given, its blobs served in `repo`. */
function image(reg: FakeRegistry, repo: string, tag: string | null, docker: boolean, layerSizes: number[], extra: Record<string, unknown> = {}): Built {
  const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", n: counter++ }));
  const layers = layerSizes.map((size) => Buffer.alloc(size, `layer-${counter++}-`));
  const blobs = [reg.addBlob(config, [repo]), ...layers.map((l) => reg.addBlob(l, [repo]))];
  const doc = {
    schemaVersion: 2,
    mediaType: docker ? DOCKER_MANIFEST : OCI_MANIFEST,
    config: { mediaType: docker ? DOCKER_CONFIG : OCI_CONFIG, digest: blobs[0], size: config.length },
    layers: layers.map((l, i) => ({ mediaType: docker ? DOCKER_LAYER : OCI_LAYER, digest: blobs[i + 1], size: l.length })),
    ...extra,
  };
  const bytes = Buffer.from(JSON.stringify(doc));
  const manifest = reg.addManifest(tag ?? "untagged", bytes, { repo, mediaType: doc.mediaType });
  if (tag === null) reg.manifests.delete(`${repo}\nuntagged`);
  return { manifest, blobs, size: config.length + layers.reduce((n, l) => n + l.length, 0) };
}

/** An index (OCI or Docker list) of one child per platform. */
function index(reg: FakeRegistry, repo: string, tag: string, docker: boolean, platforms: string[]): { manifest: Manifest; children: Map<string, Built> } {
  const children = new Map(platforms.map((p) => [p, image(reg, repo, null, docker, [3000, 5000])] as const));
  const doc = {
    schemaVersion: 2,
    mediaType: docker ? DOCKER_MANIFEST_LIST : OCI_INDEX,
    manifests: [...children].map(([p, c]) => {
      const [os, architecture, variant] = p.split("/");
      return { mediaType: c.manifest.mediaType, digest: c.manifest.digest, size: c.manifest.bytes.length, platform: { os, architecture, ...(variant ? { variant } : {}) } };
    }),
  };
  return { manifest: reg.addManifest(tag, Buffer.from(JSON.stringify(doc)), { repo, mediaType: doc.mediaType }), children };
}

type Fixture = {
  reg: FakeRegistry;
  multi: ReturnType<typeof index>;
  list: ReturnType<typeof index>;
  single: Built;
};

async function fixture(t: Test): Promise<Fixture> {
  const reg = await new FakeRegistry().start(t);
  const multi = index(reg, "app", "multi", false, ["linux/amd64", "linux/arm64/v8"]);
  const list = index(reg, "app", "dlist", true, ["linux/amd64", "linux/arm/v7"]);
  const single = image(reg, "tools/single", "1.0", false, [20_000, 300_000]);
  return { reg, multi, list, single };
}

const REFS = ["local/app:multi", "local/app:dlist", "local/tools/single:1.0"];

function configFor(dataDir: string, upstream: string, flags: string[] = []): Config {
  return loadConfig({ argv: ["--data-dir", dataDir, "--upstream", `local=${upstream}`, ...flags], env: {}, readFile: (p) => readFileSync(p, "utf8") });
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-prefill-test-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs prefill on the data dir through openServices, as the command does, and closes them. */
async function runPrefill(
  dataDir: string,
  upstream: string,
  options: Partial<PrefillOptions>,
  progress: Progress = silentProgress,
  flags: string[] = [],
): Promise<PrefillResult> {
  const config = configFor(dataDir, upstream, flags);
  const log = createLogger("error", () => {});
  const services = await openServices(config, nodeRuntime, log);
  try {
    return await prefill(
      { ...services, upstreams: config.upstreams, defaultUpstream: config.defaultUpstream },
      { refs: REFS, platforms: [], jobs: 4, withReferrers: false, ...options },
      progress,
      log,
    );
  } finally {
    await services.close();
  }
}

/** Pulls as a client does (every child of an index, every blob); returns each answer's x-stowage-cache. */
async function pull(base: string, name: string, reference: string): Promise<string[]> {
  const sources: string[] = [];
  const get = async (path: string, accept?: string) => {
    const res = await fetch(`${base}/v2/${name}/${path}`, accept ? { headers: { accept } } : {});
    if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
    sources.push(`${path.split("/")[0]} ${res.headers.get("x-stowage-cache")}`);
    return Buffer.from(await res.arrayBuffer());
  };
  const walk = async (ref: string) => {
    const doc = JSON.parse((await get(`manifests/${ref}`, MANIFEST_ACCEPT)).toString());
    for (const child of doc.manifests ?? []) await walk(child.digest);
    for (const blob of doc.config ? [doc.config, ...doc.layers] : []) await get(`blobs/${blob.digest}`);
  };
  await walk(reference);
  return sources;
}

/** Every KV entry but the volatile ones, times taken out, as `key => value` lines. */
async function kvState(kv: Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const { key, value } of kv.list({ prefix: [] })) {
    // Usage records are written in batches (the server's may not be flushed yet): not what is cached.
    if (key[0] === "lease" || key[0] === "upstream-token" || key[0] === "usage") continue;
    const v = JSON.stringify(value, (k, x) => (/At$/.test(k) ? "<time>" : x));
    out.push(`${JSON.stringify(key)} => ${v}`);
  }
  return out.sort();
}

async function storeFiles(dataDir: string): Promise<string[]> {
  const root = join(dataDir, "blobs");
  const files = await readdir(root, { recursive: true, withFileTypes: true });
  return files
    .filter((f) => f.isFile())
    .map((f) => relative(root, join(f.parentPath, f.name)))
    .filter((p) => !p.startsWith("_uploads"))
    .sort();
}

const blobGets = (reg: FakeRegistry, mark: number) => reg.since(mark).filter((s) => s.method === "GET" && s.path.includes("/blobs/"));

t.test("prefill stores and records exactly what pulls do, and a pull afterwards is served from the cache", async (t) => {
  const f = await fixture(t);
  const dir = await tempDir(t);
  const prefilled = join(dir, "prefilled");
  const result = await runPrefill(prefilled, f.reg.url, {});
  t.same(
    result.images.map((i) => [i.ref, i.status, i.digest, i.reason]),
    [
      ["local/app:multi", "ok", f.multi.manifest.digest, undefined],
      ["local/app:dlist", "ok", f.list.manifest.digest, undefined],
      ["local/tools/single:1.0", "ok", f.single.manifest.digest, undefined],
    ],
    "every reference ok, with the digest its tag names",
  );
  t.same(result.images.map((i) => i.image), ["127.0.0.1/app:multi", "127.0.0.1/app:dlist", "127.0.0.1/tools/single:1.0"].map((s) => s.replace("127.0.0.1", new URL(f.reg.url).host)));
  t.same(result.images.map((i) => [i.manifests, i.blobs]), [[3, 6], [3, 6], [1, 3]], "an index, both children and all their blobs");
  const multiBytes = [...f.multi.children.values()].reduce((n, c) => n + c.size, 0);
  t.equal(result.images[0]?.bytesFetched, multiBytes, "every byte of the index's images was fetched");
  t.equal(result.images[2]?.bytesFetched, f.single.size);

  // The same images pulled through a server on another data dir.
  const pulled = await startInProcessStowage(t, ["--upstream", `local=${f.reg.url}`], { logLevel: "error" });
  for (const ref of REFS) {
    const [name, tag] = ref.split(":") as [string, string];
    await pull(pulled.url, name, tag);
  }
  // Wait until the server's last commit is recorded: blobs end before their records.
  const pulledKv = await pulled.kv();
  const expected = await kvState(pulledKv);
  for (let i = 0; i < 100 && expected.filter((l) => l.startsWith('["blob"')).length < 15; i++) {
    await new Promise((r) => setTimeout(r, 50));
    expected.splice(0, expected.length, ...(await kvState(pulledKv)));
  }
  const prefilledKv = (await openKv(join(prefilled, "kv.sqlite3"))) as unknown as Kv;
  const got = await kvState(prefilledKv);
  prefilledKv.close();
  t.same(got, expected, "the same KV records (tags, manifests, blobs, links)");
  t.ok(got.some((l) => l.startsWith('["tag","local","app","multi"]')) && got.filter((l) => l.startsWith('["blob"')).length === 15, "tags and all 15 blobs recorded");
  t.same(await storeFiles(prefilled), await storeFiles(pulled.dataDir), "the same files in the store");

  // A server on the prefilled data dir answers every pull from the cache, asking upstream nothing.
  const mark = f.reg.seen.length;
  const server = await startInProcessStowage(t, ["--upstream", `local=${f.reg.url}`], { logLevel: "error", patch: { dataDir: prefilled } });
  for (const ref of REFS) {
    const [name, tag] = ref.split(":") as [string, string];
    const sources = await pull(server.url, name, tag);
    t.same(sources.filter((s) => !s.endsWith(" cache")), [], `${ref}: every manifest and blob from the cache (${sources.length} answers)`);
  }
  t.same(f.reg.since(mark), [], "the upstream was asked nothing");
});

t.test("a second prefill fetches nothing; an interrupted one is completed by a re-run", async (t) => {
  const f = await fixture(t);
  const dataDir = join(await tempDir(t), "data");
  // The first run breaks off on one layer of the single image, as an interrupt would leave it.
  const [, , brokenLayer] = f.single.blobs as [Digest, Digest, Digest];
  f.reg.on(brokenLayer, (_req, res) => sendOciError(res, 500, "UNKNOWN"), { methods: ["GET"] });
  const first = await runPrefill(dataDir, f.reg.url, {});
  t.same(first.images.map((i) => i.status), ["ok", "ok", "failed"]);
  t.match(first.images[2]?.reason, new RegExp(`blob ${brokenLayer}.*500|500.*${brokenLayer}`), "the reason names the blob and what upstream said");
  f.reg.off(brokenLayer);

  let mark = f.reg.seen.length;
  const second = await runPrefill(dataDir, f.reg.url, {});
  t.same(second.images.map((i) => i.status), ["ok", "ok", "ok"], "the re-run completes it");
  t.same(blobGets(f.reg, mark).map((s) => s.path.split("/").pop()), [brokenLayer], "only the missing blob was downloaded");
  t.same(second.images.map((i) => i.bytesFetched), [0, 0, 300_000]);
  t.equal(second.images[2]?.bytesCached, f.single.size - 300_000, "the rest of the image counted as already cached");

  mark = f.reg.seen.length;
  const third = await runPrefill(dataDir, f.reg.url, {});
  t.same(third.images.map((i) => i.status), ["ok", "ok", "ok"]);
  t.same(blobGets(f.reg, mark), [], "no blob downloaded again");
  t.same(f.reg.since(mark), [], "tags within their freshness window: upstream not asked at all");
  t.same(third.images.map((i) => i.bytesFetched), [0, 0, 0]);
  t.equal(third.images[2]?.bytesCached, f.single.size);
});

t.test("--platform keeps only the children it names", async (t) => {
  const f = await fixture(t);
  const dataDir = join(await tempDir(t), "data");
  const result = await runPrefill(dataDir, f.reg.url, { refs: ["local/app:multi", "local/app:dlist"], platforms: [{ os: "linux", architecture: "arm64" }] });
  const arm64 = f.multi.children.get("linux/arm64/v8")!;
  const amd64 = f.multi.children.get("linux/amd64")!;
  t.same(result.images[0], { ...result.images[0], status: "ok", manifests: 2, blobs: 3, bytesFetched: arm64.size }, "the index and its arm64 child (any variant)");
  const asked = f.reg.seen.map((s) => s.path);
  t.ok(asked.some((p) => p.endsWith(arm64.manifest.digest)), "arm64 manifest fetched");
  t.notOk(asked.some((p) => p.endsWith(amd64.manifest.digest) || amd64.blobs.some((b) => p.endsWith(b))), "nothing of amd64 fetched");
  t.equal(result.images[1]?.status, "failed", "a list without the platform fails");
  t.match(result.images[1]?.reason, /no manifest for linux\/arm64 in the index .*it has linux\/amd64, linux\/arm\/v7/);
});

t.test("one bad reference fails with its reason while the others succeed; progress lines tell it all", async (t) => {
  const f = await fixture(t);
  const dataDir = join(await tempDir(t), "data");
  const lines: string[] = [];
  const progress = createProgress({ interactive: false, write: (s) => lines.push(s) });
  const refs = ["local/app:nope", "registry.example.test/team/app:1", "local/tools/single:1.0", "local/app:multi"];
  const result = await runPrefill(dataDir, f.reg.url, { refs, jobs: 2 }, progress);
  progress.finish();
  t.same(result.images.map((i) => i.status), ["failed", "failed", "ok", "ok"]);
  t.match(result.images[0]?.reason, /manifest local\/app:nope is not known to the upstream/, "an unknown tag, in the operator's words");
  t.match(result.images[1]?.reason, /registry registry\.example\.test is not one of the configured upstreams.*--upstream/, "an unconfigured registry host");
  t.equal(result.images[1]?.image, null);

  const events = lines.join("").trim().split("\n").map((l) => JSON.parse(l));
  const last = events[events.length - 1];
  t.match(last, { event: "summary", items: 4, done: 2, failed: 2, unfinished: 0 }, "ends with the summary");
  t.same(
    last.failures.map((x: { item: string }) => x.item),
    ["local/app:nope", "registry.example.test/team/app:1"].map((r) => (r.startsWith("local/") ? r.replace("local", new URL(f.reg.url).host) : r)).sort(),
    "the summary names what failed",
  );
  const done = events.filter((e) => e.event === "done");
  t.same(done.map((e) => e.item).sort(), result.images.filter((i) => i.status === "ok").map((i) => i.image).sort(), "a done line per image");
  t.equal(done.find((e) => e.item.endsWith("single:1.0"))?.bytes, f.single.size, "with the bytes fetched");
  t.ok(events.every((e) => typeof e.time === "string" && ["progress", "done", "failed", "summary"].includes(e.event)), "every line a known event with a time");
});

t.test("an offline upstream is reported as such, and asked nothing", async (t) => {
  const f = await fixture(t);
  const dataDir = join(await tempDir(t), "data");
  const result = await runPrefill(dataDir, f.reg.url, { refs: ["local/app:multi"] }, silentProgress, ["--offline"]);
  t.match(result.images, [{ status: "failed", reason: /^upstream local is offline/ }]);
  t.same(f.reg.requests, [], "nothing was sent");
});

t.test("--with-referrers brings cosign's tags and the artifacts attached to an image", async (t) => {
  const f = await fixture(t);
  const dataDir = join(await tempDir(t), "data");
  const subject = f.single.manifest;
  const hex = subject.digest.slice("sha256:".length);
  const subjectDescriptor = { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length };
  // A cosign signature under its tag, and an SBOM attached with `subject`, listed under the referrers tag schema.
  const sig = image(f.reg, "tools/single", `sha256-${hex}.sig`, false, [400]);
  const sbom = image(f.reg, "tools/single", null, false, [900], { artifactType: "application/spdx+json", subject: subjectDescriptor });
  const referrers = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [{ mediaType: OCI_MANIFEST, digest: sbom.manifest.digest, size: sbom.manifest.bytes.length, artifactType: "application/spdx+json" }],
  };
  f.reg.addManifest(`sha256-${hex}`, Buffer.from(JSON.stringify(referrers)), { repo: "tools/single", mediaType: OCI_INDEX });

  const without = await runPrefill(join(dataDir, "..", "plain"), f.reg.url, { refs: ["local/tools/single:1.0"] });
  t.match(without.images[0], { status: "ok", referrers: 0, manifests: 1 }, "without the flag: the image alone");

  const result = await runPrefill(dataDir, f.reg.url, { refs: ["local/tools/single:1.0"], withReferrers: true });
  t.match(result.images[0], { status: "ok", referrers: 2, manifests: 3, blobs: 7 }, "the signature and the SBOM with their blobs");
  const kv = (await openKv(join(dataDir, "kv.sqlite3"))) as unknown as Kv;
  const state = await kvState(kv);
  kv.close();
  for (const [what, digest] of [["signature", sig.manifest.digest], ["SBOM", sbom.manifest.digest]] as const) {
    t.ok(state.some((l) => l.startsWith(`["manifest","local","tools/single","${digest}"]`)), `the ${what} manifest is recorded`);
  }
  for (const blob of [...sig.blobs, ...sbom.blobs]) t.ok(state.some((l) => l.startsWith(`["blob","${blob}"]`)), `attached blob ${blob.slice(0, 19)} stored`);
  t.ok(state.some((l) => l.startsWith(`["tag","local","tools/single","sha256-${hex}.sig"]`)), "the cosign tag is recorded, so it resolves offline");
  t.ok(state.some((l) => l.startsWith(`["referrers","local","tools/single","${subject.digest}"]`)), "the referrers list is recorded");
});
