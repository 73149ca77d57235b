// Real clients against Stowage's own token service (access control on via --htpasswd, a
// distribution upstream): containerd anonymous and with --user, skopeo with --creds and with an
// identity token, and a distribution registry in proxy mode using Stowage as its upstream.
// Checks what a user would check: the pull works (exact digests) or fails with a clear reason,
// and how each client asked for its token (Stowage's "token issued" log lines).
import t, { type Test } from "tap";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../harness/images.ts";
import { startContainerd } from "../harness/containerd.ts";
import { makeTempDir } from "../harness/processes.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { startStowage } from "../harness/stowage.ts";
import { fileSha256 } from "../support/oci.ts";

type Registry = Awaited<ReturnType<typeof startRegistry>>;
type Stowage = Awaited<ReturnType<typeof startStowage>>;
type Containerd = Awaited<ReturnType<typeof startContainerd>>;

const USER = "puller";
const PASSWORD = "correct horse: battery";

let images: TestImage[] = [];
let registry: Registry;
let stowage: Stowage;
let containerd: Containerd;
let scratch = "";

const image = (name: string): TestImage => {
  const found = images.find((i) => i.repo === `stowage-test/${name}`);
  if (!found) throw new Error(`no test image ${name}`);
  return found;
};
const host = () => new URL(stowage.url).host;

type TokenLine = { method: string; via: string; subject: string; account?: string; client?: string; requested: string[] };

/** Stowage's audit lines for issued tokens, in order. */
function tokenLines(from = 0): TokenLine[] {
  return stowage
    .logs()
    .slice(from)
    .split("\n")
    .filter((l) => l.includes('"msg":"token issued"'))
    .map((l) => JSON.parse(l) as TokenLine);
}


/** A skopeo dir: copy holds the exact top manifest and every blob. */
async function checkDirCopy(tt: Test, dir: string, img: TestImage): Promise<void> {
  tt.equal(await fileSha256(join(dir, "manifest.json")), img.digest, `${img.repo}: manifest digest`);
  const files = new Set(await readdir(dir));
  for (const blob of img.blobs) {
    const hex = blob.digest.slice("sha256:".length);
    if (files.has(hex)) tt.equal(await fileSha256(join(dir, hex)), blob.digest, `${img.repo}: blob ${hex.slice(0, 12)}`);
    else tt.fail(`${img.repo}: blob ${hex.slice(0, 12)} missing`);
  }
}

async function skopeoCopy(args: string[], ref: string): Promise<{ code: number; stderr: string; dir: string }> {
  const dir = join(scratch, `copy-${Math.random().toString(36).slice(2, 8)}`);
  const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false", ...args, `docker://${ref}`, `dir:${dir}`]);
  return { code: r.code, stderr: r.stderr, dir };
}

async function contentHas(tt: Test, img: TestImage): Promise<void> {
  const content = await containerd.ctr(["content", "ls", "-q"]);
  tt.match(content.stdout, img.digest, `content store has the manifest ${img.digest.slice(0, 19)}`);
  for (const blob of img.blobs) tt.match(content.stdout, blob.digest, `content store has ${blob.digest.slice(0, 19)}`);
}

t.before(async () => {
  scratch = await makeTempDir("auth");
  images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  registry = await startRegistry();
  await pushTestImages(registry.url, images);
  const htpasswd = join(scratch, "htpasswd");
  await writeFile(htpasswd, `${USER}:${bcrypt.hashSync(PASSWORD, 8).replace("$2b$", "$2y$")}\n`);
  const config = join(scratch, "stowage.yaml");
  // One public repository; everything else needs credentials (the --htpasswd default).
  await writeFile(config, "rules:\n  - { repository: stowage-test/oci-single, pull: [anonymous, '*'] }\n");
  stowage = await startStowage(["--upstream", `local=${registry.url}`, "--htpasswd", htpasswd, "--config", config]);
  containerd = await startContainerd();
});

t.teardown(async () => {
  await containerd?.stop();
  await stowage?.stop();
  await registry?.stop();
});

