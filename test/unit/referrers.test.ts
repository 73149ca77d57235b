// OCI 1.1 referrers through Stowage: the pure helpers on tables, then a Stowage in front of an
// in-test upstream with the referrers API, one without it (the tag schema), one that goes
// down, and an offline Stowage answering from what was cached. Cosign's tag-based signatures
// are ordinary tags, online and offline.
import t from "tap";
import type { ServerResponse } from "node:http";
import { recordReferrers } from "../../src/cache/referrers-cache.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { TypedKv } from "../../src/kv/kv.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { pageOfTags } from "../../src/registry/pagination.ts";
import type { Digest } from "../../src/registry/reference.ts";
import {
  filterReferrers,
  mergeReferrers,
  nextReferrersQuery,
  type ReferrerDescriptor,
  referrersIndex,
  referrersOf,
  referrersTagFor,
} from "../../src/registry/referrers.ts";
import type { BlobStore } from "../../src/storage/blob-store.ts";
import { FsBlobStore } from "../../src/storage/fs/fs-store.ts";
import { FakeRegistry, type Manifest, sendJson } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { expectOciError, sha256 } from "../support/oci.ts";
import { sleep } from "../support/wait.ts";

const HEX = "ab".repeat(32);
const SUBJECT = `sha256:${HEX}` as Digest;
const SIG_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM_TYPE = "application/spdx+json";
const d = (n: number, artifactType?: string): ReferrerDescriptor => ({
  mediaType: OCI_MANIFEST,
  digest: sha256(`artifact ${n}`),
  size: 100 + n,
  ...(artifactType ? { artifactType } : {}),
});

// ------------------------------------------------------------------ tables

t.test("the referrers tag schema's tag", async (t) => {
  t.equal(referrersTagFor(SUBJECT), `sha256-${HEX}`);
  t.equal(referrersTagFor(`sha512:${"cd".repeat(64)}` as Digest), `sha512-${"cd".repeat(32)}`, "the encoded part is cut to 64 characters");
});

t.test("reading, filtering, merging and writing referrers lists", async (t) => {
  const index = (manifests: unknown[]) => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
  const cases: Array<[string, Uint8Array, ReferrerDescriptor[] | null]> = [
    ["an index", index([d(1, SIG_TYPE), d(2)]), [d(1, SIG_TYPE), d(2)]],
    ["an empty index", index([]), []],
    ["an index without mediaType (still an index)", Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [d(3)] })), [d(3)]],
    ["descriptors without their required fields are dropped", index([{ digest: sha256("x") }, d(4), { ...d(5), size: -1 }, { ...d(6), digest: "nope" }]), [d(4)]],
    ["fields other than the referrers' are dropped", index([{ ...d(7), platform: { os: "linux" }, urls: ["http://x"] }]), [d(7)]],
    ["annotations are kept", index([{ ...d(8), annotations: { "org.opencontainers.image.created": "2026-01-01" } }]), [{ ...d(8), annotations: { "org.opencontainers.image.created": "2026-01-01" } }]],
    ["not JSON", Buffer.from("<html>"), null],
    ["JSON, not an index", Buffer.from('{"errors":[]}'), null],
  ];
  for (const [what, bytes, expected] of cases) t.same(referrersOf(bytes), expected, what);

  const list = [d(1, SIG_TYPE), d(2, SBOM_TYPE), d(3, SIG_TYPE), d(4)];
  t.same(filterReferrers(list, null), list, "no filter");
  t.same(filterReferrers(list, SIG_TYPE), [d(1, SIG_TYPE), d(3, SIG_TYPE)]);
  t.same(filterReferrers(list, "application/other"), []);

  t.same(mergeReferrers([d(1), d(2)], [d(2, SIG_TYPE), d(3)]), [d(1), d(2), d(3)], "by digest; what is there stays");
  t.same(mergeReferrers([], [d(1), d(1)]), [d(1)], "duplicates within one list");

  const written = JSON.parse(Buffer.from(referrersIndex([d(1, SIG_TYPE)])).toString());
  t.same(written, { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [d(1, SIG_TYPE)] });
  t.same(referrersOf(referrersIndex(list)), list, "what is written reads back");
});

t.test("the upstream's next page of referrers", async (t) => {
  const path = `/v2/app/referrers/${SUBJECT}`;
  const cases: Array<[string | null, string | null]> = [
    [null, null],
    [`<${path}?last=x&n=2>; rel="next"`, "?last=x&n=2"],
    [`<${path.replace(":", "%3A")}?page=2>; rel="next"`, "?page=2"],
    [`<${path}%ZZ?page=2>; rel="next"`, null],
    [`<https://elsewhere.example${path}?page=2>; rel="next"`, "?page=2"],
    [`<${path}?page=2>; rel="prev", <${path}?page=3>; rel="next"`, "?page=3"],
    [`</v2/other/referrers/${SUBJECT}?page=2>; rel="next"`, null],
    [`<${path}>; rel="next"`, null],
    [`<${path}?page=2>; rel="prev"`, null],
  ];
  for (const [link, expected] of cases) t.equal(nextReferrersQuery(link, path), expected, String(link));
});

