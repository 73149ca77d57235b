// Real registry shapes over TLS, each host name on its own loopback address and resolved for
// Stowage by --resolve, with a test CA trusted through NODE_EXTRA_CA_CERTS:
//   1. Docker Hub: registry-1.hub.test (token auth; blob GETs answered 307 by distribution's
//      `redirect` storage middleware) + auth.hub.test (token service) + cdn.blobcdn.test (a CDN
//      on another registrable domain, serving the registry's storage files);
//   2. ghcr-like: the token service on the registry's own host and port;
//   3. Basic-only (ECR/Artifactory-like): distribution with htpasswd, no token service.
// Each registry host is an https front (TLS-terminating, as a load balancer) before
// distribution: the front logs which Authorization scheme and user each request carried, which
// distribution's own log does not say. A private image is pulled through Stowage with configured
// credentials by skopeo and by containerd, digest-exact, and the servers' logs show where the
// credentials went: to the token service as Basic, to the registry as Bearer (Basic for shape
// 3), never to the CDN. Without credentials a private image fails fast with a 401/403 in the
// OCI error shape, and public images still pull with anonymous tokens.
import t, { type Test } from "tap";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { stringify as toYaml } from "yaml";
import { type CdnLogEntry, makeCdn } from "./cdn-server.ts";
import { describeAuthorization, proxyTo, startHttpsServer } from "./https-server.ts";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../harness/images.ts";
import { startContainerd } from "../harness/containerd.ts";
import { freePort, makeTempDir, type Proc } from "../harness/processes.ts";
import { pushTestImages, skopeo, startRegistry, startRegistryWithConfig } from "../harness/registry.ts";
import { startStowage } from "../harness/stowage.ts";
import { makeSigningCert, makeTestCa, type TestCa } from "./tls-ca.ts";
import { makeTokenIssuer, type TokenIssuer } from "./token-server.ts";
import { fileSha256 } from "../support/oci.ts";

type Stowage = Awaited<ReturnType<typeof startStowage>>;

const USER = "puller";
// A colon and a space: --upstream-credentials splits at the first ":" only.
const PASSWORD = "s3cret: pass";

const HUB = { registry: "registry-1.hub.test", auth: "auth.hub.test", cdn: "cdn.blobcdn.test" } as const;
const GHCR = "ghcr.shape.test";
const BASIC = "artifacts.basic.test";
const ADDRESSES: Record<string, string> = {
  [HUB.registry]: "127.0.0.2",
  [HUB.auth]: "127.0.0.3",
  [HUB.cdn]: "127.0.0.4",
  [GHCR]: "127.0.0.5",
  [BASIC]: "127.0.0.6",
};
const address = (host: string): string => {
  const a = ADDRESSES[host];
  if (!a) throw new Error(`no loopback address for ${host}`);
  return a;
};

let scratch = "";
let ca: TestCa;
let images: TestImage[] = [];
/** The storage every shape's distribution serves (read-only) and the CDN reads. */
let storageRoot = "";
const procs: Array<{ stop(): Promise<void> }> = [];

const image = (name: string): TestImage => {
  const found = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!found) throw new Error(`no test image ${name}`);
  return found;
};
// Pulled with skopeo (a multi-arch OCI index) and with ctr (a Docker manifest list); both private.
const privateForSkopeo = () => image("oci-index");
const privateForCtr = () => image("docker-list");
// Anyone may pull it where the shape has a token service.
const publicImage = () => image("oci-single");

/** Status of an https GET to `origin` at its loopback address, checking the certificate against the test CA. */
function httpsStatus(origin: string, path: string): Promise<number> {
  const u = new URL(origin);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: address(u.hostname), servername: u.hostname, port: u.port, path, ca: ca.caPem, timeout: 2_000, headers: { host: u.host } },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

/** One request as the registry host's TLS front saw it: what its Authorization carried, never the secret. */
type FrontEntry = { method: string; path: string; status: number; authorization: string; user?: string };

async function writeYaml(name: string, value: unknown): Promise<string> {
  const path = join(scratch, name);
  await writeFile(path, toYaml(value));
  return path;
}

function track<T extends { stop(): Promise<void> }>(p: T): T {
  procs.push(p);
  return p;
}

/**
 * A registry host: an https front on the host's own loopback address (a TLS-terminating load
 * balancer, as real registries have) in front of distribution on 127.0.0.1. The front logs
 * every request's Authorization scheme and user, which distribution's own log does not say;
 * distribution checks the credentials. `token` puts a token service on the same host and port.
 */