t.test("start-up says access control is on", async (tt) => {
  tt.match(stowage.logs(), /"accessControl":"on: pulls need a token from \/token/);
  tt.notMatch(stowage.logs(), /\$2y\$/, "no password hash in the log");
});

t.test("ctr content fetch, anonymous: 401, then a GET token without account; denied repositories fail clearly", async (tt) => {
  const single = image("oci-single");
  const from = stowage.logs().length;
  const ok = await containerd.ctr(["content", "fetch", "--all-platforms", `${host()}/${single.repo}:v1`]);
  tt.equal(ok.code, 0, `anonymous fetch of a public repository: ${ok.stderr.slice(-400)}`);
  await contentHas(tt, single);
  const lines = tokenLines(from);
  tt.ok(lines.length >= 1, "containerd asked for a token");
  for (const l of lines) {
    tt.same([l.method, l.via, l.subject, l.account], ["GET", "anonymous", "anonymous", undefined], "anonymous GET, no account param");
    tt.same(l.requested, [`repository:${single.repo}:pull`], "with the scope of the challenge");
  }

  const index = image("oci-index");
  const denied = await containerd.ctr(["content", "fetch", "--all-platforms", `${host()}/${index.repo}:v1`]);
  tt.not(denied.code, 0, "anonymous fetch of a private repository fails");
  tt.match(denied.stderr, /401 Unauthorized|unauthorized|authorization/i, `and says it is about authorization: ${denied.stderr.slice(-300)}`);
  // ctr prints only the status; the reason is in the body, as any client would get it with this token.
  const body = new URLSearchParams({ scope: `repository:${index.repo}:pull`, service: "stowage" });
  const anonymousToken = ((await (await fetch(`${stowage.url}/token?${body}`)).json()) as { token: string }).token;
  const refused = await fetch(`${stowage.url}/v2/${index.repo}/manifests/v1`, { headers: { authorization: `Bearer ${anonymousToken}` } });
  tt.equal(refused.status, 401);
  tt.match(await refused.text(), /needs credentials, and the client sent none: log in to [^ ]+ \(containerd and BuildKit look up credentials by the exact host:port/, "the refusal says why, with the host:port hint");
  tt.notMatch(stowage.logs(), new RegExp(`"path":"/v2/${index.repo}/blobs/[^"]*","status":200`), "no blob of it was served");
});

t.test("ctr --user: POST password grant (containerd-client), digest-exact", async (tt) => {
  const index = image("oci-index");
  const from = stowage.logs().length;
  const r = await containerd.ctr(["content", "fetch", "--all-platforms", "--user", `${USER}:${PASSWORD}`, `${host()}/${index.repo}:v1`]);
  tt.equal(r.code, 0, `ctr --user fetch: ${r.stderr.slice(-400)}`);
  await contentHas(tt, index);
  const lines = tokenLines(from);
  tt.ok(lines.length >= 1, "tokens were issued");
  for (const l of lines) {
    tt.same([l.method, l.via, l.subject, l.client], ["POST", "password", USER, "containerd-client"], "POST password grant");
  }
  const wrong = await containerd.ctr(["content", "fetch", "--user", `${USER}:wrong`, `${host()}/${index.repo}:v1`]);
  tt.not(wrong.code, 0, "a wrong password fails");
});

t.test("skopeo --creds: GET with account and Basic", async (tt) => {
  const img = image("docker-list");
  const from = stowage.logs().length;
  const r = await skopeoCopy(["--src-creds", `${USER}:${PASSWORD}`], `${host()}/${img.repo}:v1`);
  tt.equal(r.code, 0, `skopeo copy --src-creds: ${r.stderr.slice(-400)}`);
  if (r.code === 0) await checkDirCopy(tt, r.dir, img);
  const lines = tokenLines(from);
  tt.ok(lines.length >= 1, "tokens were issued");
  for (const l of lines) tt.same([l.method, l.via, l.subject, l.account], ["GET", "basic", USER, USER], "GET with account + Basic");

  const anonymous = await skopeoCopy([], `${host()}/${img.repo}:v1`);
  tt.not(anonymous.code, 0, "without credentials skopeo is refused");
});

t.test("skopeo with an identity token: POST refresh_token grant (containers/image)", async (tt) => {
  const img = image("docker-single");
  const body = new URLSearchParams({ grant_type: "password", username: USER, password: PASSWORD, access_type: "offline", service: "stowage" });
  const res = await fetch(`${stowage.url}/token`, { method: "POST", body });
  const { refresh_token } = (await res.json()) as { refresh_token?: string };
  tt.type(refresh_token, "string", "access_type=offline gives a refresh token");
  const authfile = join(scratch, "auth.json");
  // As docker login writes it: containers/image skips an entry whose "auth" is not "user:password" in base64.
  const auth = Buffer.from(`${USER}:`).toString("base64");
  await writeFile(authfile, JSON.stringify({ auths: { [host()]: { auth, identitytoken: refresh_token } } }));
  const from = stowage.logs().length;
  const r = await skopeoCopy(["--src-authfile", authfile], `${host()}/${img.repo}:v1`);
  tt.equal(r.code, 0, `skopeo copy with an identity token: ${r.stderr.slice(-400)}`);
  if (r.code === 0) await checkDirCopy(tt, r.dir, img);
  const lines = tokenLines(from);
  tt.ok(lines.length >= 1, "tokens were issued");
  for (const l of lines) tt.same([l.method, l.via, l.subject, l.client], ["POST", "refresh_token", USER, "containers/image"], "POST refresh_token grant");
});

t.test("distribution in proxy mode with proxy.username/password: token dance, GET with account + Basic", async (tt) => {
  const img = image("docker-list");
  const from = stowage.logs().length;
  const proxy = await startRegistry({ proxyRemoteUrl: stowage.url, proxyCredentials: { username: USER, password: PASSWORD } });
  tt.teardown(() => proxy.stop());
  const r = await skopeoCopy([], `${new URL(proxy.url).host}/${img.repo}:v1`);
  tt.equal(r.code, 0, r.code === 0 ? "skopeo copy through the distribution proxy" : `${r.stderr.slice(-400)}\nStowage:\n${stowage.logs().slice(from).slice(-3000)}`);
  if (r.code === 0) await checkDirCopy(tt, r.dir, img);
  const lines = tokenLines(from);
  tt.ok(lines.length >= 1, "the proxy asked Stowage for tokens");
  for (const l of lines) tt.same([l.method, l.via, l.subject, l.account], ["GET", "basic", USER, USER], "GET with account + Basic");
});

t.test("distribution in proxy mode with credentials in remoteurl", async (tt) => {
  const img = image("oci-index");
  const from = stowage.logs().length;
  const remote = new URL(stowage.url);
  remote.username = USER;
  remote.password = PASSWORD;
  const proxy = await startRegistry({ proxyRemoteUrl: remote.href.replace(/\/$/, "") });
  tt.teardown(() => proxy.stop());
  const r = await skopeoCopy([], `${new URL(proxy.url).host}/${img.repo}:v1`);
  tt.equal(r.code, 0, r.code === 0 ? "skopeo copy through the distribution proxy" : `${r.stderr.slice(-400)}\nStowage:\n${stowage.logs().slice(from).slice(-3000)}`);
  if (r.code === 0) await checkDirCopy(tt, r.dir, img);
  // URL credentials make distribution send Basic on every request, and Stowage's 200 to that /v2/
  // ping means it never starts a token dance.
  const requests = stowage
    .logs()
    .slice(from)
    .split("\n")
    .filter((l) => l.includes('"msg":"request"'))
    .map((l) => JSON.parse(l) as { path: string; status: number; user?: string });
  tt.ok(requests.some((r) => r.path === `/v2/${img.repo}/manifests/v1` && r.status === 200 && r.user === USER), "manifest served to the proxy as puller");
  tt.same(tokenLines(from), [], "no token was needed");
});

t.test("containerd in mirror mode, a user allowed only on a non-default upstream: the realm carries ?ns= and the pull works", async (tt) => {
  // The mirrored registry is not the default upstream, and the rules let MIRROR_USER pull only there.
  const registryHost = new URL(registry.url).host;
  const htpasswd = join(scratch, "htpasswd-mirror");
  await writeFile(htpasswd, `mirror-user:${bcrypt.hashSync("mirror-pw", 8)}\n`);
  const config = join(scratch, "stowage-mirror.yaml");
  await writeFile(config, "rules:\n  - { upstream: mirrored, repository: '**', pull: [mirror-user] }\n  - { repository: '**', pull: [] }\n");
  const mirror = await startStowage([
    "--upstream", "elsewhere=http://127.0.0.1:9", "--upstream", `mirrored=${registry.url}`, "--default-upstream", "elsewhere",
    "--htpasswd", htpasswd, "--config", config,
  ]);
  tt.teardown(() => mirror.stop());
  const mirrorHost = new URL(mirror.url).host;
  const img = image("docker-single");

  const challenged = await fetch(`${mirror.url}/v2/${img.repo}/manifests/v1?ns=${registryHost}`);
  tt.equal(challenged.status, 401);
  tt.match(challenged.headers.get("www-authenticate"), `realm="${mirror.url}/token?ns=${encodeURIComponent(registryHost)}"`, "the challenge's realm names the mirrored registry");

  const hostsDir = join(scratch, "hosts-mirror");
  await mkdir(join(hostsDir, registryHost), { recursive: true });
  await writeFile(join(hostsDir, registryHost, "hosts.toml"), `server = "http://${registryHost}"\n\n[host."http://${mirrorHost}"]\n  capabilities = ["pull", "resolve"]\n`);
  const r = await containerd.ctr(["content", "fetch", "--hosts-dir", hostsDir, "--user", "mirror-user:mirror-pw", `${registryHost}/${img.repo}:v1`]);
  tt.equal(r.code, 0, `ctr content fetch through the mirror as mirror-user: ${r.stderr.slice(-500)}`);
  const logs = mirror.logs();
  tt.match(logs, new RegExp(`"path":"/v2/${img.repo}/manifests/v1","status":200,"user":"mirror-user"`), "the manifest was served through Stowage to mirror-user");
  const issued = logs.split("\n").filter((l) => l.includes('"msg":"token issued"')).map((l) => JSON.parse(l) as { ns?: string; granted?: string[] });
  tt.ok(issued.length >= 1 && issued.every((l) => l.ns === registryHost), "containerd asked the realm with its ?ns= kept");
  tt.ok(issued.some((l) => (l.granted ?? []).includes(`repository:${img.repo}:pull`)), "and was granted pull by the mirrored upstream's rule");
});
