// OCI 1.1 referrers through Stowage from a real upstream (distribution 2.8, which stores
// manifests with a subject but has no referrers API): an image and an artifact attached to it,
// pushed as a client pushes to such a registry (the artifact, then the referrers index under
// the tag sha256-<hex>). Stowage finds the artifact through the tag schema; then, with the
// upstream stopped and --offline, the same Stowage data serves the cached answer.
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { makeTempDir, using } from "../harness/processes.ts";
import { startRegistry } from "../harness/registry.ts";
import { runStowage, startStowage } from "../harness/stowage.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const SIGNATURE_TYPE = "application/vnd.example.signature.v1+json";
const SBOM_TYPE = "application/spdx+json";
const REPO = "stowage-test/signed";

const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const json = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2));

/** A monolithic blob upload (POST, then PUT with the digest), as the distribution API defines it. */
async function pushBlob(registry: string, bytes: Buffer): Promise<{ mediaType: string; digest: string; size: number }> {
  const digest = sha256(bytes);
  const start = await fetch(`${registry}/v2/${REPO}/blobs/uploads/`, { method: "POST" });
  if (start.status !== 202) throw new Error(`upload start answered ${start.status}`);
  const location = new URL(start.headers.get("location") ?? "", registry);
  location.searchParams.set("digest", digest);
  const put = await fetch(location, { method: "PUT", body: new Uint8Array(bytes), headers: { "content-type": "application/octet-stream" } });
  if (put.status !== 201) throw new Error(`blob upload answered ${put.status}: ${await put.text()}`);
  return { mediaType: "application/octet-stream", digest, size: bytes.length };
}

async function pushManifest(registry: string, reference: string, bytes: Buffer, mediaType: string): Promise<{ mediaType: string; digest: string; size: number }> {
  const res = await fetch(`${registry}/v2/${REPO}/manifests/${reference}`, { method: "PUT", body: new Uint8Array(bytes), headers: { "content-type": mediaType } });
  if (res.status !== 201) throw new Error(`manifest push of ${reference} answered ${res.status}: ${await res.text()}`);
  return { mediaType, digest: sha256(bytes), size: bytes.length };
}

/** An image with two artifacts attached (a signature and an SBOM), as a pushing client leaves them on distribution 2.8. */
async function pushSignedImage(registryUrl: string) {

  // The image.
  const config = await pushBlob(registryUrl, json({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [] } }));
  const layer = await pushBlob(registryUrl, randomBytes(32 * 1024));
  const image = await pushManifest(registryUrl, "v1", json({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { ...config, mediaType: "application/vnd.oci.image.config.v1+json" },
    layers: [{ ...layer, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" }],
  }), OCI_MANIFEST);

  // Two artifacts whose subject is the image (an OCI 1.1 manifest with artifactType and subject).
  const empty = await pushBlob(registryUrl, Buffer.from("{}"));
  const artifact = async (artifactType: string, payload: Buffer) => {
    const blob = await pushBlob(registryUrl, payload);
    const bytes = json({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType,
      config: { ...empty, mediaType: "application/vnd.oci.empty.v1+json" },
      layers: [{ ...blob, mediaType: artifactType }],
      subject: image,
    });
    const pushed = await pushManifest(registryUrl, sha256(bytes), bytes, OCI_MANIFEST);
    return { ...pushed, artifactType };
  };
  const signature = await artifact(SIGNATURE_TYPE, Buffer.from("a signature over the image"));
  const sbom = await artifact(SBOM_TYPE, json({ spdxVersion: "SPDX-2.3", name: "test" }));
  // The registry has no referrers API, so the pushing client keeps the index under sha256-<hex>.
  const tag = `sha256-${image.digest.slice("sha256:".length)}`;
  await pushManifest(registryUrl, tag, json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [signature, sbom] }), OCI_INDEX);
  return { image, signature, sbom };
}

