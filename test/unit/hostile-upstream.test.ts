// A hostile or misconfigured upstream, case by case: redirects that try to lead Stowage
// into its own machine or network, a CDN that tries to steer authentication, token realms
// that would receive credentials they must not, oversize token responses. Each case checks
// what the operator would: what the client got, where requests and credentials went, and
// that nothing was cached. Traffic stays on loopback; rules about other addresses are
// checked by classification (the policy refuses them before any connection).
import t, { type Test } from "tap";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { classifyAddress } from "../../src/upstream/address-class.ts";
import { unbracketed } from "../../src/util/ip.ts";
import { credentialsMayGo } from "../../src/upstream/credential-policy.ts";
import { createConnectGuard, type Lookup } from "../../src/upstream/network-guard.ts";
import { redirectRefusal } from "../../src/upstream/redirect-policy.ts";
import { FakeRegistry, sendJson, startHttpServer } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { expectOciError, sha256 } from "../support/oci.ts";

// ----------------------------------------------------------------- pure rules

t.test("address classes", async (t) => {
  const table: Array<[string, string | null]> = [
    ["127.0.0.1", "loopback"],
    ["127.8.9.10", "loopback"],
    ["::1", "loopback"],
    ["[::1]", "loopback"],
    ["::ffff:127.0.0.1", "loopback"], // IPv4-mapped
    ["169.254.169.254", "link-local"], // AWS/GCP/Azure metadata
    ["fe80::1%eth0", "link-local"],
    ["::ffff:169.254.169.254", "link-local"],
    ["64:ff9b::a9fe:a9fe", "link-local"], // NAT64 of 169.254.169.254
    ["2002:a9fe:a9fe::1", "link-local"], // 6to4 of 169.254.169.254
    ["10.0.0.5", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.10", "private"],
    ["100.64.0.1", "private"], // carrier-grade NAT
    ["fd12:3456::1", "private"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["0.1.2.3", "reserved"],
    ["224.0.0.251", "reserved"],
    ["255.255.255.255", "reserved"],
    ["2001:db8::1", "reserved"],
    ["172.32.0.1", "public"],
    ["104.16.0.1", "public"], // a CDN
    ["2606:4700::6810:84e5", "public"],
    ["registry-1.docker.io", null],
    ["1.2.3", null],
    ["1::2::3", null],
  ];
  for (const [address, cls] of table) t.equal(classifyAddress(address), cls, address);
});

t.test("a URL's host without IPv6 brackets", async (t) => {
  const table: Array<[string, string]> = [
    ["[::1]", "::1"],
    ["[fe80::1%25eth0]", "fe80::1%25eth0"],
    ["[2606:4700::6810:84e5]", "2606:4700::6810:84e5"],
    ["::1", "::1"],
    ["127.0.0.1", "127.0.0.1"],
    ["registry-1.docker.io", "registry-1.docker.io"],
    ["[unclosed", "[unclosed"],
    ["", ""],
  ];
  for (const [host, want] of table) t.equal(unbracketed(host), want, host);
});

t.test("credential policy: where an upstream's credentials may go (token realms)", async (t) => {
  const table: Array<[string, string, boolean, string]> = [
    ["https://registry-1.docker.io", "https://auth.docker.io/token", true, "Docker Hub's token service on a sibling host"],
    ["https://registry-1.docker.io", "https://registry-1.docker.io/token", true, "same origin"],
    ["https://ghcr.io", "https://ghcr.io/token", true, "ghcr: same host"],
    ["https://quay.io", "https://quay.io/v2/auth", true, "quay: same host"],
    ["https://registry.gitlab.com", "https://gitlab.com/jwt/auth", true, "GitLab: parent domain"],
    ["https://registry-1.docker.io", "http://auth.docker.io/token", false, "plain http to another host"],
    ["http://registry.lan:5000", "http://registry.lan:5001/token", true, "an http upstream, same host"],
    ["http://registry.lan:5000", "http://auth.lan/token", false, "an http upstream, other host"],
    ["https://registry-1.docker.io", "https://production.cloudflare.docker.com/x", false, "another registrable domain"],
    ["https://x.dkr.ecr.us-east-1.amazonaws.com", "https://evil.s3.amazonaws.com/token", false, "across a public suffix"],
    ["https://x.dkr.ecr.us-east-1.amazonaws.com", "https://y.dkr.ecr.us-east-1.amazonaws.com/token", false, "another ECR account"],
    ["https://me.azurecr.io", "https://attacker.azurecr.io/oauth2/token", false, "another Azure registry"],
    ["https://me.azurecr.io", "https://me.azurecr.io/oauth2/token", true, "Azure: same host"],
    ["https://a.github.io", "https://b.github.io/token", false, "PSL private suffix"],
    ["https://registry.example.co.uk", "https://auth.other.co.uk/token", false, "second-level country suffix"],
    ["https://registry.example.co.uk", "https://auth.example.co.uk/token", true, "same site under co.uk"],
    ["https://10.0.0.5:5000", "https://10.0.0.5:5001/token", false, "an IP has no sibling hosts"],
    ["https://10.0.0.5:5000", "https://10.0.0.5:5000/token", true, "same IP and port"],
    ["https://localhost:5000", "https://evil.localhost/token", false, "no registrable domain"],
    ["https://registry-1.docker.io", "ftp://auth.docker.io/token", false, "not http(s)"],
    ["https://registry.example.com:5000", "https://auth.example.com/token", true, "a sibling, another port"],
    ["http://127.0.0.1:5000", "http://127.0.0.1:5000/token", true, "same origin, even over http"],
    ["https://registry-1.docker.io", "https://evil.com/token", false, "another site"],
    ["https://registry-1.docker.io", "https://docker.io.evil.com/token", false, "a look-alike prefix"],
    ["https://registry-1.docker.io", "https://evildocker.io/token", false, "a look-alike suffix"],
    ["https://registry.example.com", "http://registry.example.com/token", false, "same host, downgraded to http"],
    ["http://127.0.0.1:5000", "http://127.0.0.1:6000/token", false, "another port on an IP"],
    ["https://[::1]:5000", "https://[::1]:6000/token", false, "another port on an IPv6 address"],
    ["https://10.0.0.5", "https://auth.example.com/token", false, "IP to host name"],
    ["https://registry.example.com", "https://10.0.0.5/token", false, "host name to IP"],
    ["https://localhost:5000", "https://localhost:6000/token", false, "no registrable domain: another port is another service"],
    ["https://ghcr.io", "not a url", false, "not a URL"],
  ];
  for (const [upstream, target, expected, what] of table) {
    t.equal((await credentialsMayGo(upstream, target)).ok, expected, `${what}: ${upstream} -> ${target}`);
  }
});

t.test("redirect policy", async (t) => {
  const from = new URL("https://registry-1.docker.io/v2/library/alpine/blobs/sha256:aa");
  const table: Array<[string, number, RegExp | null]> = [
    ["https://production.cloudflare.docker.com/registry-v2/x?sig=1", 0, null],
    ["http://production.cloudflare.docker.com/x", 0, /https to plain http/],
    ["file:///var/lib/stowage/kv.sqlite3", 0, /file: URL/],
    ["data:application/json,{}", 0, /data: URL/],
    ["gopher://internal:70/", 0, /gopher: URL/],
    ["https://user:pass@cdn.example.com/x", 0, /embedded credentials/],
    ["https://cdn.example.com/x", 5, /more than 5 redirects/],
  ];
  for (const [to, hop, refusal] of table) {
    const got = redirectRefusal(from, new URL(to), hop);
    if (refusal === null) t.equal(got, null, `follows ${to}`);
    else t.match(got, refusal, `refuses ${to}`);
  }
  t.equal(redirectRefusal(new URL("http://registry.lan/v2/"), new URL("http://storage.lan/x"), 0), null, "http to http is the upstream's own choice");
});

const upstreamAt = (url: string, allowPrivateNetwork = false): Upstream => {
  const u = new URL(url);
  return { name: "up", url, host: u.host, aliases: [u.host], dockerHub: false, allowPrivateNetwork };
};

t.test("address policy after name resolution (no connection is made)", async (t) => {
  const dns: Record<string, string[]> = {
    "registry.example.com": ["104.16.0.1"],
    "cdn.example.net": ["104.16.0.2"],
    "sneaky.example.net": ["127.0.0.1"], // a public name pointing at the host itself
    "metadata.example.net": ["169.254.169.254"],
    "mixed.example.net": ["10.1.1.1", "104.16.0.3"],
    "registry.lan": ["192.168.1.5"],
    "storage.lan": ["192.168.1.6"],
    "localhost": ["127.0.0.1", "::1"],
  };
  const asked: string[] = [];
  const lookup: Lookup = async (host) => {
    asked.push(host);
    const found = dns[host];
    if (!found) throw new Error(`ENOTFOUND ${host}`);
    return found.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
  const publicUp = createConnectGuard(upstreamAt("https://registry.example.com"), [], lookup);
  t.same(await publicUp("registry.example.com", 443), { address: "104.16.0.1", family: 4 }, "the upstream itself");
  t.same(await publicUp("cdn.example.net", 443), { address: "104.16.0.2", family: 4 }, "a public CDN");
  await t.rejects(publicUp("sneaky.example.net", 443), { name: "NetworkRefused", message: /sneaky\.example\.net resolves to 127\.0\.0\.1, a loopback address.*allowPrivateNetwork/ });
  await t.rejects(publicUp("metadata.example.net", 80), { name: "NetworkRefused", message: /169\.254\.169\.254, a link-local address/ });
  await t.rejects(publicUp("169.254.169.254", 80), { name: "NetworkRefused", message: /link-local/ }, "an address literal");
  await t.rejects(publicUp("[::ffff:169.254.169.254]", 80), { name: "NetworkRefused", message: /link-local/ }, "an IPv4-mapped literal");
  await t.rejects(publicUp("10.0.0.5", 8080), { name: "NetworkRefused", message: /private/ }, "an internal service");
  await t.rejects(publicUp("0.0.0.0", 80), { name: "NetworkRefused", message: /unspecified/ });
  t.same(await publicUp("mixed.example.net", 443), { address: "104.16.0.3", family: 4 }, "a name with private and public addresses connects to the public one only");

  const lanUp = createConnectGuard(upstreamAt("https://registry.lan"), [], lookup);
  t.same(await lanUp("storage.lan", 443), { address: "192.168.1.6", family: 4 }, "a LAN registry may redirect into its own kind of network");
  await t.rejects(lanUp("localhost", 80), { name: "NetworkRefused", message: /loopback/ }, "but not to the host Stowage runs on");
  await t.rejects(lanUp("metadata.example.net", 80), { name: "NetworkRefused", message: /link-local/ }, "nor to link-local addresses");

  const allowed = createConnectGuard(upstreamAt("https://registry.example.com", true), [], lookup);
  t.same(await allowed("sneaky.example.net", 443), { address: "127.0.0.1", family: 4 }, "allowPrivateNetwork: the operator's choice");

  const pinned = createConnectGuard(upstreamAt("https://registry.example.com"), [
    { host: "registry.example.com", port: 443, address: "127.0.0.7" },
    { host: "cdn.example.net", port: 8443, address: "127.0.0.8" },
  ], lookup);
  asked.length = 0;
  t.same(await pinned("registry.example.com", 443), { address: "127.0.0.7", family: 4 }, "--resolve overrides the resolver");
  t.same(await pinned("cdn.example.net", 8443), { address: "127.0.0.8", family: 4 }, "--resolve of a redirect target, with the upstream on loopback too");
  t.same(asked, [], "overridden names are never looked up");
  t.same(await pinned("cdn.example.net", 443), { address: "104.16.0.2", family: 4 }, "an override is for one port only");
});

// ------------------------------------------------------ against a live Stowage

const BASIC = `Basic ${Buffer.from("robot:s3cret").toString("base64")}`;

/**
 * A registry with Bearer token auth (token "registry-token") holding one blob and
 * the manifest "good" of repository app; tests add their own answers per path.
 * `realm` is where its challenge sends clients (default: its own /token).
 */
async function hostileRegistry(t: Test, opts: { realm?: () => string } = {}) {
  const registry = await new FakeRegistry({ auth: true, token: "registry-token", ...opts }).start(t);
  const blob = Buffer.from("layer bytes that are the real thing\n");
  const blobDigest = registry.addBlob(blob);
  registry.addManifest("good", Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: blobDigest, size: blob.length },
    layers: [],
  })));
  return { registry, blob, blobDigest };
}