async function startRegistryHost(opts: {
  hostname: string;
  auth: (origin: string) => Record<string, unknown>;
  middleware?: Record<string, unknown>;
  token?: TokenIssuer;
}): Promise<{ origin: string; registry: Proc; front: FrontEntry[] }> {
  const backendPort = await freePort();
  const backend = proxyTo(`http://127.0.0.1:${backendPort}`);
  const front: FrontEntry[] = [];
  const server = track(
    await startHttpsServer({
      hostname: opts.hostname,
      address: address(opts.hostname),
      tls: await ca.issue(opts.hostname, [opts.hostname]),
      handler: (req, res) => {
        const auth = describeAuthorization(req.headers.authorization);
        const entry: FrontEntry = { method: req.method ?? "GET", path: new URL(req.url ?? "/", "https://x").pathname, status: 0, authorization: auth.scheme };
        if (auth.user !== undefined) entry.user = auth.user;
        front.push(entry);
        res.on("finish", () => (entry.status = res.statusCode));
        if (opts.token && entry.path === "/token") return opts.token.handler(req, res);
        return backend(req, res);
      },
    }),
  );
  const config = {
    version: 0.1,
    log: { level: "info", formatter: "json", accesslog: { disabled: true } },
    // The storage pushed in before(), served read-only by every shape.
    storage: { filesystem: { rootdirectory: storageRoot }, maintenance: { uploadpurging: { enabled: false }, readonly: { enabled: true } } },
    http: { addr: `127.0.0.1:${backendPort}`, secret: "stowage-e2e-registry-shapes" },
    auth: opts.auth(server.origin),
    ...(opts.middleware ? { middleware: opts.middleware } : {}),
  };
  // Ready when the whole path answers: TLS with the test CA, the front, distribution's challenge.
  const registry = track(await startRegistryWithConfig(await writeYaml(`${opts.hostname}.yml`, config), async () => (await httpsStatus(server.origin, "/v2/")) === 401));
  return { origin: server.origin, registry, front };
}

// ---------------------------------------------------------------------------
// The three shapes

type Shape = {
  name: string;
  upstreamUrl: string;
  /** --resolve entries for every host of the shape. */
  resolve: string[];
  front: FrontEntry[];
};

let hub: Shape & { tokens: TokenIssuer; cdnLog: CdnLogEntry[] };
let ghcr: Shape & { tokens: TokenIssuer };
let basic: Shape;

const resolveFor = (origin: string): string => {
  const u = new URL(origin);
  return `${u.hostname}:${u.port}:${address(u.hostname)}`;
};

async function startHubShape(): Promise<typeof hub> {
  const signer = await makeSigningCert(scratch, "hub-token-signer");
  const tokens = makeTokenIssuer({ service: "registry.hub.test", issuer: "auth.hub.test", signer, user: { name: USER, password: PASSWORD }, publicRepos: [publicImage().repo] });
  const auth = track(await startHttpsServer({ hostname: HUB.auth, address: address(HUB.auth), tls: await ca.issue(HUB.auth, [HUB.auth]), handler: tokens.handler }));
  const cdn = makeCdn(storageRoot);
  const cdnServer = track(await startHttpsServer({ hostname: HUB.cdn, address: address(HUB.cdn), tls: await ca.issue(HUB.cdn, [HUB.cdn]), handler: cdn.handler }));
  const host = await startRegistryHost({
    hostname: HUB.registry,
    auth: () => ({ token: { realm: `${auth.origin}/token`, service: "registry.hub.test", issuer: "auth.hub.test", rootcertbundle: signer.certPath } }),
    // Blob GETs (and HEADs) answer 307 to the CDN, at the blob's storage path.
    middleware: { storage: [{ name: "redirect", options: { baseurl: cdnServer.origin } }] },
  });
  return {
    name: "hub",
    upstreamUrl: host.origin,
    resolve: [resolveFor(host.origin), resolveFor(auth.origin), resolveFor(cdnServer.origin)],
    front: host.front,
    tokens,
    cdnLog: cdn.log,
  };
}

