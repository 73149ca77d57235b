// The HTTP surface: routing and target tables, the credential policy, and the
// handler against a real Stowage whose upstream is a small in-test registry.
import t, { type Test } from "tap";
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { DigestMismatchError, StoreError } from "../../src/cache/fetch-errors.ts";
import { registryErrorFor, UnusableUpstreamReply } from "../../src/cache/registry-error-for.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { methodLabel, statusLabel } from "../../src/metrics/labels.ts";
import { UpstreamError } from "../../src/upstream/upstream-error.ts";
import { matchRoute, type Route } from "../../src/http/routes.ts";
import { resolveTarget } from "../../src/upstream/target.ts";
import { RegistryError } from "../../src/registry/errors.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { FakeCdn, FakeRegistry, type Manifest } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { expectOciError, sha256 } from "../support/oci.ts";
import { committed } from "../support/store-state.ts";
import { DOCKER_HUB } from "../support/upstreams.ts";

const HEX = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c";
const DIGEST = `sha256:${HEX}`;

// ------------------------------------------------------------------ tables

t.test("matchRoute", async (t) => {
  const cases: Array<[string, Route]> = [
    ["/v2/", { kind: "base" }],
    ["/v2", { kind: "base" }],
    ["/v2/library/alpine/manifests/3.20", { kind: "manifest", name: "library/alpine", reference: "3.20" }],
    ["/v2/alpine/manifests/latest", { kind: "manifest", name: "alpine", reference: "latest" }],
    ["/v2/a/b/c/d/e/manifests/v1", { kind: "manifest", name: "a/b/c/d/e", reference: "v1" }],
    [`/v2/library/alpine/manifests/${DIGEST}`, { kind: "manifest", name: "library/alpine", reference: DIGEST }],
    // containerd and some libraries escape the colon of a digest
    [`/v2/library/alpine/manifests/sha256%3A${HEX}`, { kind: "manifest", name: "library/alpine", reference: DIGEST }],
    [`/v2/library/alpine/blobs/${DIGEST}`, { kind: "blob", name: "library/alpine", digest: DIGEST }],
    [`/v2/library/alpine/blobs/sha256%3A${HEX}`, { kind: "blob", name: "library/alpine", digest: DIGEST }],
    [`/v2/ghcr.io/org/team/tool/blobs/${DIGEST}`, { kind: "blob", name: "ghcr.io/org/team/tool", digest: DIGEST }],
    ["/v2/a/blobs/uploads/", { kind: "blob-upload", name: "a" }],
    ["/v2/a/blobs/uploads/3f1c5c2e-uuid", { kind: "blob-upload", name: "a" }],
    ["/v2/org/a/blobs/uploads", { kind: "blob-upload", name: "org/a" }],
    ["/v2/a/tags/list", { kind: "tags", name: "a" }],
    ["/v2/org/sub/img/tags/list", { kind: "tags", name: "org/sub/img" }],
    // the words of the API used as name components: the last one decides
    ["/v2/manifests/blobs/manifests/latest", { kind: "manifest", name: "manifests/blobs", reference: "latest" }],
    [`/v2/blobs/manifests/blobs/${DIGEST}`, { kind: "blob", name: "blobs/manifests", digest: DIGEST }],
    ["/v2/tags/list/manifests/list", { kind: "manifest", name: "tags/list", reference: "list" }],
    ["/v2/x/blobs/uploads/manifests/latest", { kind: "manifest", name: "x/blobs/uploads", reference: "latest" }],
    ["/v2/manifests/tags/list", { kind: "tags", name: "manifests" }],
    [`/v2/a/referrers/${DIGEST}`, { kind: "referrers", name: "a", digest: DIGEST }],
    ["/v2/_catalog", { kind: "catalog" }],
    ["/healthz", { kind: "healthz" }],
    ["/readyz", { kind: "readyz" }],
    ["/favicon.ico", { kind: "not-found" }],
    ["/", { kind: "not-found" }],
    ["/v2/a/manifests/", { kind: "not-found" }],
    ["/v2/tags/list", { kind: "not-found" }],
    ["/v2/a/tags/list/", { kind: "not-found" }],
    ["/v1/_ping", { kind: "not-found" }],
    ["/v2/a/manifests/latest/extra", { kind: "not-found" }],
  ];
  for (const [path, route] of cases) t.same(matchRoute(path), route, path);
});

const GHCR: Upstream = { name: "ghcr.io", url: "https://ghcr.io", host: "ghcr.io", aliases: ["ghcr.io"], dockerHub: false, allowPrivateNetwork: false };
const LOCAL: Upstream = {
  name: "local",
  url: "http://127.0.0.1:5001",
  host: "127.0.0.1:5001",
  aliases: ["127.0.0.1:5001"],
  dockerHub: false,
  allowPrivateNetwork: false,
};
const UPSTREAMS = [DOCKER_HUB, GHCR, LOCAL];