async function filesUnder(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
  } catch {
    return [];
  }
}

t.test("hostile redirects are refused, nothing they point at is served or cached", async (t) => {
  const up = await hostileRegistry(t);
  // An internal service on the same machine, which a redirect must not reach when the
  // upstream is not on loopback; here the upstream is, so its stand-in is a private address.
  const stowage = await startInProcessStowage(t, ["--upstream", `up=${up.registry.url}`, "--upstream-credentials", "up=robot:s3cret", "--upstream-timeout", "3s"]);
  const fake = (path: string) => sha256(path);

  const cases: Array<[string, string]> = [
    ["file: (Stowage's own KV file)", `file://${join(stowage.dataDir, "kv.sqlite3")}`],
    ["data:", "data:application/octet-stream;base64,aGVsbG8="],
    ["the cloud metadata service", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
    ["an internal service on a private address", "http://10.0.0.5:8080/internal"],
    ["an unspecified address", "http://0.0.0.0:5000/v2/"],
    ["a URL with credentials", "http://admin:admin@127.0.0.1:1/"],
  ];
  for (const [what, location] of cases) {
    await t.test(`a blob redirected to ${what}`, async (t) => {
      const digest = fake(what);
      up.registry.redirect(`/v2/app/blobs/${digest}`, location);
      const started = Date.now();
      const res = await fetch(`${stowage.url}/v2/up/app/blobs/${digest}`);
      const { text } = await expectOciError(t, res, 502, "UNAVAILABLE", what);
      t.ok(Date.now() - started < 2500, "refused at once, not after a connect timeout");
      t.notMatch(text, /hello|sqlite|SQLite/, "nothing of the target reaches the client");
    });
  }

  await t.test("a manifest redirected to an internal JSON document does not become the tag", async (t) => {
    up.registry.redirect("/v2/app/manifests/latest", "http://169.254.169.254/computeMetadata/v1/?recursive=true");
    await expectOciError(t, await fetch(`${stowage.url}/v2/up/app/manifests/latest`), 502, "UNAVAILABLE", "manifest redirected to metadata");
  });

  await t.test("a redirect loop", async (t) => {
    for (let i = 0; i < 7; i++) up.registry.redirect(`/loop/${i}`, `${up.registry.url}/loop/${i + 1}`);
    const loopDigest = fake("loop");
    up.registry.redirect(`/v2/app/blobs/${loopDigest}`, `${up.registry.url}/loop/0`);
    const { text: loop } = await expectOciError(t, await fetch(`${stowage.url}/v2/up/app/blobs/${loopDigest}`), 502, "UNAVAILABLE", "a redirect loop");
    t.ok(loop.length < 2000, "a short error");
  });

  t.same(await filesUnder(join(stowage.dataDir, "blobs")), [], "nothing was stored");
  const later = await fetch(`${stowage.url}/v2/up/app/manifests/good`);
  t.equal(later.status, 200, "the upstream's real content still pulls");
  await later.arrayBuffer();
});

t.test("a CDN redirect works on the same kind of network, and never gets credentials", async (t) => {
  const up = await hostileRegistry(t);
  // A second loopback address: another host, like Docker Hub's blob CDN.
  const cdn = await startHttpServer(t, (_req, res, url) => {
    if (url.searchParams.get("sig") !== "ok") return sendJson(res, 403, { message: "bad signature" });
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": up.blob.length });
    res.end(up.blob);
  }, { host: "127.0.0.2" });
  up.registry.redirect(`/v2/app/blobs/${up.blobDigest}`, `${cdn.url}/blobs/data?sig=ok`);
  const stowage = await startInProcessStowage(t, ["--upstream", `up=${up.registry.url}`, "--upstream-credentials", "up=robot:s3cret"]);
  const res = await fetch(`${stowage.url}/v2/up/app/blobs/${up.blobDigest}`);
  t.equal(res.status, 200);
  t.same(Buffer.from(await res.arrayBuffer()), up.blob, "the blob from the CDN");
  t.equal(cdn.seen.length, 1, "the CDN was asked once");
  t.same(cdn.seen.map((h) => h.authorization), [undefined], "the CDN got no Authorization header");
  t.ok(up.registry.tokenRequests.length >= 1 && up.registry.tokenRequests.every((r) => r.authorization === BASIC), "the registry's own token endpoint got the credentials");
});

t.test("a CDN's 401 cannot steer authentication", async (t) => {
  const up = await hostileRegistry(t);
  const thief = await startHttpServer(t, (_req, res) => sendJson(res, 200, { token: "stolen", expires_in: 300 }), { host: "127.0.0.3" });
  const cdn = await startHttpServer(t, (_req, res) =>
    sendJson(res, 401, { errors: [{ code: "UNAUTHORIZED" }] }, { "www-authenticate": `Bearer realm="${thief.url}/token",service="cdn"` }), { host: "127.0.0.2" });
  const digest = sha256("steered");
  up.registry.redirect(`/v2/app/blobs/${digest}`, `${cdn.url}/blob`);
  const stowage = await startInProcessStowage(t, ["--upstream", `up=${up.registry.url}`, "--upstream-credentials", "up=robot:s3cret"]);
  // A pull first, so the blob request goes out with a cached token and the CDN's 401 is the first one it meets.
  const first = await fetch(`${stowage.url}/v2/up/app/manifests/good`);
  t.equal(first.status, 200, "the manifest pulls");
  await first.arrayBuffer();
  const res = await fetch(`${stowage.url}/v2/up/app/blobs/${digest}`);
  t.ok(res.status === 403 || res.status === 401 || res.status === 502, `the client gets a refusal (${res.status})`);
  await res.arrayBuffer();
  t.same(thief.seen, [], "the realm the CDN named was never contacted");
  const before = up.registry.tokenRequests.length;
  const manifest = await fetch(`${stowage.url}/v2/up/app/manifests/good`);
  t.equal(manifest.status, 200, "the upstream's own auth still works afterwards");
  await manifest.arrayBuffer();
  t.ok(up.registry.tokenRequests.length >= before, "tokens still come from the registry's realm");
  t.same(thief.seen, [], "still nothing to the CDN's realm");
  t.same(cdn.seen.map((h) => h.authorization), [undefined], "the CDN never saw a credential");
});

t.test("token realms: credentials only where the policy allows; oversize and downgraded realms refused", async (t) => {
  // The realm is on another port of the upstream's IP: another service, no credentials.
  const other = await startHttpServer(t, (_req, res) => sendJson(res, 200, { token: "registry-token", expires_in: 300 }));
  const up = await hostileRegistry(t, { realm: () => `${other.url}/token` });
  const stowage = await startInProcessStowage(t, ["--upstream", `up=${up.registry.url}`, "--upstream-credentials", "up=robot:s3cret"]);
  const res = await fetch(`${stowage.url}/v2/up/app/manifests/good`);
  t.equal(res.status, 200, "an anonymous token from that realm still works");
  await res.arrayBuffer();
  t.ok(other.seen.length >= 1, "the realm was asked");
  t.same(other.seen.filter((h) => h.authorization !== undefined), [], "but without the credentials");
  t.match(stowage.logs.join("\n"), /not sending upstream credentials to this token realm/, "and the log says why");

  const huge = await startHttpServer(t, (_req, res) => sendJson(res, 200, { token: "x".repeat(200 * 1024), expires_in: 300 }));
  const up2 = await hostileRegistry(t, { realm: () => `${huge.url}/token` });
  const s2 = await startInProcessStowage(t, ["--upstream", `up=${up2.registry.url}`]);
  await expectOciError(t, await fetch(`${s2.url}/v2/up/app/manifests/good`), 502, "UNAVAILABLE", "a 200 KiB token response");

  const up3 = await hostileRegistry(t, { realm: () => "file:///etc/passwd" });
  const s3 = await startInProcessStowage(t, ["--upstream", `up=${up3.registry.url}`]);
  await expectOciError(t, await fetch(`${s3.url}/v2/up/app/manifests/good`), 502, "UNAVAILABLE", "a file: realm");

  const up4 = await hostileRegistry(t, { realm: () => "http://169.254.169.254/token" });
  const s4 = await startInProcessStowage(t, ["--upstream", `up=${up4.registry.url}`, "--upstream-credentials", "up=robot:s3cret"]);
  await expectOciError(t, await fetch(`${s4.url}/v2/up/app/manifests/good`), 502, "UNAVAILABLE", "a realm on the metadata address");
});

t.test("--resolve sends a host name to a chosen loopback address", async (t) => {
  const up = await hostileRegistry(t);
  const port = new URL(up.registry.url).port;
  const stowage = await startInProcessStowage(t, ["--upstream", `up=http://registry.hostile.test:${port}`, "--resolve", `registry.hostile.test:${port}:127.0.0.1`]);
  const res = await fetch(`${stowage.url}/v2/up/app/manifests/good`);
  t.equal(res.status, 200, "a name no DNS knows reaches the registry through --resolve");
  await res.arrayBuffer();
});
