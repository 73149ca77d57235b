// Offline serving (--offline, offline: true per upstream): the settings, the client's refusal
// to send anything, and a Stowage whose store was filled online answering from it alone, with
// the upstream seeing nothing and every miss a prompt 404 that says why.
import t from "tap";
import { openKv } from "@deno/kv";
import { randomBytes } from "node:crypto";
import { registryErrorFor } from "../../src/cache/registry-error-for.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { UpstreamClient } from "../../src/upstream/client.ts";
import { UpstreamTokenCache } from "../../src/upstream/token-cache.ts";
import { UpstreamError } from "../../src/upstream/upstream-error.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { errorOf, load } from "../support/config-sources.ts";
import { FakeRegistry, startHttpServer } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { expectOciError, sha256 } from "../support/oci.ts";

const offlineOf = (argv: string[], env: Record<string, string> = {}, files: Record<string, string> = {}) =>
  Object.fromEntries(load(argv, env, files).upstreams.map((u) => [u.name, u.offline === true]));

t.test("--offline, STOWAGE_OFFLINE and offline: in the config file", async (t) => {
  const two = ["--upstream", "a=https://a.example", "--upstream", "b=https://b.example"];
  t.same(offlineOf(two), { a: false, b: false }, "online unless asked");
  t.same(offlineOf([...two, "--offline"]), { a: true, b: true }, "--offline alone means on, for every upstream");
  t.same(offlineOf(["--offline", ...two]), { a: true, b: true }, "--offline alone before other flags");
  t.same(offlineOf([...two, "--offline", "on"]), { a: true, b: true });
  t.same(offlineOf([...two, "--offline=off"]), { a: false, b: false });
  t.same(offlineOf([...two, "--offline", "off"]), { a: false, b: false });
  t.same(offlineOf(two, { STOWAGE_OFFLINE: "on" }), { a: true, b: true });
  t.same(offlineOf([...two, "--offline", "off"], { STOWAGE_OFFLINE: "on" }), { a: false, b: false }, "the flag beats the environment");
  t.equal(load([...two, "--offline"]).offline, true);
  t.match(errorOf(() => load(["--offline", "maybe"])).message, /unexpected argument "maybe"/);
  t.match(errorOf(() => load(["--offline=maybe"])).message, /--offline: expected on or off/);

  const file = "upstreams:\n  - name: lan\n    url: https://harbor.lan\n    offline: true\n  - name: hub\n    url: https://registry-1.docker.io\n";
  t.same(offlineOf(["--config", "s.yaml"], {}, { "s.yaml": file }), { lan: true, hub: false }, "one upstream offline, the other not");
  t.same(offlineOf(["--config", "s.yaml"], {}, { "s.yaml": `${file}offline: true\n` }), { lan: true, hub: true }, "offline: true at the top covers all");
  t.same(offlineOf(["--config", "s.yaml", "--offline", "off"], {}, { "s.yaml": file }), { lan: true, hub: false }, "--offline off leaves an upstream's own offline: true");
  t.match(errorOf(() => load(["--config", "s.yaml"], {}, { "s.yaml": file.replace("offline: true", "offline: yes please") })).message, /upstreams\[0\]\.offline: expected true or false/);
});

t.test("the client sends nothing at all for an offline upstream", async (t) => {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const sent: string[] = [];
  const upstream: Upstream = { name: "up", url: "http://127.0.0.1:9", host: "127.0.0.1:9", aliases: [], dockerHub: false, allowPrivateNetwork: true, offline: true };
  const client = new UpstreamClient(upstream, {
    tokens: new UpstreamTokenCache(new TypedKv(raw)),
    metrics: createStowageMetrics(),
    concurrency: 2,
    timeoutMs: 60_000,
    fetch: (async (input: string | URL | Request) => {
      sent.push(String(input));
      return new Response(null, { status: 401, headers: { "www-authenticate": 'Bearer realm="http://127.0.0.1:9/token"' } });
    }) as typeof fetch,
  });
  const log = createLogger("error", () => {});
  const digest = sha256("x");
  const attempts: Array<[string, () => Promise<unknown>]> = [
    ["manifest GET", () => client.manifest("app", "v1", "GET", log)],
    ["manifest HEAD", () => client.manifest("app", "v1", "HEAD", log)],
    ["blob GET", () => client.blob("app", digest, "GET", log)],
    ["blob HEAD", () => client.blob("app", digest, "HEAD", log)],
    ["tags", () => client.tags("app", "", log)],
    ["referrers", () => client.referrers("app", digest, "", log)],
  ];
  for (const [what, attempt] of attempts) {
    const err = await attempt().then(() => null, (e: unknown) => e);
    t.ok(err instanceof UpstreamError && err.failure === "offline", `${what}: refused as offline`);
    t.notOk(err instanceof UpstreamError && err.isOutage, `${what}: not an outage (no stale-if-error, no retry)`);
  }
  t.same(sent, [], "no request, no token request");

  const cases: Array<["blob" | "manifest" | "repository", string]> = [["manifest", "MANIFEST_UNKNOWN"], ["blob", "BLOB_UNKNOWN"], ["repository", "NAME_UNKNOWN"]];
  for (const [subject, code] of cases) {
    const mapped = registryErrorFor(new UpstreamError("offline", "upstream docker.io is offline (--offline)"), subject, "manifest docker.io/library/alpine:3.20");
    t.same({ code: mapped.code, status: mapped.status }, { code, status: 404 }, `${subject}: ${code}`);
    t.equal(mapped.message, "manifest docker.io/library/alpine:3.20 is not in the cache, and upstream docker.io is offline (--offline): nothing is fetched; prefill or import it on the connected side");
  }
});