t.test("resolveTarget", async (t) => {
  const cases: Array<[name: string, ns: string | null, upstream: string, repo: string]> = [
    ["alpine", null, "docker.io", "library/alpine"],
    ["library/alpine", null, "docker.io", "library/alpine"],
    ["bitnami/redis", null, "docker.io", "bitnami/redis"],
    ["docker.io/alpine", null, "docker.io", "library/alpine"],
    ["docker.io/library/alpine", null, "docker.io", "library/alpine"],
    ["ghcr.io/owner/img", null, "ghcr.io", "owner/img"],
    ["ghcr.io/img", null, "ghcr.io", "img"], // no library/ outside Docker Hub
    ["local/team/app", null, "local", "team/app"],
    ["quay.io/org/img", null, "docker.io", "quay.io/org/img"], // not ours: a Docker Hub name
    // mirror mode: containerd names the registry in ?ns= and sends the bare repository
    ["alpine", "docker.io", "docker.io", "library/alpine"],
    ["library/alpine", "index.docker.io", "docker.io", "library/alpine"],
    ["alpine", "registry-1.docker.io", "docker.io", "library/alpine"],
    ["alpine", "Docker.IO", "docker.io", "library/alpine"],
    ["owner/img", "ghcr.io", "ghcr.io", "owner/img"],
    ["app", "127.0.0.1:5001", "local", "app"],
  ];
  for (const [name, ns, upstream, repo] of cases) {
    const target = resolveTarget(UPSTREAMS, "docker.io", name, ns);
    t.same({ upstream: target.upstream.name, repo: target.repo }, { upstream, repo }, `${name} ns=${ns}`);
  }
  // another default upstream
  t.equal(resolveTarget(UPSTREAMS, "ghcr.io", "img", null).repo, "img");
  t.equal(resolveTarget(UPSTREAMS, "ghcr.io", "img", null).upstream.name, "ghcr.io");

  const failures: Array<[name: string, ns: string | null, code: string, status: number]> = [
    ["alpine", "quay.io", "NAME_UNKNOWN", 404],
    ["owner/img", "gcr.io", "NAME_UNKNOWN", 404],
    ["Alpine", null, "NAME_INVALID", 400],
    ["library/Alpine", "docker.io", "NAME_INVALID", 400],
    ["a/../b", null, "NAME_INVALID", 400],
    ["..", null, "NAME_INVALID", 400],
    ["alpine/", null, "NAME_INVALID", 400],
    ["/alpine", null, "NAME_INVALID", 400],
    ["a//b", null, "NAME_INVALID", 400],
    ["", null, "NAME_INVALID", 400],
  ];
  for (const [name, ns, code, status] of failures) {
    let caught: unknown = null;
    try {
      resolveTarget(UPSTREAMS, "docker.io", name, ns);
    } catch (err) {
      caught = err;
    }
    t.ok(caught instanceof RegistryError, `${JSON.stringify(name)} ns=${ns} throws a RegistryError`);
    if (caught instanceof RegistryError) {
      t.same({ code: caught.code, status: caught.status }, { code, status }, `${JSON.stringify(name)} ns=${ns}`);
      // An unknown ?ns= is a plain 404: callers learn nothing about which registries are mirrored.
      const shown = JSON.stringify({ message: caught.message, detail: caught.detail });
      for (const u of UPSTREAMS) t.notMatch(shown, u.host, `${JSON.stringify(name)} ns=${ns}: does not name ${u.host}`);
    }
  }
});

// ------------------------------------------------------------ handler tests

// Indented JSON, so that any re-serialisation by the cache would change the bytes and the digest.
const pretty = (v: unknown) => Buffer.from(JSON.stringify(v, null, 3) + "\n");

const startStowage = startInProcessStowage;

async function get(url: string, init: RequestInit = {}): Promise<{ res: Response; body: Buffer }> {
  const res = await fetch(url, init);
  return { res, body: Buffer.from(await res.arrayBuffer()) };
}