async function startGhcrShape(): Promise<typeof ghcr> {
  const signer = await makeSigningCert(scratch, "ghcr-token-signer");
  const tokens = makeTokenIssuer({ service: GHCR, issuer: GHCR, signer, user: { name: USER, password: PASSWORD }, publicRepos: [publicImage().repo] });
  // One host and port for the registry and its token service, as ghcr.io has.
  const host = await startRegistryHost({
    hostname: GHCR,
    auth: (origin) => ({ token: { realm: `${origin}/token`, service: GHCR, issuer: GHCR, rootcertbundle: signer.certPath } }),
    token: tokens,
  });
  return { name: "ghcr", upstreamUrl: host.origin, resolve: [resolveFor(host.origin)], front: host.front, tokens };
}

async function startBasicShape(): Promise<Shape> {
  const htpasswd = join(scratch, "htpasswd");
  await writeFile(htpasswd, `${USER}:${bcrypt.hashSync(PASSWORD, 6).replace("$2b$", "$2y$")}\n`);
  const host = await startRegistryHost({ hostname: BASIC, auth: () => ({ htpasswd: { realm: "basic-realm", path: htpasswd } }) });
  return { name: "basic", upstreamUrl: host.origin, resolve: [resolveFor(host.origin)], front: host.front };
}

// ---------------------------------------------------------------------------
// Clients


async function skopeoCopy(ref: string): Promise<{ code: number; stderr: string; dir: string; ms: number }> {
  const dir = join(scratch, `copy-${Math.random().toString(36).slice(2, 8)}`);
  const started = Date.now();
  const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false", `docker://${ref}`, `dir:${dir}`], { timeoutMs: 30_000 });
  return { code: r.code, stderr: r.stderr, dir, ms: Date.now() - started };
}

async function checkDirCopy(tt: Test, dir: string, img: TestImage): Promise<void> {
  tt.equal(await fileSha256(join(dir, "manifest.json")), img.digest, `${img.repo}: top-level manifest digest`);
  const files = new Set(await readdir(dir));
  for (const blob of img.blobs) {
    const hex = blob.digest.slice("sha256:".length);
    if (files.has(hex)) tt.equal(await fileSha256(join(dir, hex)), blob.digest, `${img.repo}: blob ${hex.slice(0, 12)} intact`);
    else tt.fail(`${img.repo}: blob ${hex.slice(0, 12)} missing`);
  }
  for (const child of img.manifests) {
    const hex = child.digest.slice("sha256:".length);
    tt.equal(await fileSha256(join(dir, `${hex}.manifest.json`)), child.digest, `${img.repo}: child manifest ${hex.slice(0, 12)}`);
  }
}

/**
 * Stowage for these shapes (the first is the default upstream), every host of theirs resolved to
 * its loopback address, with or without the credentials.
 */
async function stowageFor(shapes: Shape[], withCredentials: boolean): Promise<Stowage> {
  const args = ["--upstream-timeout", "10s"];
  for (const shape of shapes) {
    args.push("--upstream", `${shape.name}=${shape.upstreamUrl}`);
    if (withCredentials) args.push("--upstream-credentials", `${shape.name}=${USER}:${PASSWORD}`);
    for (const r of shape.resolve) args.push("--resolve", r);
  }
  // Node: --resolve has no Deno counterpart (Deno uses the system resolver).
  return track(await startStowage(args, { runtime: "node", env: { NODE_EXTRA_CA_CERTS: ca.caPath } }));
}

/** With credentials: skopeo copies one private image and containerd fetches another, both digest-exact. */
async function pullPrivateImages(tt: Test, shape: Shape): Promise<void> {
  const stowage = await stowageFor([shape], true);
  const host = new URL(stowage.url).host;
  const containerd = await startContainerd();
  tt.teardown(() => containerd.stop());

  const viaSkopeo = privateForSkopeo();
  const copied = await skopeoCopy(`${host}/${viaSkopeo.repo}:v1`);
  tt.equal(copied.code, 0, `skopeo copy of the private ${viaSkopeo.repo}: ${copied.stderr.slice(-600)}`);
  if (copied.code === 0) await checkDirCopy(tt, copied.dir, viaSkopeo);
  else tt.comment(`Stowage log:\n${stowage.logs().slice(-4000)}`);

  const viaCtr = privateForCtr();
  const fetched = await containerd.ctr(["content", "fetch", "--all-platforms", `${host}/${viaCtr.repo}:v1`], { timeoutMs: 30_000 });
  tt.equal(fetched.code, 0, `ctr content fetch of the private ${viaCtr.repo}: ${fetched.stderr.slice(-600)}`);
  const content = (await containerd.ctr(["content", "ls", "-q"])).stdout;
  for (const d of [viaCtr.digest, ...viaCtr.manifests.map((m) => m.digest), ...viaCtr.blobs.map((b) => b.digest)]) {
    tt.match(content, d, `containerd has ${d.slice(0, 19)} of ${viaCtr.repo}`);
  }
  tt.notMatch(stowage.logs(), PASSWORD, "the password is not in Stowage's log");
}