const pretty = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2) + "\n");

t.test("offline, a Stowage serves what it stored, asks nobody, and answers misses with 404 at once", async (t) => {
  const up = await new FakeRegistry({ auth: true }).start(t);
  const config = pretty({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [] } });
  const layer = randomBytes(64 * 1024);
  const unpulled = randomBytes(1000);
  up.addBlob(config, ["app", "other"]);
  up.addBlob(layer, ["app", "other"]);
  up.addBlob(unpulled, ["app"]);
  const desc = (mediaType: string, bytes: Buffer) => ({ mediaType, digest: sha256(bytes), size: bytes.length });
  const manifestOf = (note: string) => pretty({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: desc("application/vnd.oci.image.config.v1+json", config),
    layers: [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    annotations: { note },
  });
  const v1 = up.addManifest("v1", manifestOf("v1"));
  for (const tag of ["a", "b"]) up.addManifest(tag, manifestOf(tag));
  up.addManifest("never-pulled", manifestOf("never"));
  up.addManifest("v1", v1.bytes, { repo: "other" });
  up.tagLists.set("app", ["a", "b", "never-pulled", "v1"]);

  // The connected side: pulls fill the store and the records.
  const online = await startInProcessStowage(t, ["--upstream", `local=${up.url}`], { logLevel: "warn" });
  for (const tag of ["v1", "a", "b"]) t.equal((await fetch(`${online.url}/v2/local/app/manifests/${tag}`)).status, 200, `pulled ${tag}`);
  for (const bytes of [config, layer]) t.equal(Buffer.from(await (await fetch(`${online.url}/v2/local/app/blobs/${sha256(bytes)}`)).arrayBuffer()).equals(bytes), true, "pulled a blob");

  // The dark side: the same store, and an "upstream" that accepts connections and never answers,
  // so anything that tried to reach it would hang for the whole upstream timeout.
  const dark = await startHttpServer(t, () => {});
  const offline = await startInProcessStowage(t, [
    "--upstream", `local=${dark.url}`, "--data-dir", online.dataDir, "--offline", "--tag-ttl", "0", "--upstream-timeout", "30s",
  ], { logLevel: "warn" });
  const seenBefore = up.requests.length;
  const get = async (path: string, init: RequestInit = {}) => {
    const started = Date.now();
    const res = await fetch(`${offline.url}${path}`, init);
    const body = Buffer.from(await res.arrayBuffer());
    return { res, body, ms: Date.now() - started };
  };

  await t.test("tags and manifests from the store, whatever their age", async (t) => {
    const m = await get("/v2/local/app/manifests/v1");
    t.equal(m.res.status, 200);
    t.ok(m.body.equals(v1.bytes), "the bytes pulled online");
    t.equal(m.res.headers.get("docker-content-digest"), v1.digest);
    t.equal(m.res.headers.get("x-stowage-cache"), "cache", "with --tag-ttl 0 online would have asked upstream");
    t.equal((await get("/v2/local/app/manifests/v1", { method: "HEAD" })).res.status, 200, "HEAD");
    t.equal((await get(`/v2/local/app/manifests/${v1.digest}`)).res.status, 200, "by digest");
  });

  await t.test("blobs this repository was linked to", async (t) => {
    const b = await get(`/v2/local/app/blobs/${sha256(layer)}`);
    t.equal(b.res.status, 200);
    t.ok(b.body.equals(layer), "the layer, whole");
    const h = await get(`/v2/local/app/blobs/${sha256(layer)}`, { method: "HEAD" });
    t.equal(h.res.status, 200, "HEAD");
    t.equal(h.res.headers.get("content-length"), String(layer.length));
    const r = await get(`/v2/local/app/blobs/${sha256(layer)}`, { headers: { range: "bytes=10-19" } });
    t.equal(r.res.status, 206, "a range");
    t.ok(r.body.equals(layer.subarray(10, 20)));
  });

  await t.test("misses: 404 in the OCI shape, saying the upstream is offline, without waiting", async (t) => {
    const misses: Array<[string, string, string, string]> = [
      ["/v2/local/app/manifests/never-pulled", "GET", "MANIFEST_UNKNOWN", "manifest local/app:never-pulled is not in the cache, and upstream local is offline (--offline): nothing is fetched; prefill or import it on the connected side"],
      ["/v2/local/app/manifests/never-pulled", "HEAD", "MANIFEST_UNKNOWN", ""],
      [`/v2/local/app/manifests/${sha256("none")}`, "GET", "MANIFEST_UNKNOWN", `manifest local/app@${sha256("none")} is not in the cache, and upstream local is offline (--offline): nothing is fetched; prefill or import it on the connected side`],
      [`/v2/local/app/blobs/${sha256(unpulled)}`, "GET", "BLOB_UNKNOWN", `blob ${sha256(unpulled)} of local/app is not in the cache, and upstream local is offline (--offline): nothing is fetched; prefill or import it on the connected side`],
      [`/v2/local/app/blobs/${sha256(unpulled)}`, "HEAD", "BLOB_UNKNOWN", ""],
      // Stored, but this repository was never linked to it: the records decide, nobody is asked.
      [`/v2/local/other/blobs/${sha256(layer)}`, "GET", "BLOB_UNKNOWN", `blob ${sha256(layer)} of local/other is not in the cache, and upstream local is offline (--offline): nothing is fetched; prefill or import it on the connected side`],
      ["/v2/local/other/manifests/v1", "GET", "MANIFEST_UNKNOWN", ""],
      ["/v2/local/nothing/tags/list", "GET", "NAME_UNKNOWN", "repository local/nothing has no tags in the cache, and upstream local is offline (--offline): nothing is fetched; prefill or import it on the connected side"],
    ];
    for (const [path, method, code, message] of misses) {
      const got = await get(path, { method });
      t.ok(got.ms < 2_000, `${method} ${path}: answered in ${got.ms} ms, not after a timeout`);
      if (method === "HEAD") {
        t.equal(got.res.status, 404, `${method} ${path}: 404`);
        continue;
      }
      const { error } = await expectOciError(t, got, 404, code, `${method} ${path}`);
      if (message) t.equal(error?.message, message, `${method} ${path}: says why`);
    }
  });

  await t.test("tag lists from the tag records, sorted and paged as the spec pages", async (t) => {
    const all = await get("/v2/local/app/tags/list");
    t.equal(all.res.status, 200);
    t.same(JSON.parse(all.body.toString()), { name: "local/app", tags: ["a", "b", "v1"] }, "the tags pulled, not the upstream's list");
    const first = await get("/v2/local/app/tags/list?n=2");
    t.same(JSON.parse(first.body.toString()).tags, ["a", "b"]);
    t.equal(first.res.headers.get("link"), '</v2/local/app/tags/list?n=2&last=b>; rel="next"');
    const second = await get("/v2/local/app/tags/list?n=2&last=b");
    t.same(JSON.parse(second.body.toString()).tags, ["v1"]);
    t.equal(second.res.headers.get("link"), null, "the last page has no next link");
  });

  t.equal(up.requests.length, seenBefore, "the real upstream saw nothing (no token, HEAD or GET)");
  t.same(dark.seen, [], "the configured upstream address saw no connection's request");
});

t.test("one upstream offline in the config file, the other online", async (t) => {
  const lan = await new FakeRegistry().start(t);
  const hub = await new FakeRegistry().start(t);
  const bytes = pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256("{}"), size: 2 }, layers: [] });
  lan.addManifest("v1", bytes);
  hub.addManifest("v1", bytes);
  const yaml = `upstreams:\n  - name: lan\n    url: ${lan.url}\n    offline: true\n  - name: hub\n    url: ${hub.url}\n`;
  const stowage = await startInProcessStowage(t, ["--config", "$DIR/stowage.yaml"], { files: { "stowage.yaml": yaml }, logLevel: "warn" });
  t.equal((await fetch(`${stowage.url}/v2/hub/app/manifests/v1`)).status, 200, "the online upstream is pulled through");
  await expectOciError(t, await fetch(`${stowage.url}/v2/lan/app/manifests/v1`), 404, "MANIFEST_UNKNOWN", "the offline one is not asked");
  t.same(lan.requests, [], "the offline upstream saw nothing");
});