t.test("the handler against a real Stowage and an in-test upstream", async (t) => {
  const cdn = await new FakeCdn().start(t);
  const main = await new FakeRegistry({ auth: true, cdn }).start(t);
  const other = await new FakeRegistry().start(t);
  const mainHost = new URL(main.url).host;
  const otherHost = new URL(other.url).host;

  const configBlob = pretty({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [] } });
  const smallLayer = randomBytes(100 * 1024);
  const coldLayer = randomBytes(1024 * 1024 + 17);
  const rangeLayer = randomBytes(300 * 1024);
  const configDigest = main.addBlob(configBlob);
  const smallDigest = main.addBlob(smallLayer);
  const coldDigest = main.addBlob(coldLayer);
  const rangeDigest = main.addBlob(rangeLayer);
  const desc = (mediaType: string, bytes: Buffer) => ({ mediaType, digest: sha256(bytes), size: bytes.length });

  const ociManifest = main.addManifest("oci", pretty({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: desc("application/vnd.oci.image.config.v1+json", configBlob),
    layers: [desc("application/vnd.oci.image.layer.v1.tar+gzip", smallLayer)],
  }), { mediaType: OCI_MANIFEST });
  const dockerManifest = main.addManifest("docker", pretty({
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST,
    config: desc("application/vnd.docker.container.image.v1+json", configBlob),
    layers: [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", smallLayer)],
  }), { mediaType: DOCKER_MANIFEST });
  const platform = { os: "linux", architecture: "amd64" };
  const ociIndex = main.addManifest("index", pretty({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [{ ...desc(OCI_MANIFEST, ociManifest.bytes), platform }],
  }), { mediaType: OCI_INDEX });
  const dockerList = main.addManifest("list", pretty({
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST_LIST,
    manifests: [{ ...desc(DOCKER_MANIFEST, dockerManifest.bytes), platform }],
  }), { mediaType: DOCKER_MANIFEST_LIST });
  const otherManifest = other.addManifest("oci", pretty({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: desc("application/vnd.oci.image.config.v1+json", configBlob),
    layers: [],
    annotations: { "served-by": "other" },
  }), { mediaType: OCI_MANIFEST });

  const stowage = await startStowage(t, [
    "--upstream", `local=${main.url}`,
    "--upstream", `other=${other.url}`,
    "--upstream-credentials", "local=alice:s3cret-pass",
    "--tag-ttl", "1",
    "--upstream-timeout", "5s",
  ]);
  const base = stowage.url;

  await t.test("GET and HEAD /v2/", async (t) => {
    for (const method of ["GET", "HEAD"]) {
      const { res } = await get(`${base}/v2/`, { method });
      t.equal(res.status, 200, method);
      t.equal(res.headers.get("docker-distribution-api-version"), "registry/2.0", method);
    }
  });

  await t.test("health and readiness", async (t) => {
    const health = await get(`${base}/healthz`);
    t.equal(health.res.status, 200);
    const ready = await get(`${base}/readyz`);
    t.equal(ready.res.status, 200);
    t.match(JSON.parse(ready.body.toString()), { status: "ready" });
  });

  await t.test("manifests of all four media types, by tag and by digest", async (t) => {
    const all: Array<[string, Manifest]> = [["oci", ociManifest], ["docker", dockerManifest], ["index", ociIndex], ["list", dockerList]];
    for (const [tag, m] of all) {
      for (const ref of [tag, m.digest]) {
        const path = `${base}/v2/app/manifests/${ref}`;
        const { res, body } = await get(path);
        t.equal(res.status, 200, `GET ${tag} by ${ref}`);
        t.ok(body.equals(m.bytes), `GET ${ref}: the upstream's exact bytes`);
        t.equal(res.headers.get("content-type"), m.mediaType, `GET ${ref}: content type`);
        t.equal(res.headers.get("docker-content-digest"), m.digest, `GET ${ref}: digest`);
        t.equal(res.headers.get("content-length"), String(m.bytes.length), `GET ${ref}: length`);
        t.equal(res.headers.get("docker-distribution-api-version"), "registry/2.0");

        const head = await get(path, { method: "HEAD" });
        t.equal(head.res.status, 200, `HEAD ${ref}`);
        t.equal(head.body.length, 0, `HEAD ${ref}: no body`);
        t.equal(head.res.headers.get("content-length"), String(m.bytes.length), `HEAD ${ref}: length`);
        t.equal(head.res.headers.get("content-type"), m.mediaType, `HEAD ${ref}: content type`);
        t.equal(head.res.headers.get("docker-content-digest"), m.digest, `HEAD ${ref}: digest`);
      }
    }
    // an escaped colon names the same manifest
    const escaped = await get(`${base}/v2/app/manifests/${ociManifest.digest.replace(":", "%3A")}`);
    t.equal(escaped.res.status, 200);
    t.ok(escaped.body.equals(ociManifest.bytes));
  });

  await t.test("a cached manifest by digest is served without asking the upstream", async (t) => {
    const mark = main.seen.length;
    const tokens = main.tokenRequests.length;
    for (const m of [ociManifest, dockerManifest, ociIndex, dockerList]) {
      const { res, body } = await get(`${base}/v2/app/manifests/${m.digest}`);
      t.equal(res.status, 200);
      t.ok(body.equals(m.bytes));
      t.equal(res.headers.get("x-stowage-cache"), "cache");
    }
    t.same(main.since(mark), [], "no upstream request");
    t.equal(main.tokenRequests.length, tokens, "no token request");
  });

  await t.test("blobs: GET and HEAD headers, then served from the cache", async (t) => {
    const path = `${base}/v2/app/blobs/${smallDigest}`;
    const first = await get(path);
    t.equal(first.res.status, 200);
    t.ok(first.body.equals(smallLayer), "exact bytes");
    t.equal(first.res.headers.get("content-length"), String(smallLayer.length));
    t.equal(first.res.headers.get("content-type"), "application/octet-stream");
    t.equal(first.res.headers.get("docker-content-digest"), smallDigest);
    t.equal(first.res.headers.get("docker-distribution-api-version"), "registry/2.0");

    await committed(stowage, smallDigest);
    const mark = main.seen.length;
    const cdnMark = cdn.seen.length;
    const second = await get(path);
    t.equal(second.res.status, 200);
    t.ok(second.body.equals(smallLayer));
    t.equal(second.res.headers.get("x-stowage-cache"), "cache");
    const head = await get(path, { method: "HEAD" });
    t.equal(head.res.status, 200);
    t.equal(head.body.length, 0, "HEAD has no body");
    t.equal(head.res.headers.get("content-length"), String(smallLayer.length));
    t.equal(head.res.headers.get("docker-content-digest"), smallDigest);
    t.same(main.since(mark), [], "the upstream is not asked again");
    t.same(cdn.seen.slice(cdnMark), [], "nor is the CDN");

    // HEAD of a blob nobody fetched yet: the upstream answers, nothing is downloaded
    const cdnBefore = cdn.seen.length;
    const cold = await get(`${base}/v2/app/blobs/${configDigest}`, { method: "HEAD" });
    t.equal(cold.res.status, 200);
    t.equal(cold.body.length, 0);
    t.equal(cold.res.headers.get("content-length"), String(configBlob.length));
    t.same(cdn.seen.slice(cdnBefore).map((s) => s.method), ["HEAD"], "a HEAD, not a download");
  });

  await t.test("a GET right after the first download completes is served from the cache", async (t) => {
    // The window is short: try a few blobs so that a bug shows up on most runs.
    const extra: string[] = [];
    for (let i = 0; i < 10; i++) {
      const layer = randomBytes(20 * 1024 * (i + 1));
      const digest = main.addBlob(layer);
      const first = await get(`${base}/v2/app/blobs/${digest}`);
      const mark = main.seen.length;
      const second = await get(`${base}/v2/app/blobs/${digest}`);
      t.ok(first.body.equals(layer) && second.body.equals(layer), `blob ${i}: both GETs get the bytes`);
      extra.push(...main.since(mark).map((s) => `${s.method} ${s.path}`));
    }
    // An extra upstream HEAD is wasted, and fails the request when the upstream is down or rate-limiting.
    t.same(extra, [], "no upstream request for a blob just downloaded");
  });

  await t.test("ranges", async (t) => {
    // cold: the blob is not cached yet, the range is cut from the live download
    const cold = await get(`${base}/v2/app/blobs/${coldDigest}`, { headers: { range: "bytes=0-9" } });
    t.equal(cold.res.status, 206, "cold blob: 206");
    t.equal(cold.res.headers.get("content-range"), `bytes 0-9/${coldLayer.length}`);
    t.equal(cold.res.headers.get("content-length"), "10");
    t.ok(cold.body.equals(coldLayer.subarray(0, 10)), "cold blob: the first 10 bytes");

    await get(`${base}/v2/app/blobs/${rangeDigest}`);
    await committed(stowage, rangeDigest);
    const mark = cdn.seen.length;
    const warm = await get(`${base}/v2/app/blobs/${rangeDigest}`, { headers: { range: "bytes=0-9" } });
    t.equal(warm.res.status, 206, "cached blob: 206");
    t.equal(warm.res.headers.get("content-range"), `bytes 0-9/${rangeLayer.length}`);
    t.ok(warm.body.equals(rangeLayer.subarray(0, 10)));
    const tail = await get(`${base}/v2/app/blobs/${rangeDigest}`, { headers: { range: "bytes=1000-" } });
    t.equal(tail.res.status, 206);
    t.equal(tail.res.headers.get("content-range"), `bytes 1000-${rangeLayer.length - 1}/${rangeLayer.length}`);
    t.ok(tail.body.equals(rangeLayer.subarray(1000)), "open-ended range");
    const suffix = await get(`${base}/v2/app/blobs/${rangeDigest}`, { headers: { range: "bytes=-5" } });
    t.equal(suffix.res.status, 206);
    t.ok(suffix.body.equals(rangeLayer.subarray(rangeLayer.length - 5)), "suffix range");

    const beyond = await get(`${base}/v2/app/blobs/${rangeDigest}`, { headers: { range: "bytes=999999-" } });
    t.equal(beyond.res.status, 416);
    t.equal(beyond.res.headers.get("content-range"), `bytes */${rangeLayer.length}`);
    t.same(cdn.seen.slice(mark), [], "ranges of a cached blob never reach upstream");
  });

  await t.test("errors are OCI JSON", async (t) => {
    const unknownTag = await get(`${base}/v2/app/manifests/nope`);
    await expectOciError(t, unknownTag, 404, "MANIFEST_UNKNOWN");
    const unknownRepo = await get(`${base}/v2/no/such/repo/manifests/latest`);
    await expectOciError(t, unknownRepo, 404, "MANIFEST_UNKNOWN");
    const unknownBlob = await get(`${base}/v2/app/blobs/sha256:${"0".repeat(64)}`);
    await expectOciError(t, unknownBlob, 404, "BLOB_UNKNOWN");

    for (const path of ["/v2/app/blobs/sha256:xyz", `/v2/app/blobs/sha256:${HEX.toUpperCase()}`, "/v2/app/manifests/sha256:123", "/v2/app/blobs/md5:abc"]) {
      const r = await get(`${base}${path}`);
      await expectOciError(t, r, 400, "DIGEST_INVALID");
    }
    const badName = await get(`${base}/v2/App/manifests/latest`);
    await expectOciError(t, badName, 400, "NAME_INVALID");

    const writes: Array<[string, string]> = [
      ["PUT", "/v2/app/manifests/latest"],
      ["POST", "/v2/app/blobs/uploads/"],
      ["PATCH", "/v2/app/blobs/uploads/0b3f6c0e"],
      ["PUT", "/v2/app/blobs/uploads/0b3f6c0e?digest=" + DIGEST],
      ["DELETE", `/v2/app/manifests/${ociManifest.digest}`],
      ["DELETE", `/v2/app/blobs/${smallDigest}`],
    ];
    for (const [method, path] of writes) {
      const r = await get(`${base}${path}`, { method, ...(method === "GET" ? {} : { body: method === "DELETE" ? null : "x" }) });
      await expectOciError(t, r, 405, "UNSUPPORTED");
    }

    for (const path of ["/favicon.ico", "/", "/v1/_ping", "/v2/app/manifests/"]) {
      const r = await get(`${base}${path}`);
      await expectOciError(t, r, 404, "UNSUPPORTED");
      t.notMatch(r.body.toString(), /<html/i, `${path}: no HTML`);
    }
    const head404 = await get(`${base}/favicon.ico`, { method: "HEAD" });
    t.equal(head404.res.status, 404);
    t.equal(head404.body.length, 0, "HEAD errors have no body");
  });

  await t.test("tags: fresh within --tag-ttl, then revalidated with a HEAD", async (t) => {
    const v1 = main.addManifest("stable", pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc("application/vnd.oci.image.config.v1+json", configBlob), layers: [], annotations: { v: "1" } }), { repo: "ttl" });
    const m1 = main.addManifest("moving", pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc("application/vnd.oci.image.config.v1+json", configBlob), layers: [], annotations: { v: "m1" } }), { repo: "ttl" });
    for (const tag of ["stable", "moving"]) t.equal((await get(`${base}/v2/ttl/manifests/${tag}`)).res.status, 200);

    const fresh = main.seen.length;
    const again = await get(`${base}/v2/ttl/manifests/stable`);
    t.ok(again.body.equals(v1.bytes));
    t.equal(again.res.headers.get("x-stowage-cache"), "cache");
    t.same(main.since(fresh), [], "within the TTL: no upstream request");

    await new Promise((r) => setTimeout(r, 1100));
    const m2 = main.addManifest("moving", pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc("application/vnd.oci.image.config.v1+json", configBlob), layers: [], annotations: { v: "m2" } }), { repo: "ttl" });
    t.not(m2.digest, m1.digest);

    const stale = main.seen.length;
    const revalidated = await get(`${base}/v2/ttl/manifests/stable`);
    t.equal(revalidated.res.status, 200);
    t.ok(revalidated.body.equals(v1.bytes));
    t.same(main.since(stale).map((s) => `${s.method} ${s.path}`), ["HEAD /v2/ttl/manifests/stable"], "after the TTL: one HEAD only");

    const moved = main.seen.length;
    const updated = await get(`${base}/v2/ttl/manifests/moving`);
    t.ok(updated.body.equals(m2.bytes), "a moved tag serves the new manifest");
    t.equal(updated.res.headers.get("docker-content-digest"), m2.digest);
    t.same(main.since(moved).map((s) => `${s.method} ${s.path}`), ["HEAD /v2/ttl/manifests/moving", "GET /v2/ttl/manifests/moving"]);
  });

  await t.test("upstream tokens: fetched once per repository, with the credentials, then reused", async (t) => {
    const forApp = main.tokenRequests.filter((r) => r.search.includes("scope=repository%3Aapp%3Apull"));
    t.equal(forApp.length, 1, "one token request for repository app after many requests");
    const unauthorized = main.seen.filter((s) => s.path.startsWith("/v2/app/") && s.authorization === undefined);
    t.equal(unauthorized.length, 1, "only the very first request went without a token");
    const expected = `Basic ${Buffer.from("alice:s3cret-pass").toString("base64")}`;
    t.ok(main.tokenRequests.length > 0);
    for (const r of main.tokenRequests) t.equal(r.authorization, expected, "the token realm (same host) gets the credentials");
    t.match(main.tokenRequests[0]?.search ?? "", /service=fake/);
    const withToken = main.seen.filter((s) => s.authorization?.startsWith("Bearer "));
    t.ok(withToken.length >= 10, "later requests carry the bearer token");
  });

  await t.test("a blob redirect to another host gets no Authorization", async (t) => {
    const layer = randomBytes(64 * 1024);
    const digest = main.addBlob(layer);
    const cdnMark = cdn.seen.length;
    const { res, body } = await get(`${base}/v2/app/blobs/${digest}`);
    t.equal(res.status, 200);
    t.ok(body.equals(layer), "the client gets the bytes from the redirect target");
    const cdnRequests = cdn.seen.slice(cdnMark);
    t.same(cdnRequests.map((s) => `${s.method} ${s.path}${s.search}`), [`GET /data/${digest}?signature=abc`]);
    t.same(cdn.seen.filter((s) => s.authorization !== undefined), [], "the redirect target never saw an Authorization header");
    t.ok(main.seen.some((s) => s.path === `/v2/app/blobs/${digest}` && s.authorization?.startsWith("Bearer ")), "the registry itself got the token");
  });

  await t.test("?ns= mirror routing and upstream-name prefixes", async (t) => {
    const mainMark = main.seen.length;
    const otherMark = other.seen.length;
    const viaNs = await get(`${base}/v2/app/manifests/oci?ns=${otherHost}`);
    t.equal(viaNs.res.status, 200);
    t.ok(viaNs.body.equals(otherManifest.bytes), "?ns= picks the upstream with that host");
    t.same(other.since(otherMark).map((s) => `${s.method} ${s.path}`), ["GET /v2/app/manifests/oci"]);
    t.same(main.since(mainMark), [], "the default upstream was not asked");

    const viaPrefix = await get(`${base}/v2/other/app/manifests/${otherManifest.digest}`);
    t.equal(viaPrefix.res.status, 200);
    t.ok(viaPrefix.body.equals(otherManifest.bytes), "/v2/<upstream name>/<repo> picks that upstream");

    const viaMainNs = await get(`${base}/v2/app/manifests/${ociManifest.digest}?ns=${mainHost}`);
    t.equal(viaMainNs.res.status, 200);
    t.ok(viaMainNs.body.equals(ociManifest.bytes));

    const unknown = await get(`${base}/v2/app/manifests/oci?ns=quay.io`);
    await expectOciError(t, unknown, 404, "NAME_UNKNOWN");
    const unknownBlob = await get(`${base}/v2/app/blobs/${smallDigest}?ns=docker.io`);
    await expectOciError(t, unknownBlob, 404, "NAME_UNKNOWN");
  });

  await t.test("a blob cached for one repository is confirmed with the upstream before another may read it", async (t) => {
    const mark = main.seen.length;
    const r = await get(`${base}/v2/elsewhere/blobs/${smallDigest}`);
    t.equal(r.res.status, 404, "the upstream does not have it in that repository");
    t.same(main.since(mark).filter((s) => s.authorization).map((s) => `${s.method} ${s.path}`), [`HEAD /v2/elsewhere/blobs/${smallDigest}`]);
  });

  await t.test("a reference that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN; a malformed digest stays 400", async (t) => {
    const mark = main.seen.length;
    // The distribution spec's conformance tests ask for .INVALID_MANIFEST_NAME.
    for (const ref of [".INVALID_MANIFEST_NAME", "-leading-dash", "a".repeat(129), "tag%20with%20spaces"]) {
      const r = await get(`${base}/v2/app/manifests/${ref}`);
      await expectOciError(t, r, 404, "MANIFEST_UNKNOWN");
      const head = await get(`${base}/v2/app/manifests/${ref}`, { method: "HEAD" });
      t.equal(head.res.status, 404, `HEAD ${ref.slice(0, 20)}: 404`);
      t.equal(head.body.length, 0, "HEAD: no body");
    }
    for (const ref of ["sha256:totallywrong", `sha256:${HEX.toUpperCase()}`, "md5:abc"]) {
      for (const method of ["GET", "HEAD"]) {
        const r = await get(`${base}/v2/app/manifests/${ref}`, { method });
        t.equal(r.res.status, 400, `${method} ${ref}: 400`);
        if (method === "GET") await expectOciError(t, r, 400, "DIGEST_INVALID");
      }
    }
    t.same(main.since(mark), [], "the upstream is not asked about references that cannot exist");
  });

  await t.test("an unknown ?ns= is a plain 404 that names none of the mirrored registries", async (t) => {
    for (const path of ["/v2/app/manifests/oci?ns=quay.io", `/v2/app/blobs/${smallDigest}?ns=gcr.io`, "/v2/app/tags/list?ns=evil.example"]) {
      const r = await get(`${base}${path}`);
      await expectOciError(t, r, 404, "NAME_UNKNOWN");
      const text = r.body.toString();
      t.notMatch(text, mainHost, `${path}: does not list ${mainHost}`);
      t.notMatch(text, otherHost, `${path}: does not list ${otherHost}`);
      t.notMatch(text, "127.0.0.1", `${path}: no addresses`);
    }
  });

  await t.test("an upstream's HTML or ill-shaped JSON sent with a manifest media type is never cached", async (t) => {
    // A distinct valid manifest per case, so no case finds another's bytes cached under the same digest.
    const good = (note: string) =>
      pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc("application/vnd.oci.image.config.v1+json", configBlob), layers: [], annotations: { note } });
    const cases: Array<[tag: string, mediaType: string, bytes: Buffer, problem: RegExp]> = [
      ["login-page", OCI_MANIFEST, Buffer.from("<!DOCTYPE html>\n<html><head><title>Sign in to the proxy</title></head><body>10.9.8.7</body></html>\n"), /not JSON/],
      ["error-json", DOCKER_MANIFEST, Buffer.from(JSON.stringify({ errors: [{ code: "UNKNOWN", message: "backend at 10.9.8.7 down" }] })), /schemaVersion is missing/],
      ["image-as-index", OCI_INDEX, good("sent as an index"), /contradicts/],
      ["no-layers", DOCKER_MANIFEST, pretty({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: desc("application/vnd.docker.container.image.v1+json", configBlob) }), /layers is missing/],
    ];
    for (const [tag, mediaType, bytes, problem] of cases) {
      const served = other.addManifest(tag, bytes, { repo: "shapes", mediaType });
      for (const ref of [tag, served.digest]) {
        const r = await get(`${base}/v2/other/shapes/manifests/${ref}`);
        await expectOciError(t, r, 502, "UNAVAILABLE");
        const message = String(JSON.parse(r.body.toString()).errors[0].message);
        t.match(message, problem, `${tag} by ${ref.slice(0, 15)}: says what is wrong`);
        t.match(message, /unusable response/, `${tag}: says it is the upstream's fault`);
        t.notMatch(message, "10.9.8.7", `${tag}: the upstream's body is not echoed`);
        t.notMatch(r.body.toString(), "<html", `${tag}: no HTML reaches the client`);
      }
      t.ok(stowage.logs.some((l) => l.includes("unusable manifest") && l.includes(tag)), `${tag}: the log says what came`);
      // The upstream heals: the next pull gets the real manifest, so nothing was cached under the tag.
      const fixed = other.addManifest(tag, good(tag), { repo: "shapes" });
      const mark = other.seen.length;
      const after = await get(`${base}/v2/other/shapes/manifests/${tag}`);
      t.equal(after.res.status, 200, `${tag}: 200 once the upstream sends a manifest`);
      t.ok(after.body.equals(fixed.bytes), `${tag}: the real manifest, byte for byte`);
      t.same(other.since(mark).map((s) => `${s.method} ${s.path}`), [`GET /v2/shapes/manifests/${tag}`], `${tag}: fetched, not served from cache`);
    }
  });

  await t.test("tag lists: the upstream's Link header becomes ours; a list over the cap is refused, never buffered whole", async (t) => {
    other.on("/v2/paged/tags/list", (_req, res, _bytes, url) => {
      const last = url.searchParams.get("last");
      const body = JSON.stringify({ name: "paged", tags: last ? ["c"] : ["a", "b"] });
      res.writeHead(200, {
        "content-type": "application/json",
        ...(last ? {} : { link: `</v2/paged/tags/list?n=2&last=b>; rel="next"` }),
      });
      res.end(body);
    });
    const first = await get(`${base}/v2/other/paged/tags/list?n=2`);
    t.equal(first.res.status, 200);
    t.same(JSON.parse(first.body.toString()), { name: "other/paged", tags: ["a", "b"] });
    t.equal(first.res.headers.get("link"), `</v2/other/paged/tags/list?n=2&last=b>; rel="next"`, "the next page, on our path");
    const next = await get(new URL(first.res.headers.get("link")!.replace(/^<|>.*$/g, ""), base).href);
    t.same(JSON.parse(next.body.toString()), { name: "other/paged", tags: ["c"] });
    t.equal(next.res.headers.get("link"), null, "the last page has no link");
    const mirrored = await get(`${base}/v2/paged/tags/list?n=2&ns=${otherHost}`);
    t.equal(mirrored.res.headers.get("link"), `</v2/paged/tags/list?n=2&last=b&ns=${encodeURIComponent(otherHost)}>; rel="next"`, "?ns= is kept");

    // Endless: without a cap this would be read until the upstream timeout (and, for a real 150 MB list, held in memory).
    let sent = 0;
    let closed = false;
    other.on("/v2/endless/tags/list", (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"name":"endless","tags":[');
      const chunk = Buffer.from('"tag-0123456789abcdef",'.repeat(2048));
      const pump = () => {
        while (!closed && res.write(chunk)) sent += chunk.length;
        if (!closed) res.once("drain", pump);
      };
      res.on("close", () => (closed = true));
      pump();
    });
    const started = Date.now();
    const endless = await get(`${base}/v2/other/endless/tags/list`);
    await expectOciError(t, endless, 502, "UNAVAILABLE");
    const message = String(JSON.parse(endless.body.toString()).errors[0].message);
    t.match(message, /larger than 4 MiB/, "says why");
    t.match(message, /\?n=/, "and how to page instead");
    t.ok(Date.now() - started < 4000, `answered at the cap, not at the upstream timeout (${Date.now() - started} ms)`);
    await new Promise((r) => setTimeout(r, 100));
    t.ok(closed, "the upstream connection was given up");
    t.ok(sent < 32 * 1024 * 1024, `the upstream sent ${sent} bytes before Stowage stopped reading`);

    other.on("/v2/declared/tags/list", (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": String(150 * 1024 * 1024) });
      res.write('{"name":"declared","tags":[');
    });
    const declared = await get(`${base}/v2/other/declared/tags/list`);
    await expectOciError(t, declared, 502, "UNAVAILABLE");

    other.on("/v2/html/tags/list", (_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<html>maintenance</html>");
    });
    const html = await get(`${base}/v2/other/html/tags/list`);
    await expectOciError(t, html, 502, "UNAVAILABLE");
    t.match(html.body.toString(), /not a tag list/);
  });

  await t.test("metrics: made-up methods and odd statuses add no series", async (t) => {
    for (const method of ["BREW", "XYZZY", "PROPFIND", "patch", "M-SEARCH"]) {
      const r = await get(`${base}/v2/`, { method });
      t.ok(r.res.status >= 400 && r.res.status < 500, `${method}: refused`);
    }
    const metrics = await get(`${base}/metrics`);
    t.equal(metrics.res.status, 200, "without access control /metrics stays open");
    const text = metrics.body.toString();
    t.notMatch(text, /method="(?:BREW|XYZZY|PROPFIND|patch|M-SEARCH)"/, "no series per made-up method");
    t.match(text, /stowage_http_requests_total\{[^}]*method="other"[^}]*\} \d+/, "they are counted as other");
    const methods = new Set([...text.matchAll(/method="([^"]*)"/g)].map((m) => m[1]));
    for (const m of methods) t.ok(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"].includes(m!), `method label ${m}`);
    for (const [, status] of text.matchAll(/status="([^"]*)"/g)) t.ok(/^[1-5]\d\d$/.test(status!), `status label ${status}`);
  });
});