t.test("offline tag pages", async (t) => {
  const tags = ["v1", "a", "b", "sha256-x.sig", "B"];
  const cases: Array<[string | null, string | null, string[], { n?: string; last?: string } | null]> = [
    [null, null, ["B", "a", "b", "sha256-x.sig", "v1"], null],
    ["2", null, ["B", "a"], { n: "2", last: "a" }],
    ["2", "a", ["b", "sha256-x.sig"], { n: "2", last: "sha256-x.sig" }],
    ["2", "sha256-x.sig", ["v1"], null],
    [null, "b", ["sha256-x.sig", "v1"], null],
    ["0", null, [], null],
    ["many", null, ["B", "a", "b", "sha256-x.sig", "v1"], null],
    ["5", null, ["B", "a", "b", "sha256-x.sig", "v1"], null],
  ];
  for (const [n, last, page, next] of cases) t.same(pageOfTags(tags, n, last), { tags: page, next }, `n=${n} last=${last}`);
});

// ------------------------------------------------------------------ through Stowage

const pretty = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2) + "\n");
const EMPTY = { mediaType: "application/vnd.oci.empty.v1+json", digest: sha256("{}"), size: 2 };

/** An image, and artifacts whose subject it is, in repository `repo` of `up`. */
function imageWithArtifacts(up: FakeRegistry, repo: string) {
  const image = up.addManifest("v1", pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: EMPTY, layers: [], annotations: { repo } }), { repo });
  const subject = { mediaType: OCI_MANIFEST, digest: image.digest, size: image.bytes.length };
  const artifact = (artifactType: string, note: string): Manifest =>
    up.addManifest(
      `artifact-${note}`,
      pretty({ schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType, config: EMPTY, layers: [], subject, annotations: { note } }),
      { repo },
    );
  const sig = artifact(SIG_TYPE, "sig");
  const sbom = artifact(SBOM_TYPE, "sbom");
  const descriptorOf = (m: Manifest, artifactType: string): ReferrerDescriptor => ({ mediaType: OCI_MANIFEST, digest: m.digest, size: m.bytes.length, artifactType });
  return { image, sig: descriptorOf(sig, SIG_TYPE), sbom: descriptorOf(sbom, SBOM_TYPE) };
}

const indexOf = (manifests: ReferrerDescriptor[]) => ({ schemaVersion: 2, mediaType: OCI_INDEX, manifests });

async function referrers(base: string, path: string) {
  const res = await fetch(`${base}${path}`);
  const text = await res.text();
  return { res, text, json: res.status === 200 ? JSON.parse(text) : null };
}

const referrerGets = (up: FakeRegistry, subject: string) => up.seen.filter((s) => s.path.endsWith(`/referrers/${subject}`));

