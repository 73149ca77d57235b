// Usage records (src/cache/usage.ts): a pull costs no KV write; pulls are written in batches,
// one write per key per batch, merged with what KV already holds; and the caches report pulls.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageRecord } from "../../src/cache/records.ts";
import { UsageRecorder } from "../../src/cache/usage.ts";
import { loadConfig } from "../../src/config/load.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, type KvKey, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import type { Digest } from "../../src/registry/reference.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { openServices } from "../../src/services.ts";
import { FakeRegistry } from "../support/fake-registry.ts";

const D1 = `sha256:${"1".repeat(64)}` as Digest;
const D2 = `sha256:${"2".repeat(64)}` as Digest;

/** A KV that counts writes per key. */
async function countingKv(t: Test) {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const writes = new Map<string, number>();
  const counting: Kv = {
    get: (k) => raw.get(k),
    set: (k: KvKey, v: unknown, o?: { expireIn?: number }) => {
      writes.set(k.join(" "), (writes.get(k.join(" ")) ?? 0) + 1);
      return raw.set(k, v, o);
    },
    delete: (k) => raw.delete(k),
    list: (s, o) => raw.list(s, o),
    atomic: () => raw.atomic(),
    close: () => raw.close(),
  };
  return { kv: new TypedKv(counting), writes };
}

t.test("many pulls make one KV write per key per flush, and none before it", async (t) => {
  const { kv, writes } = await countingKv(t);
  let now = 1_000_000;
  const usage = new UsageRecorder(kv, { flushMs: 60_000, now: () => now });
  for (let i = 0; i < 500; i++) {
    now += 10;
    usage.pulled({ kind: "tag", upstream: "hub", repo: "library/alpine", tag: "3.20" });
    usage.pulled({ kind: "blob", digest: i % 2 ? D1 : D2 });
  }
  usage.pulled({ kind: "manifest", upstream: "hub", repo: "library/alpine", digest: D1 });
  t.equal(writes.size, 0, "pulled() wrote nothing");
  await usage.flush();
  t.same(
    [...writes].sort(),
    [
      [`usage blob ${D1}`, 1],
      [`usage blob ${D2}`, 1],
      [`usage manifest hub library/alpine ${D1}`, 1],
      ["usage tag hub library/alpine 3.20", 1],
    ],
    "one write per key",
  );
  t.same(await kv.read(kvKeys.usageTag("hub", "library/alpine", "3.20"), UsageRecord), { lastPulledAt: now, pulls: 500 }, "the last pull time and the count");
  t.same(await kv.read(kvKeys.usageBlob(D1), UsageRecord), { lastPulledAt: now, pulls: 250 });
  await usage.flush();
  t.equal(writes.get(`usage blob ${D1}`), 1, "a flush with nothing new writes nothing");
  await usage.close();
});

t.test("a batch merges with the record in KV: counts add up, the latest time wins", async (t) => {
  const { kv } = await countingKv(t);
  const key = kvKeys.usageBlob(D1);
  await kv.write(key, { lastPulledAt: 5_000, pulls: 7 });
  // Another instance's later pull is already recorded; this one's clock is behind.
  const usage = new UsageRecorder(kv, { now: () => 4_000 });
  usage.pulled({ kind: "blob", digest: D1 });
  usage.pulled({ kind: "blob", digest: D1 });
  await usage.close();
  t.same(await kv.read(key, UsageRecord), { lastPulledAt: 5_000, pulls: 9 });
});

t.test("batches are written every flushMs without being asked, and on close", async (t) => {
  const { kv, writes } = await countingKv(t);
  const usage = new UsageRecorder(kv, { flushMs: 30 });
  usage.pulled({ kind: "blob", digest: D1 });
  await new Promise((r) => setTimeout(r, 120));
  t.equal(writes.get(`usage blob ${D1}`), 1, "written by the timer");
  usage.pulled({ kind: "blob", digest: D2 });
  await usage.close();
  t.equal(writes.get(`usage blob ${D2}`), 1, "written on close, before the timer");
});

t.test("pulls through the caches are recorded: tags, manifests by digest, blobs (GET only)", async (t) => {
  const reg = await new FakeRegistry().start(t);
  const cfg = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const layer = Buffer.alloc(20_000, "x");
  const [cd, ld] = [reg.addBlob(cfg, ["app"]), reg.addBlob(layer, ["app"])];
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: cd, size: cfg.length },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: ld, size: layer.length }],
  };
  const m = reg.addManifest("1.0", Buffer.from(JSON.stringify(doc)), { repo: "app", mediaType: OCI_MANIFEST });
  const dir = await mkdtemp(join(tmpdir(), "stowage-usage-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const config = loadConfig({ argv: ["--data-dir", dir, "--upstream", `local=${reg.url}`], env: {}, readFile: (p) => readFileSync(p, "utf8") });
  const log = createLogger("error", () => {});
  const services = await openServices(config, nodeRuntime, log);
  const source = { client: services.clients.get("local")!, repo: "app" };
  const before = Date.now();
  for (let i = 0; i < 3; i++) await services.manifests.get(source, { kind: "tag", tag: "1.0" }, log);
  await services.manifests.get(source, { kind: "digest", digest: m.digest }, log);
  const got = await services.blobs.get(source, ld, "GET", null, log);
  await new Response(got.body).arrayBuffer();
  await got.stored;
  await services.blobs.get(source, cd, "HEAD", null, log);
  await services.close();

  const raw = (await openKv(join(dir, "kv.sqlite3"))) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const tag = await kv.read(kvKeys.usageTag("local", "app", "1.0"), UsageRecord);
  t.equal(tag?.pulls, 3, "three pulls of the tag, written when the services closed");
  t.ok(tag && tag.lastPulledAt >= before, "with the time of the last");
  t.equal((await kv.read(kvKeys.usageManifest("local", "app", m.digest), UsageRecord))?.pulls, 1, "one pull by digest");
  t.equal((await kv.read(kvKeys.usageBlob(ld), UsageRecord))?.pulls, 1, "one GET of the layer");
  t.equal(await kv.read(kvKeys.usageBlob(cd), UsageRecord), null, "a HEAD is not a pull");
});