t.test("Prometheus text format of /metrics", async (t) => {
  const { MetricsRegistry } = await import("../../src/metrics/metrics.ts");
  const registry = new MetricsRegistry();
  const requests = registry.counter("demo_requests_total", "Requests.");
  const gauge = registry.gauge("demo_inflight", "In flight.");
  requests.inc({ route: "blob", status: "200" });
  requests.inc({ status: "200", route: "blob" }, 2); // label order does not matter
  requests.inc({ route: "manifest", status: 'we"ird\\\n' });
  requests.inc({ route: "blob", status: "200" }, -5); // counters never go down
  gauge.set({}, 3);
  const text = registry.render();
  t.match(text, "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\n");
  t.match(text, 'demo_requests_total{route="blob",status="200"} 3\n');
  t.match(text, 'demo_requests_total{route="manifest",status="we\\"ird\\\\\\n"} 1\n', "label values are escaped");
  t.match(text, "# TYPE demo_inflight gauge\ndemo_inflight 3\n");
  t.throws(() => registry.counter("demo_requests_total", "again"), "a name registered twice is a programming error");
  t.throws(() => registry.counter("bad name", "x"));
});

t.test("metric label values come from closed sets", async (t) => {
  for (const m of ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]) t.equal(methodLabel(m), m);
  for (const m of ["BREW", "get", "PROPFIND", "", "G".repeat(1000)]) t.equal(methodLabel(m), "other", JSON.stringify(m.slice(0, 10)));
  const statuses: Array<[number | string, string]> = [[200, "200"], [101, "101"], [599, "599"], ["404", "404"], [99, "other"], [600, "other"], [999, "other"], ["2000", "other"], ["abc", "other"], [200.5, "other"]];
  for (const [given, want] of statuses) t.equal(statusLabel(given), want, String(given));

  // The families themselves normalize, whatever a caller passes.
  const { createStowageMetrics } = await import("../../src/metrics/stowage-metrics.ts");
  const metrics = createStowageMetrics();
  for (let i = 0; i < 100; i++) metrics.requests.inc({ route: "base", method: `M${i}`, status: String(700 + i) });
  metrics.upstreamRequests.inc({ upstream: "u", kind: "blob", status: "999" });
  const text = metrics.registry.render();
  t.equal(text.match(/^stowage_http_requests_total\{/gm)?.length, 1, "100 made-up methods and statuses: one series");
  t.match(text, 'stowage_http_requests_total{method="other",route="base",status="other"} 100');
  t.match(text, 'stowage_upstream_requests_total{kind="blob",status="other",upstream="u"} 1');
});