t.test("an upstream with the referrers API: passed through unfiltered, paged, filtered here, cached", async (t) => {
  const up = await new FakeRegistry({ auth: true }).start(t);
  const { image, sig, sbom } = imageWithArtifacts(up, "app");
  // Two pages, as a registry that pages its referrers sends them.
  up.on(`/v2/app/referrers/${image.digest}`, (_req, res, _bytes, url) => {
    if (url.searchParams.get("page") === "2") return sendJson(res, 200, indexOf([sbom]), { "content-type": OCI_INDEX });
    sendJson(res, 200, indexOf([sig]), { "content-type": OCI_INDEX, link: `</v2/app/referrers/${image.digest}?page=2>; rel="next"` });
  });
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--tag-ttl", "5m"], { logLevel: "warn" });

  const all = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}`);
  t.equal(all.res.status, 200);
  t.equal(all.res.headers.get("content-type"), OCI_INDEX);
  t.same(all.json, indexOf([sig, sbom]), "both pages, merged");
  t.equal(all.res.headers.get("oci-filters-applied"), null, "no filter, no header");
  t.equal(all.res.headers.get("x-stowage-cache"), "upstream");
  // (The first request is the one the token dance turns away; its retry carries the token.)
  const asked = referrerGets(up, image.digest).filter((s) => s.authorization !== undefined);
  t.same(asked.map((s) => s.search), ["", "?page=2"], "asked unfiltered, with a token, then the next page");

  const sigs = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}?artifactType=${encodeURIComponent(SIG_TYPE)}`);
  t.same(sigs.json, indexOf([sig]), "filtered by artifactType");
  t.equal(sigs.res.headers.get("oci-filters-applied"), "artifactType");
  t.equal(sigs.res.headers.get("x-stowage-cache"), "cache");
  const none = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}?artifactType=application/none`);
  t.same(none.json, indexOf([]), "a filter nothing matches: an empty index");
  t.equal(referrerGets(up, image.digest).length, 3, "within --tag-ttl, the upstream is not asked again");

  const bad = await fetch(`${stowage.url}/v2/local/app/referrers/sha256:nothex`);
  await expectOciError(t, bad, 400, "DIGEST_INVALID");
});

t.test("an upstream without the referrers API: the referrers tag schema", async (t) => {
  const up = await new FakeRegistry().start(t);
  const { image, sig, sbom } = imageWithArtifacts(up, "app");
  // What a pushing client keeps for a registry without the API; the fake answers 404 to /referrers/.
  up.addManifest(referrersTagFor(image.digest), pretty(indexOf([sig, sbom])), { repo: "app", mediaType: OCI_INDEX });
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`], { logLevel: "warn" });

  const all = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}`);
  t.equal(all.res.status, 200);
  t.same(all.json, indexOf([sig, sbom]), "the index under the sha256-<hex> tag");
  t.same(up.seen.map((s) => s.path), [`/v2/app/referrers/${image.digest}`, `/v2/app/manifests/${referrersTagFor(image.digest)}`], "the API first, then the tag");

  const sboms = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}?artifactType=${encodeURIComponent(SBOM_TYPE)}`);
  t.same(sboms.json, indexOf([sbom]));
  t.equal(sboms.res.headers.get("oci-filters-applied"), "artifactType");

  const lonely = sha256("no referrers");
  const empty = await referrers(stowage.url, `/v2/local/app/referrers/${lonely}`);
  t.equal(empty.res.status, 200, "no API and no tag: no referrers, not an error");
  t.same(empty.json, indexOf([]));
});

