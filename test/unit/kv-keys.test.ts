// The KV layout: existing KV files, and instances of other versions sharing one KV,
// hold records under these exact keys. A changed key would make every cached tag,
// manifest, signing key and refresh token silently unreadable.
import t from "tap";
import { openKv } from "@deno/kv";
import { z } from "zod";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import type { Digest } from "../../src/registry/reference.ts";

const DIGEST = `sha256:${"ab".repeat(32)}` as Digest;

t.test("every KV key keeps its value", async (t) => {
  const pinned: Record<keyof typeof kvKeys, [readonly unknown[], unknown[]]> = {
    tag: [kvKeys.tag("hub", "library/alpine", "3.20"), ["tag", "hub", "library/alpine", "3.20"]],
    tagsOf: [kvKeys.tagsOf("hub", "library/alpine"), ["tag", "hub", "library/alpine"]],
    referrers: [kvKeys.referrers("hub", "library/alpine", DIGEST), ["referrers", "hub", "library/alpine", DIGEST]],
    manifest: [kvKeys.manifest("hub", "library/alpine", DIGEST), ["manifest", "hub", "library/alpine", DIGEST]],
    link: [kvKeys.link("hub", "library/alpine", DIGEST), ["link", "hub", "library/alpine", DIGEST]],
    blob: [kvKeys.blob(DIGEST), ["blob", DIGEST]],
    lease: [kvKeys.lease(DIGEST), ["lease", DIGEST]],
    usageTag: [kvKeys.usageTag("hub", "library/alpine", "3.20"), ["usage", "tag", "hub", "library/alpine", "3.20"]],
    usageManifest: [kvKeys.usageManifest("hub", "library/alpine", DIGEST), ["usage", "manifest", "hub", "library/alpine", DIGEST]],
    usageBlob: [kvKeys.usageBlob(DIGEST), ["usage", "blob", DIGEST]],
    usageOf: [kvKeys.usageOf("tag"), ["usage", "tag"]],
    gcLease: [kvKeys.gcLease(), ["stowage", "gc", "lease"]],
    upstreamToken: [kvKeys.upstreamToken("hub", "repository:library/alpine:pull"), ["upstream-token", "hub", "repository:library/alpine:pull"]],
    signingKeys: [kvKeys.signingKeys(), ["stowage", "auth", "signing-keys"]],
    refreshToken: [kvKeys.refreshToken("0f".repeat(32)), ["stowage", "auth", "refresh", "0f".repeat(32)]],
    refreshTokens: [kvKeys.refreshTokens(), ["stowage", "auth", "refresh"]],
    ping: [kvKeys.ping(), ["stowage", "ping"]],
  };
  for (const [name, [actual, expected]] of Object.entries(pinned)) t.strictSame(actual, expected, name);
  t.strictSame(Object.keys(pinned).sort(), Object.keys(kvKeys).sort(), "every key builder is pinned");
});

t.test("tag records lie under the prefix that offline tag listing reads", async (t) => {
  const prefix = kvKeys.tagsOf("hub", "library/alpine");
  t.strictSame(kvKeys.tag("hub", "library/alpine", "3.20").slice(0, prefix.length), prefix);
});

t.test("refresh token records lie under the prefix that revocation lists", async (t) => {
  const prefix = kvKeys.refreshTokens();
  t.strictSame(kvKeys.refreshToken("x").slice(0, prefix.length), prefix);
});

t.test("typed KV: compare-and-set, compare-and-delete, listing", async (t) => {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const Record = z.object({ n: z.number() });
  const key = ["test", "cas"] as const;

  const first = await kv.writeIfUnchanged(key, null, { n: 1 });
  t.type(first, "string", "an absent record is created when null is expected");
  t.equal(await kv.writeIfUnchanged(key, null, { n: 2 }), null, "null expected, but the record exists: refused");
  t.strictSame(await kv.read(key, Record), { n: 1 });
  const second = await kv.writeIfUnchanged(key, first, { n: 3 });
  t.type(second, "string", "the current versionstamp is accepted");
  t.equal(await kv.writeIfUnchanged(key, first, { n: 4 }), null, "a stale versionstamp is refused");
  t.strictSame(await kv.read(key, Record), { n: 3 });

  t.equal(await kv.removeIfUnchanged(key, first!), false, "a stale versionstamp deletes nothing");
  t.strictSame(await kv.read(key, Record), { n: 3 });
  t.equal(await kv.removeIfUnchanged(key, second!), true);
  t.equal(await kv.read(key, Record), null);

  await kv.write(["test", "list", "a"], { n: 1 });
  await kv.write(["test", "list", "b"], { n: "damaged" });
  await kv.write(["test", "other"], { n: 3 });
  const listed: Array<[string, number]> = [];
  for await (const entry of kv.list(["test", "list"], Record)) listed.push([entry.key.join("/"), entry.value.n]);
  t.strictSame(listed, [["test/list/a", 1]], "only records under the prefix that pass the schema");
});