t.test("5xx messages never carry the underlying error's text; 4xx keep their detail", async (t) => {
  const what = "manifest docker.io/library/alpine:3";
  const hidden: Array<[string, unknown, number, RegExp]> = [
    ["unreachable", new UpstreamError("unreachable", "upstream docker.io is unreachable: ECONNREFUSED (connect ECONNREFUSED 10.1.2.3:443)"), 503, /could not be reached/],
    ["timeout", new UpstreamError("timeout", "upstream docker.io sent no response within 30 s (socket 10.1.2.3:443)"), 503, /did not answer in time/],
    ["server error", new UpstreamError("server-error", "upstream docker.io answered 503 to GET /v2/x via 10.1.2.3", { status: 503 }), 503, /answered HTTP 503/],
    ["redirect refused", new UpstreamError("bad-response", "redirect to http://169.254.169.254/latest refused (10.1.2.3)"), 502, /unusable response$/],
    ["odd status", new UpstreamError("bad-response", "upstream answered 418 at 10.1.2.3", { status: 418 }), 502, /HTTP 418/],
    ["fs error", Object.assign(new Error("EACCES: permission denied, open '/var/lib/stowage/10.1.2.3/blobs/x'"), { code: "EACCES" }), 500, /failed internally/],
    ["store error", new StoreError("the blob store failed to write sha256:ab: ENOSPC: no space left on device, write '/data/10.1.2.3'"), 500, /the blob store failed$/],
  ];
  for (const [name, err, status, message] of hidden) {
    const e = registryErrorFor(err, "manifest", what);
    t.equal(e.status, status, `${name}: ${status}`);
    t.match(e.message, message, `${name}: plain words`);
    t.match(e.message, what, `${name}: says what failed`);
    t.notMatch(e.message, "10.1.2.3", `${name}: no address or path`);
    t.equal(e.cause, err, `${name}: the error itself stays with it, for the log`);
  }
  const shown: Array<[string, unknown, number, string]> = [
    ["unusable manifest", new UnusableUpstreamReply("the manifest (content type application/vnd.oci.image.manifest.v1+json) is not JSON"), 502, "is not JSON"],
    ["digest mismatch", new DigestMismatchError("upstream docker.io sent bytes for sha256:aa that hash to sha256:bb; nothing was cached"), 502, "hash to sha256:bb"],
    ["refused credentials (4xx)", new UpstreamError("unauthorized", "upstream docker.io token service refused the configured credentials (HTTP 401)", { status: 401 }), 403, "refused the configured credentials"],
  ];
  for (const [name, err, status, text] of shown) {
    const e = registryErrorFor(err, "manifest", what);
    t.equal(e.status, status, `${name}: ${status}`);
    t.match(e.message, text, `${name}: the detail is shown`);
  }
  t.equal(registryErrorFor(new UpstreamError("not-found", "x", { status: 404 }), "blob", "blob b").code, "BLOB_UNKNOWN");
});