t.test("the last list is served while the upstream is down; a list never fetched is a 503", async (t) => {
  const up = await new FakeRegistry().start(t);
  const { image, sig } = imageWithArtifacts(up, "app");
  up.on(`/v2/app/referrers/${image.digest}`, (_req, res: ServerResponse) => sendJson(res, 200, indexOf([sig]), { "content-type": OCI_INDEX }));
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--tag-ttl", "1", "--upstream-timeout", "5s"], { logLevel: "error" });
  t.same((await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}`)).json, indexOf([sig]));
  await sleep(1_100);
  await up.stop();
  const stale = await referrers(stowage.url, `/v2/local/app/referrers/${image.digest}`);
  t.equal(stale.res.status, 200);
  t.same(stale.json, indexOf([sig]), "the last known list");
  t.equal(stale.res.headers.get("x-stowage-cache"), "stale");
  await expectOciError(t, await fetch(`${stowage.url}/v2/local/app/referrers/${sha256("never")}`), 503, "UNAVAILABLE", "nothing cached, upstream down");
});

t.test("offline: referrers from the cache, an empty index for the rest, cosign tags as ordinary tags", async (t) => {
  const up = await new FakeRegistry().start(t);
  const { image, sig, sbom } = imageWithArtifacts(up, "app");
  up.on(`/v2/app/referrers/${image.digest}`, (_req, res) => sendJson(res, 200, indexOf([sig, sbom]), { "content-type": OCI_INDEX }));
  // Cosign's own scheme: the signature under tag sha256-<hex>.sig, found by tag, no referrers API needed.
  const cosignTag = `${referrersTagFor(image.digest)}.sig`;
  const cosign = up.addManifest(cosignTag, pretty({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: EMPTY,
    layers: [{ mediaType: "application/vnd.dev.cosign.simplesigning.v1+json", digest: sha256("payload"), size: 7, annotations: { "dev.cosignproject.cosign/signature": "MEUC..." } }],
  }), { repo: "app" });
  up.tagLists.set("app", ["v1", cosignTag]);

  const online = await startInProcessStowage(t, ["--upstream", `local=${up.url}`], { logLevel: "warn" });
  t.equal((await fetch(`${online.url}/v2/local/app/manifests/v1`)).status, 200, "the image pulled");
  t.same((await referrers(online.url, `/v2/local/app/referrers/${image.digest}`)).json, indexOf([sig, sbom]), "fetched online");
  const listed = await (await fetch(`${online.url}/v2/local/app/tags/list`)).json();
  t.same(listed, { name: "local/app", tags: ["v1", cosignTag] }, "the cosign tag is listed like any tag");
  const signature = await fetch(`${online.url}/v2/local/app/manifests/${cosignTag}`);
  t.equal(signature.status, 200, "and fetched like any tag");
  t.equal(signature.headers.get("docker-content-digest"), cosign.digest);
  t.ok(Buffer.from(await signature.arrayBuffer()).equals(cosign.bytes), "byte for byte");

  const seen = up.requests.length;
  const offline = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--data-dir", online.dataDir, "--offline", "--tag-ttl", "0"], { logLevel: "warn" });
  const cached = await referrers(offline.url, `/v2/local/app/referrers/${image.digest}`);
  t.equal(cached.res.status, 200);
  t.same(cached.json, indexOf([sig, sbom]), "the cached list");
  t.equal(cached.res.headers.get("x-stowage-cache"), "cache");
  const filtered = await referrers(offline.url, `/v2/local/app/referrers/${image.digest}?artifactType=${encodeURIComponent(SIG_TYPE)}`);
  t.same(filtered.json, indexOf([sig]), "filtered offline too");
  t.equal(filtered.res.headers.get("oci-filters-applied"), "artifactType");
  const unknown = await referrers(offline.url, `/v2/local/app/referrers/${sha256("never asked")}`);
  t.equal(unknown.res.status, 200, "nothing cached: the spec's answer for no referrers");
  t.same(unknown.json, indexOf([]));
  t.same((await (await fetch(`${offline.url}/v2/local/app/tags/list`)).json()).tags, ["v1", cosignTag].sort(), "offline tag list has the cosign tag");
  t.equal((await fetch(`${offline.url}/v2/local/app/manifests/${cosignTag}`)).status, 200, "offline, the signature by its tag");
  t.equal(up.requests.length, seen, "offline, the upstream saw nothing");
});

t.test("recordReferrers: what an import knows is merged into the cached list and served offline", async (t) => {
  const up = await new FakeRegistry().start(t);
  const stowage = await startInProcessStowage(t, ["--upstream", `local=${up.url}`, "--offline"], { logLevel: "warn" });
  const raw = await stowage.kv();
  const kv = new TypedKv(raw);
  // The fs store under the data dir, as the import command would open it.
  const store: BlobStore = await FsBlobStore.open(`${stowage.dataDir}/blobs`);
  const subject = sha256("subject");
  await recordReferrers({ kv, store, now: () => 1_000 }, "local", "app", subject, [d(1, SIG_TYPE)]);
  await recordReferrers({ kv, store }, "local", "app", subject, [d(1, SIG_TYPE), d(2, SBOM_TYPE)]);
  const got = await referrers(stowage.url, `/v2/local/app/referrers/${subject}`);
  t.same(got.json, indexOf([d(1, SIG_TYPE), d(2, SBOM_TYPE)]), "merged by digest, served");
  const record = (await raw.get(kvKeys.referrers("local", "app", subject))).value as { checkedAt: number } | null;
  t.ok(record && Date.now() - record.checkedAt < 60_000, "checked now");
  t.same(up.requests, []);
});

t.test("referrers are read under the same access check as the repository's manifests", async (t) => {
  const up = await new FakeRegistry().start(t);
  const open = imageWithArtifacts(up, "public/app");
  const closed = imageWithArtifacts(up, "team/app");
  const yaml = "accessControl: true\nrules:\n  - { repository: 'public/**', pull: [anonymous] }\n";
  const stowage = await startInProcessStowage(t, ["--config", "$DIR/stowage.yaml", "--upstream", `local=${up.url}`], { files: { "stowage.yaml": yaml }, logLevel: "warn" });
  const tokenFor = async (repo: string) => ((await (await fetch(`${stowage.url}/token?service=stowage&scope=repository:${repo}:pull`)).json()) as { token: string }).token;

  const bare = await fetch(`${stowage.url}/v2/local/public/app/referrers/${open.image.digest}`);
  await expectOciError(t, bare, 401, "UNAUTHORIZED", "no token");
  t.match(bare.headers.get("www-authenticate") ?? "", 'scope="repository:local/public/app:pull"', "the challenge names the repository's pull scope");

  const allowed = await fetch(`${stowage.url}/v2/local/public/app/referrers/${open.image.digest}`, { headers: { authorization: `Bearer ${await tokenFor("local/public/app")}` } });
  t.equal(allowed.status, 200, "anonymous may pull public/**, so may read its referrers");

  const refused = await fetch(`${stowage.url}/v2/local/team/app/referrers/${closed.image.digest}`, { headers: { authorization: `Bearer ${await tokenFor("local/team/app")}` } });
  t.ok(refused.status === 401 || refused.status === 403, `anonymous may not pull team/app, nor read its referrers (${refused.status})`);
  t.notOk(up.seen.some((s) => s.path.includes("/team/app/")), "a refused client causes no upstream request");
});