/** The registry's answers to GETs of `img`'s manifests and blobs, as its front logged them. */
function servedFor(front: FrontEntry[], img: TestImage, status: number): FrontEntry[] {
  return front.filter((r) => r.method === "GET" && r.status === status && r.path.startsWith(`/v2/${img.repo}/`));
}

/**
 * The registry authenticated the pull: manifests and blobs were answered `status` (200, or
 * 307 to the CDN) only on requests carrying `scheme` credentials of USER.
 */
function registryGot(tt: Test, shape: Shape, scheme: "bearer" | "basic", blobStatus: number): void {
  for (const img of [privateForSkopeo(), privateForCtr()]) {
    const manifests = servedFor(shape.front, img, 200).filter((r) => r.path.includes("/manifests/"));
    const blobs = servedFor(shape.front, img, blobStatus).filter((r) => r.path.includes("/blobs/"));
    tt.ok(manifests.length > 0, `${shape.name}: the registry served manifests of ${img.repo}`);
    tt.equal(new Set(blobs.map((r) => r.path)).size, img.blobs.length, `${shape.name}: the registry answered ${blobStatus} for every blob of ${img.repo}`);
    for (const r of [...manifests, ...blobs]) {
      tt.same([r.authorization, r.user], [scheme, USER], `${shape.name}: ${r.method} …${r.path.slice(-24)} carried ${scheme} for ${USER}`);
    }
  }
}

// ---------------------------------------------------------------------------

t.before(async () => {
  scratch = await makeTempDir("shapes");
  ca = await makeTestCa(scratch);
  images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  storageRoot = join(scratch, "storage");
  await mkdir(storageRoot);
  // Filled once through a plain registry on the same storage; the shapes then serve it
  // read-only (pushing through them would need the test host names in the system resolver).
  const pusher = await startRegistry({ rootDir: storageRoot });
  try {
    await pushTestImages(pusher.url, [privateForSkopeo(), privateForCtr(), publicImage()]);
  } finally {
    await pusher.stop({ keepData: true });
  }
  [hub, ghcr, basic] = await Promise.all([startHubShape(), startGhcrShape(), startBasicShape()]);
});

t.teardown(async () => {
  // Stowage and clients first, the servers they talk to last.
  for (const p of procs.reverse()) await p.stop();
});

t.test("Docker Hub shape: token service on a sibling host gets the credentials, the CDN on another domain gets none", async (tt) => {
  const tokensBefore = hub.tokens.log.length;
  await pullPrivateImages(tt, hub);

  const tokenRequests = hub.tokens.log.slice(tokensBefore);
  tt.ok(tokenRequests.length > 0, "Stowage asked auth.hub.test for tokens");
  for (const r of tokenRequests) {
    tt.same([r.authorization, r.user, r.authenticated, r.status], ["basic", USER, true, 200], `token request ${r.method} ${r.scopes.join(" ")}: Basic ${USER}, accepted`);
  }
  const granted = new Set(tokenRequests.flatMap((r) => r.granted));
  for (const img of [privateForSkopeo(), privateForCtr()]) tt.ok(granted.has(img.repo), `a token granted pull on the private ${img.repo}`);

  // Docker Hub's registry answers blob GETs with a redirect; the bytes come from the CDN.
  registryGot(tt, hub, "bearer", 307);

  tt.ok(hub.cdnLog.length > 0, "blobs came from the CDN");
  for (const img of [privateForSkopeo(), privateForCtr()]) {
    for (const b of img.blobs) {
      const hex = b.digest.slice("sha256:".length);
      tt.ok(hub.cdnLog.some((r) => r.method === "GET" && r.path.includes(`/${hex}/data`) && r.status === 200), `the CDN served blob ${hex.slice(0, 12)}`);
    }
  }
  for (const r of hub.cdnLog) {
    tt.equal(r.headers.authorization, undefined, `no Authorization on CDN ${r.method} ${r.path.slice(-20)}`);
    tt.notMatch(JSON.stringify(r.headers), /s3cret|Basic |Bearer /i, "no credential of any kind in the CDN request's headers");
  }
});