/** Parses an OCI error body; fails the test if it is not one. */
function ociErrorOf(t: Test, body: Buffer): { code: string; message: string; detail?: Record<string, unknown> } {
  const parsed = JSON.parse(body.toString()) as { errors: Array<{ code: string; message: string; detail?: Record<string, unknown> }> };
  t.ok(Array.isArray(parsed.errors) && parsed.errors.length === 1, "one OCI error");
  return parsed.errors[0]!;
}

/** The log lines of one request. */
const linesOf = (logs: string[], requestId: string) => logs.filter((l) => l.includes(requestId));

t.test("5xx bodies say what failed and give the request id; the detail is only in the log", async (t) => {
  // An upstream that is down, at an address of its own (loopback, so nothing leaves the machine).
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.3", resolve));
  const deadPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const live = await new FakeRegistry().start(t);
  const layer = randomBytes(50 * 1024);
  const layerDigest = live.addBlob(layer);
  const stowage = await startStowage(t, [
    "--upstream", `dead=http://127.0.0.3:${deadPort}`,
    "--upstream", `live=${live.url}`,
    "--default-upstream", "dead",
    "--upstream-timeout", "5s",
  ]);

  await t.test("an unreachable upstream", async (t) => {
    const paths = ["/v2/app/manifests/latest", `/v2/app/blobs/${DIGEST}`, "/v2/app/tags/list"];
    for (const path of paths) {
      const { res, body } = await get(`${stowage.url}${path}`);
      t.equal(res.status, 503, `${path}: 503`);
      const requestId = res.headers.get("x-request-id") ?? "";
      const text = body.toString();
      const error = ociErrorOf(t, body);
      t.equal(error.code, "UNAVAILABLE");
      t.match(error.message, /the upstream could not be reached/, `${path}: plain words`);
      t.notMatch(text, "127.0.0.3", `${path}: the body has no upstream address`);
      t.notMatch(text, String(deadPort), `${path}: nor its port`);
      t.notMatch(text, /ECONNREFUSED|fetch failed/, `${path}: nor the network error`);
      t.ok(requestId.length > 0 && error.message.includes(requestId), `${path}: the message gives the request id`);
      t.equal(error.detail?.requestId, requestId, `${path}: so does the detail`);
      const logged = linesOf(stowage.logs, requestId).join("\n");
      t.match(logged, `127.0.0.3:${deadPort}`, `${path}: the log has the address, under the request id`);
      t.match(logged, "ECONNREFUSED", `${path}: and the network error`);
    }
  });

  await t.test("a store that fails with a file-system error", async (t) => {
    // The store's directories vanish under it: every operation fails with ENOENT and the path.
    await rm(join(stowage.dataDir, "blobs"), { recursive: true, force: true });
    const blob = await get(`${stowage.url}/v2/live/app/blobs/${layerDigest}`);
    if (blob.res.status >= 500) {
      const requestId = blob.res.headers.get("x-request-id") ?? "";
      const error = ociErrorOf(t, blob.body);
      t.notMatch(blob.body.toString(), stowage.dataDir, "the blob error has no path");
      t.notMatch(blob.body.toString(), /ENOENT|scandir|open '/, "nor the fs error");
      t.ok(error.message.includes(requestId), "the message gives the request id");
      t.match(linesOf(stowage.logs, requestId).join("\n"), stowage.dataDir, "the log has the path");
    } else {
      t.ok(blob.body.equals(layer), "or the blob is served uncached");
    }

    const ready = await get(`${stowage.url}/readyz`);
    t.equal(ready.res.status, 503, "/readyz: not ready");
    const requestId = ready.res.headers.get("x-request-id") ?? "";
    const body = JSON.parse(ready.body.toString()) as { status: string; checks: Record<string, string>; requestId?: string };
    t.equal(body.status, "not ready");
    t.equal(body.checks.kv, "ok");
    t.match(body.checks.store, /failing/, "says which check failed");
    t.equal(body.requestId, requestId, "and the request id");
    t.notMatch(ready.body.toString(), stowage.dataDir, "/readyz has no path");
    t.notMatch(ready.body.toString(), /ENOENT|scandir/, "nor the fs error");
    t.match(linesOf(stowage.logs, requestId).join("\n"), /ENOENT.*blobs/, "the log has the error and path");
  });
});

t.test("--metrics-listen: /metrics and /healthz on their own listener, no /metrics on the public one", async (t) => {
  const upstream = await new FakeRegistry().start(t);
  const stowage = await startStowage(t, ["--upstream", `local=${upstream.url}`], { patch: { metricsListen: { hostname: "127.0.0.1", port: 0 } } });
  const line = stowage.logs.find((l) => l.includes("serving /metrics and /healthz on a separate listener"));
  const metricsUrl = line ? String(JSON.parse(line).url) : "";
  t.match(metricsUrl, /^http:\/\/127\.0\.0\.1:\d+$/, "the log says where");

  const publicMetrics = await get(`${stowage.url}/metrics`);
  await expectOciError(t, publicMetrics, 404, "UNSUPPORTED");
  t.notMatch(publicMetrics.body.toString(), "stowage_", "no figures on the public listener");
  t.equal((await get(`${stowage.url}/metrics`, { method: "HEAD" })).res.status, 404, "HEAD too");
  t.equal((await get(`${stowage.url}/healthz`)).res.status, 200, "the public listener keeps /healthz");
  t.equal((await get(`${stowage.url}/v2/`)).res.status, 200, "and the registry");

  const metrics = await get(`${metricsUrl}/metrics`);
  t.equal(metrics.res.status, 200);
  t.match(metrics.res.headers.get("content-type") ?? "", /^text\/plain/);
  t.match(metrics.body.toString(), /stowage_http_requests_total\{[^}]*route="metrics"[^}]*status="404"/, "the public listener's refusals are counted");
  t.equal((await get(`${metricsUrl}/healthz`)).res.status, 200, "/healthz on the metrics listener");
  for (const path of ["/v2/", "/v2/app/manifests/latest", "/token", "/readyz"]) {
    const r = await get(`${metricsUrl}${path}`);
    await expectOciError(t, r, 404, "UNSUPPORTED");
  }
  t.same(upstream.seen, [], "nothing on the metrics listener reached the upstream");
});