t.test("referrers of an image from distribution 2.8 through Stowage, online and then offline", async (t) => {
  const registry = await using(t, startRegistry());
  const { image, signature, sbom } = await pushSignedImage(registry.url);
  const direct = await fetch(`${registry.url}/v2/${REPO}/referrers/${image.digest}`);
  t.equal(direct.status, 404, "distribution 2.8 itself has no referrers API");
  await direct.body?.cancel();

  const first = await startStowage(["--upstream", `local=${registry.url}`]);
  let firstStopped = false;
  t.teardown(() => (firstStopped ? undefined : first.stop()));
  const base = `${first.url}/v2/local/${REPO}`;

  const all = await fetch(`${base}/referrers/${image.digest}`);
  t.equal(all.status, 200);
  t.equal(all.headers.get("content-type"), OCI_INDEX);
  t.same(await all.json(), { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [signature, sbom] }, "the artifacts, found through the tag schema");
  const sigs = await fetch(`${base}/referrers/${image.digest}?artifactType=${encodeURIComponent(SIGNATURE_TYPE)}`);
  t.same((await sigs.json()).manifests, [signature], "filtered by artifactType");
  t.equal(sigs.headers.get("oci-filters-applied"), "artifactType");
  // What a verifier does next: the image and the artifact manifest by digest.
  for (const ref of ["v1", image.digest, signature.digest, sbom.digest]) {
    const res = await fetch(`${base}/manifests/${ref}`, { headers: { accept: `${OCI_MANIFEST}, ${OCI_INDEX}` } });
    t.equal(res.status, 200, `manifest ${ref.slice(0, 19)} through Stowage`);
    await res.body?.cancel();
  }

  // The dark side: the upstream gone, the same data, --offline.
  await first.stop({ keepData: true });
  firstStopped = true;
  await registry.stop();
  const offline = await using(t, startStowage(["--upstream", `local=${registry.url}`, "--data-dir", first.dataDir, "--offline"]));
  const dark = `${offline.url}/v2/local/${REPO}`;
  const cached = await fetch(`${dark}/referrers/${image.digest}`);
  t.equal(cached.status, 200);
  t.same(await cached.json(), { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [signature, sbom] }, "offline: the cached referrers");
  const cachedSigs = await fetch(`${dark}/referrers/${image.digest}?artifactType=${encodeURIComponent(SIGNATURE_TYPE)}`);
  t.same((await cachedSigs.json()).manifests, [signature], "offline: filtered");
  for (const ref of ["v1", signature.digest]) {
    const res = await fetch(`${dark}/manifests/${ref}`);
    t.equal(res.status, 200, `offline: manifest ${ref.slice(0, 19)}`);
    await res.body?.cancel();
  }
  const started = Date.now();
  const miss = await fetch(`${dark}/manifests/v2`);
  t.equal(miss.status, 404, "offline: an uncached tag is 404");
  t.match((await miss.json()).errors[0], { code: "MANIFEST_UNKNOWN", message: /upstream local is offline/ });
  t.ok(Date.now() - started < 2_000, "at once, not after a connect timeout");
});

t.test("prefill and export --with-referrers carry the artifacts; after import, offline, the referrers API serves them", async (t) => {
  const registry = await using(t, startRegistry());
  const { image, signature, sbom } = await pushSignedImage(registry.url);
  const connected = await makeTempDir("referrers-connected");
  const bundle = join(connected, "bundle.tar");
  const common = ["--upstream", `local=${registry.url}`];
  const prefilled = await runStowage(["prefill", `local/${REPO}:v1`, "--with-referrers", "--data-dir", join(connected, "data"), ...common]);
  t.equal(prefilled.code, 0, `prefill --with-referrers: ${prefilled.output.slice(-800)}`);
  const exported = await runStowage(["export", `local/${REPO}:v1`, "--with-referrers", "-o", bundle, "--data-dir", join(connected, "data"), ...common]);
  t.equal(exported.code, 0, `export --with-referrers: ${exported.output.slice(-800)}`);
  await registry.stop();

  const dark = await makeTempDir("referrers-dark");
  const imported = await runStowage(["import", bundle, "--data-dir", dark, ...common, "--offline"]);
  t.equal(imported.code, 0, `import: ${imported.output.slice(-800)}`);
  const offline = await using(t, startStowage([...common, "--data-dir", dark, "--offline"]));
  const base = `${offline.url}/v2/local/${REPO}`;
  const listed = await fetch(`${base}/referrers/${image.digest}`);
  t.equal(listed.status, 200);
  const manifests = (await listed.json()).manifests as Array<{ digest: string }>;
  t.same(manifests.map((m) => m.digest).sort(), [signature.digest, sbom.digest].sort(), "the referrers API lists both artifacts on the dark side");
  for (const ref of [signature.digest, sbom.digest]) {
    const res = await fetch(`${base}/manifests/${ref}`, { headers: { accept: OCI_MANIFEST } });
    t.equal(res.status, 200, `artifact manifest ${ref.slice(0, 19)} served offline`);
    const m = await res.json();
    for (const layer of m.layers as Array<{ digest: string }>) {
      const blob = await fetch(`${base}/blobs/${layer.digest}`);
      t.equal(blob.status, 200, `its payload ${layer.digest.slice(0, 19)} too`);
      await blob.body?.cancel();
    }
  }
});