t.test("ghcr-like shape: token service on the registry's own host; tokens from Basic, registry requests with Bearer", async (tt) => {
  const before = ghcr.front.length;
  await pullPrivateImages(tt, ghcr);
  const seen = ghcr.front.slice(before);
  const tokenRequests = seen.filter((r) => r.path === "/token");
  tt.ok(tokenRequests.length > 0, "Stowage asked /token");
  for (const r of tokenRequests) tt.same([r.authorization, r.user, r.status], ["basic", USER, 200], `${r.method} /token: Basic ${USER}, accepted`);
  registryGot(tt, ghcr, "bearer", 200);
});

t.test("Basic-only shape: the registry gets Basic credentials, there is no token dance", async (tt) => {
  const before = basic.front.length;
  await pullPrivateImages(tt, basic);
  registryGot(tt, basic, "basic", 200);
  tt.same(basic.front.slice(before).filter((r) => r.path === "/token" || r.authorization === "bearer"), [], "no token requests, no Bearer");
});

t.test("no credentials configured: private images fail fast with 401/403 in the OCI shape, public ones pull", async (tt) => {
  const containerd = await startContainerd();
  tt.teardown(() => containerd.stop());
  // One instance for all three; the first path component picks the upstream.
  const stowage = await stowageFor([hub, ghcr, basic], false);
  for (const shape of [hub, ghcr, basic]) {
    const host = `${new URL(stowage.url).host}/${shape.name}`;
    const img = privateForSkopeo();
    const started = Date.now();
    const res = await fetch(`${stowage.url}/v2/${shape.name}/${img.repo}/manifests/v1`, {
      headers: { accept: img.mediaType },
      signal: AbortSignal.timeout(20_000),
    });
    const body = await res.text();
    tt.ok([401, 403].includes(res.status), `${shape.name}: private manifest answers ${res.status} ${body.slice(0, 300)}`);
    let code = "";
    try {
      code = (JSON.parse(body) as { errors: Array<{ code: string; message: string }> }).errors[0]?.code ?? "";
    } catch {
      // not JSON: fails below
    }
    tt.ok(["UNAUTHORIZED", "DENIED"].includes(code), `${shape.name}: OCI error code ${code || "(none)"}`);
    tt.ok(Date.now() - started < 10_000, `${shape.name}: answered in ${Date.now() - started} ms`);

    const copied = await skopeoCopy(`${host}/${img.repo}:v1`);
    tt.not(copied.code, 0, `${shape.name}: skopeo copy of a private image without credentials fails`);
    tt.match(copied.stderr, /401|403|unauthorized|denied|authentication required/i, `${shape.name}: skopeo says why: ${copied.stderr.slice(-300)}`);
    tt.ok(copied.ms < 15_000, `${shape.name}: skopeo gave up in ${copied.ms} ms, no hang`);
    const ctrStarted = Date.now();
    const fetched = await containerd.ctr(["content", "fetch", "--all-platforms", `${host}/${privateForCtr().repo}:v1`], { timeoutMs: 30_000 });
    tt.not(fetched.code, 0, `${shape.name}: ctr content fetch of a private image without credentials fails`);
    tt.match(fetched.stderr, /401|403|unauthorized|forbidden|denied/i, `${shape.name}: ctr says why: ${fetched.stderr.slice(-300)}`);
    tt.ok(Date.now() - ctrStarted < 15_000, `${shape.name}: ctr gave up in ${Date.now() - ctrStarted} ms, no hang`);

    if (shape !== basic) {
      const pub = publicImage();
      const ok = await skopeoCopy(`${host}/${pub.repo}:v1`);
      tt.equal(ok.code, 0, `${shape.name}: the public ${pub.repo} pulls anonymously: ${ok.stderr.slice(-400)}`);
      if (ok.code === 0) await checkDirCopy(tt, ok.dir, pub);
    }
  }
  const anonymous = [...hub.tokens.log, ...ghcr.tokens.log].filter((r) => r.authorization === "none");
  tt.ok(anonymous.length > 0, "the token services saw anonymous token requests");
  for (const r of anonymous) tt.same(r.granted.filter((g) => g !== publicImage().repo), [], "an anonymous token never grants a private repository");
  for (const r of hub.cdnLog) tt.equal(r.headers.authorization, undefined, `no Authorization on CDN ${r.method} ${r.path.slice(-20)}`);
});