t.test("/metrics on the public listener with access control on needs a known identity", async (t) => {
  const upstream = await new FakeRegistry().start(t);
  const hash = bcrypt.hashSync("wonderland", 4);
  const stowage = await startStowage(t, ["--config", "$DIR/stowage.yaml", "--access-control", "on", "--upstream", `local=${upstream.url}`], {
    files: { "stowage.yaml": ["users:", `  - { name: alice, passwordHash: "${hash}" }`, "rules:", "  - { repository: 'public/**', pull: [anonymous] }"].join("\n") },
  });
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString("base64")}`;
  const tokenFor = async (headers: Record<string, string>) => {
    const r = await get(`${stowage.url}/token?scope=repository:public/x:pull`, { headers });
    t.equal(r.res.status, 200, "a token is issued");
    return String(JSON.parse(r.body.toString()).token);
  };

  const none = await get(`${stowage.url}/metrics`);
  await expectOciError(t, none, 401, "UNAUTHORIZED");
  t.match(none.res.headers.get("www-authenticate") ?? "", /^Bearer realm=/, "with a challenge");
  t.notMatch(none.body.toString(), "stowage_", "no figures");

  const anonymous = await get(`${stowage.url}/metrics`, { headers: { authorization: `Bearer ${await tokenFor({})}` } });
  await expectOciError(t, anonymous, 401, "UNAUTHORIZED");
  const wrong = await get(`${stowage.url}/metrics`, { headers: { authorization: basic("alice", "not-it") } });
  await expectOciError(t, wrong, 401, "UNAUTHORIZED");
  const stranger = await get(`${stowage.url}/metrics`, { headers: { authorization: basic("mallory", "wonderland") } });
  await expectOciError(t, stranger, 401, "UNAUTHORIZED");

  const withLogin = await get(`${stowage.url}/metrics`, { headers: { authorization: basic("alice", "wonderland") } });
  t.equal(withLogin.res.status, 200, "a Basic login of a known user");
  t.match(withLogin.body.toString(), "stowage_http_requests_total");
  const withToken = await get(`${stowage.url}/metrics`, { headers: { authorization: `Bearer ${await tokenFor({ authorization: basic("alice", "wonderland") })}` } });
  t.equal(withToken.res.status, 200, "or the user's token");
});
