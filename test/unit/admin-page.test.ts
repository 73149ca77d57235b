// The admin page (/-/) in process: who may open it, cross-site form refusals, escaping of names
// that come from clients, and paging and search over 30,000 tags.
import t, { type Test } from "tap";
import { openKv } from "@deno/kv";
import bcrypt from "bcryptjs";
import { AccessControl } from "../../src/auth/access.ts";
import type { AccessConfig } from "../../src/auth/access-config.ts";
import { AdminPage } from "../../src/admin/admin-page.ts";
import type { AdminPageMode } from "../../src/admin/admin-access.ts";
import type { AdminDeps } from "../../src/admin/deps.ts";
import { keepingRecentErrors, RecentErrors } from "../../src/admin/recent-errors.ts";
import type { CollectOptions, CollectReport } from "../../src/gc/collector.ts";
import { matchRoute } from "../../src/http/routes.ts";
import { kvKeys } from "../../src/kv/keys.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { createStowageMetrics } from "../../src/metrics/stowage-metrics.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { BlobStore } from "../../src/storage/blob-store.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { sha256 } from "../support/oci.ts";

const LOCAL: Upstream = { name: "local", url: "http://127.0.0.1:1", host: "127.0.0.1:1", aliases: ["127.0.0.1:1"], dockerHub: false, allowPrivateNetwork: false };
const ORIGIN = "http://127.0.0.1:5000";
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

type Fixture = { page: AdminPage; kv: TypedKv; raw: Kv; deps: AdminDeps; runs: CollectOptions[]; logs: string[]; store: Map<string, Uint8Array> };

const emptyReport = (o: CollectOptions): CollectReport => ({
  ran: true,
  dryRun: o.dryRun,
  removed: [{ kind: "tag", name: "local/team/app:v1", bytes: 0, reason: "purge" }, { kind: "blob", name: sha256("layer"), bytes: 1234, reason: "purge" }],
  bytesFreed: 1234,
  storeBytesBefore: 5000,
  storeBytesAfter: 3766,
  startedAt: 0,
  durationMs: 12,
});

async function fixture(t: Test, mode: AdminPageMode, accessOn: boolean): Promise<Fixture> {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const kv = new TypedKv(raw);
  const logs: string[] = [];
  const log = createLogger("debug", (line) => logs.push(line));
  let access: AccessControl | undefined;
  if (accessOn) {
    const config: AccessConfig = {
      service: "stowage",
      issuer: "stowage",
      tokenTtlSeconds: 300,
      identities: [
        { name: "alice", kind: "user", hash: bcrypt.hashSync("wonderland", 4), source: "test" },
        { name: "bob", kind: "user", hash: bcrypt.hashSync("builder", 4), source: "test" },
      ],
      rules: [],
      oidc: [],
      admins: ["alice"],
    };
    access = new AccessControl({ access: config, upstreams: [LOCAL], defaultUpstream: "local", publicUrl: null, kv });
    t.teardown(() => access!.close());
  }
  const runs: CollectOptions[] = [];
  const stored = new Map<string, Uint8Array>();
  const store = {
    description: "memory",
    open: async (digest: Digest) => (stored.has(digest) ? new Response(stored.get(digest) as Uint8Array<ArrayBuffer>).body : null),
  } as unknown as BlobStore;
  const deps: AdminDeps = {
    settings: { upstreams: [LOCAL], defaultUpstream: "local", adminPage: mode, maxSizeBytes: 10 * 1024 ** 3 },
    clients: new Map([["local", { status: () => ({ lastSuccessAt: Date.now() - 5000, lastFailureAt: null, lastFailure: null, inFlight: 0 }) }]]),
    blobs: { downloads: () => [] },
    kv,
    store,
    log,
    metrics: createStowageMetrics(),
    ...(access ? { access } : {}),
    collector: {
      run: async (o) => {
        runs.push(o);
        return emptyReport(o);
      },
      lastReport: () => null,
    },
    recentErrors: new RecentErrors(),
  };
  return { page: new AdminPage(deps), kv, raw, deps, runs, logs, store: stored };
}

async function get(f: Fixture, path: string, opts: { client?: string | null; authorization?: string; cookie?: string } = {}) {
  const headers = new Headers();
  if (opts.authorization) headers.set("authorization", opts.authorization);
  if (opts.cookie) headers.set("cookie", opts.cookie);
  const url = new URL(path, ORIGIN);
  const answer = await f.page.handle(new Request(url, { headers }), url, opts.client === undefined ? "127.0.0.1" : opts.client, createLogger("error", () => {}), "req-1");
  return { ...answer, text: await answer.response.text() };
}

t.test("who may open /-/: --admin-page, loopback, admins under access control", async (t) => {
  const cases: Array<[string, AdminPageMode, boolean, string | null, string | undefined, number]> = [
    ["off answers 404 even on loopback", "off", false, "127.0.0.1", undefined, 404],
    ["off answers 404 even to an admin", "off", true, "127.0.0.1", basic("alice", "wonderland"), 404],
    ["loopback: 127.0.0.1", "loopback", false, "127.0.0.1", undefined, 200],
    ["loopback: 127.8.9.10", "loopback", false, "127.8.9.10", undefined, 200],
    ["loopback: ::1", "loopback", false, "::1", undefined, 200],
    ["loopback: IPv4-mapped ::ffff:127.0.0.1", "loopback", false, "::ffff:127.0.0.1", undefined, 200],
    ["loopback: a LAN client is refused", "loopback", false, "10.0.0.5", undefined, 403],
    ["loopback: a public client is refused", "loopback", false, "203.0.113.9", undefined, 403],
    ["loopback: an unknown peer (Unix socket) is refused", "loopback", false, null, undefined, 403],
    ["open: any client", "open", false, "203.0.113.9", undefined, 200],
    ["access on: anonymous gets a Basic challenge", "loopback", true, "127.0.0.1", undefined, 401],
    ["access on: loopback alone is not enough", "open", true, "127.0.0.1", undefined, 401],
    ["access on: an admin", "loopback", true, "203.0.113.9", basic("alice", "wonderland"), 200],
    ["access on: an admin with a wrong password", "loopback", true, "127.0.0.1", basic("alice", "nope"), 401],
    ["access on: a user who is not an admin", "loopback", true, "127.0.0.1", basic("bob", "builder"), 403],
    ["access on: an unknown user", "loopback", true, "127.0.0.1", basic("mallory", "x"), 401],
    ["access on: a bearer token is not a sign-in", "loopback", true, "127.0.0.1", "Bearer aaa.bbb.ccc", 401],
  ];
  for (const [name, mode, accessOn, client, authorization, status] of cases) {
    const f = await fixture(t, mode, accessOn);
    const r = await get(f, "/-/", { client, ...(authorization ? { authorization } : {}) });
    t.equal(r.response.status, status, `${name}: ${status}`);
    t.match(r.response.headers.get("content-type"), /^text\/html/, `${name}: HTML, also when refused`);
    t.equal(r.response.headers.get("x-frame-options"), "DENY", `${name}: never framed`);
    t.equal(r.response.headers.get("cache-control"), "no-store", `${name}: never cached`);
    t.match(r.response.headers.get("content-security-policy"), /default-src 'none'/, `${name}: CSP`);
    if (status === 401) t.match(r.response.headers.get("www-authenticate"), /^Basic realm="Stowage admin"/, `${name}: the browser asks for a sign-in`);
    if (status === 200) t.match(r.text, /Repositories and tags/, `${name}: the page`);
    if (status === 403 && !accessOn) t.match(r.text, /loopback/, `${name}: says why`);
    if (status === 403 && accessOn) t.match(r.text, /bob is not an admin/, `${name}: says why`);
  }
});

/** A page load (to get the session cookie and a form token), as a browser does before posting. */
async function session(f: Fixture, authorization?: string): Promise<{ cookie: string; csrf: string }> {
  const r = await get(f, "/-/", authorization ? { authorization } : {});
  const cookie = (r.response.headers.get("set-cookie") ?? "").split(";")[0]!;
  const csrf = /name="csrf" value="([^"]+)"/.exec(r.text)?.[1] ?? "";
  return { cookie, csrf };
}

async function post(f: Fixture, fields: Record<string, string>, headers: Record<string, string>, client = "127.0.0.1") {
  const url = new URL("/-/purge", ORIGIN);
  const request = new Request(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams(fields).toString(),
  });
  const answer = await f.page.handle(request, url, client, createLogger("debug", (line) => f.logs.push(line)), "req-2");
  return { status: answer.response.status, text: await answer.response.text() };
}

t.test("purge forms: CSRF token, session cookie, Origin and Sec-Fetch-Site; POST only; confirmation first", async (t) => {
  const f = await fixture(t, "loopback", true);
  await f.kv.write(kvKeys.tag("local", "team/app", "v1"), { digest: sha256("m"), mediaType: OCI_MANIFEST, size: 1, checkedAt: 1 });
  const alice = basic("alice", "wonderland");
  const s = await session(f, alice);
  t.match(s.cookie, /^stowage_admin_session=/, "the page sets a session cookie");
  t.ok(s.csrf.length > 20, "and puts a token in its forms");
  const form = { csrf: s.csrf, what: "tag", upstream: "local", repo: "team/app", tag: "v1" };
  const same = { authorization: alice, cookie: s.cookie, origin: ORIGIN, "sec-fetch-site": "same-origin" };

  const refusals: Array<[string, Record<string, string>, Record<string, string>]> = [
    ["no token", { ...form, csrf: "" }, same],
    ["a made-up token", { ...form, csrf: "A".repeat(43) }, same],
    ["no session cookie", form, { ...same, cookie: "" }],
    ["another session's cookie", form, { ...same, cookie: "stowage_admin_session=bbbbbbbbbbbbbbbbbbbbbbbb" }],
    ["from another site (Origin)", form, { ...same, origin: "http://evil.example" }],
    ["from an opaque origin (Origin: null, a sandboxed frame)", form, { ...same, origin: "null" }],
    ["from another site (Sec-Fetch-Site)", form, { ...same, "sec-fetch-site": "cross-site" }],
    ["from a sibling site (Sec-Fetch-Site)", form, { ...same, "sec-fetch-site": "same-site" }],
  ];
  for (const [name, fields, headers] of refusals) {
    const r = await post(f, fields, headers);
    t.equal(r.status, 403, `${name}: refused`);
    t.match(r.text, /refused/, `${name}: says so in HTML`);
  }
  t.equal(f.runs.length, 0, "no refused form reached the collector");

  // bob's token would not do for alice, nor alice's for bob (who is no admin anyway)
  const other = await fixture(t, "loopback", false);
  const loop = await session(other);
  t.equal((await post(other, { ...form, csrf: loop.csrf }, { cookie: loop.cookie }, "127.0.0.2")).status, 403, "a token is bound to the identity (loopback 127.0.0.1 vs 127.0.0.2)");

  const url = new URL("/-/purge", ORIGIN);
  const viaGet = await f.page.handle(new Request(url, { headers: { authorization: alice } }), url, "127.0.0.1", createLogger("error", () => {}), "r");
  t.equal(viaGet.response.status, 405, "GET /-/purge changes nothing");
  t.equal(viaGet.response.headers.get("allow"), "POST");
  const wrongType = await f.page.handle(
    new Request(url, { method: "POST", headers: { ...same, "content-type": "text/plain" }, body: new URLSearchParams(form).toString() }),
    url,
    "127.0.0.1",
    createLogger("error", () => {}),
    "r",
  );
  t.equal(wrongType.response.status, 415, "only forms");

  f.runs.length = 0;
  const confirm = await post(f, form, same);
  t.equal(confirm.status, 200, "a valid form gets the confirmation page");
  t.match(confirm.text, /Purge tag local\/team\/app:v1\?/);
  t.match(confirm.text, /Purge now/);
  t.same(f.runs, [{ purge: [{ kind: "image", upstream: "local", repo: "team/app", tag: "v1", digest: null }], by: "alice", cacheTtlMs: null, maxBytes: null, dryRun: true }], "a dry run only");
  const done = await post(f, { ...form, confirm: "yes" }, same);
  t.equal(done.status, 200);
  t.match(done.text, /Purged tag local\/team\/app:v1/);
  t.match(done.text, /freed 1\.2 KiB/);
  t.same(f.runs[1], { purge: [{ kind: "image", upstream: "local", repo: "team/app", tag: "v1", digest: null }], by: "alice", cacheTtlMs: null, maxBytes: null, dryRun: false }, "then the purge, by alice");
  t.ok(f.logs.some((l) => /"msg":"admin purge done"/.test(l) && /"by":"alice"/.test(l)), "logged with who did it");

  const repo = await post(f, { csrf: s.csrf, what: "repository", upstream: "local", repo: "team/app", confirm: "yes" }, same);
  t.equal(repo.status, 200);
  t.same(f.runs[2]?.purge, [{ kind: "repository", glob: "local/team/app" }], "a repository purge is the glob of exactly that repository");
  t.equal((await post(f, { ...form, repo: "Team/*" }, same)).status, 400, "a name that is not a repository is refused, not globbed");
  t.equal((await post(f, { ...form, upstream: "elsewhere" }, same)).status, 400, "an upstream that is not configured is refused");
});

t.test("names from clients and upstreams are escaped", async (t) => {
  const f = await fixture(t, "open", false);
  const hostileRepo = `evil/<script>alert("repo")</script>`;
  const hostileTag = `"><img src=x onerror=alert(1)>`;
  await f.kv.write(kvKeys.tag("local", hostileRepo, hostileTag), { digest: sha256("m"), mediaType: OCI_MANIFEST, size: 1, checkedAt: 1 });
  f.deps.recentErrors!.add("error", "upstream said <b>no</b>", { path: "/v2/<svg onload=alert(2)>/manifests/x" });
  const r = await get(f, `/-/?q=${encodeURIComponent("evil <script>")}`);
  t.equal(r.response.status, 200);
  t.notMatch(r.text, /<script>alert/, "no script from a repository name");
  t.notMatch(r.text, /<img src=x/, "no element from a tag");
  t.notMatch(r.text, /<svg/, "no element from a logged path");
  t.notMatch(r.text, /<b>no<\/b>/, "no markup from an error message");
  t.match(r.text, /evil\/&lt;script&gt;alert\(&quot;repo&quot;\)&lt;\/script&gt;/, "the name is shown, as text");
  t.match(r.text, /value="evil &lt;script&gt;"/, "the search box holds the query as text");
  t.match(r.text, /Tags 1–1 of 1 matching/, "and it found the row");
  const scripts = [...r.text.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
  t.equal(scripts.length, 1, "one script element: the page's own");
  const nonce = /script-src 'nonce-([^']+)'/.exec(r.response.headers.get("content-security-policy") ?? "")?.[1];
  t.ok(nonce && scripts[0] === `<script nonce="${nonce}">`, "and it carries the response's nonce");
});

t.test("30,000 tags: paged and searched on the server, with timings", async (t) => {
  const f = await fixture(t, "loopback", false);
  const raw = f.raw;
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256("config"), size: 1000 },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: sha256("layer"), size: 2 * 1024 * 1024 }],
  }));
  const digest = sha256(manifest);
  f.store.set(digest, manifest);
  const writeStarted = Date.now();
  const REPOS = 600;
  const TAGS = 50;
  for (let r = 0; r < REPOS; r++) {
    let batch = raw.atomic();
    for (let i = 0; i < TAGS; i++) {
      const repo = `team-${String(r).padStart(4, "0")}/app`;
      const tag = `v${String(i).padStart(3, "0")}`;
      batch = batch.set(kvKeys.tag("local", repo, tag), { digest, mediaType: OCI_MANIFEST, size: manifest.byteLength, checkedAt: 1 });
      if (i % 2 === 0) batch = batch.set(kvKeys.usageTag("local", repo, tag), { lastPulledAt: Date.now() - 60_000, pulls: i + 1 });
    }
    await batch.commit();
  }
  t.comment(`wrote ${REPOS * TAGS} tag records (and ${(REPOS * TAGS) / 2} usage records) in ${Date.now() - writeStarted} ms`);

  const timed = async (path: string) => {
    const started = performance.now();
    const r = await get(f, path);
    return { ...r, ms: Math.round(performance.now() - started) };
  };
  const first = await timed("/-/");
  t.equal(first.response.status, 200);
  t.match(first.text, /Tags 1–50 of 30,000/, "the first page of 30,000");
  t.equal([...first.text.matchAll(/<tr class="tag"/g)].length, 50, "50 rows a page");
  t.match(first.text, /data-ref="local\/team-0000\/app:v000"/, "sorted by repository and tag");
  t.match(first.text, /2\.0 MiB/, "image sizes from the stored manifest");
  t.match(first.text, /50 tags &middot; 625 pulls/, "repository totals (pulls summed over its tags)");
  const second = await timed("/-/?page=2");
  t.match(second.text, /Tags 51–100 of 30,000/, "page 2");
  t.match(second.text, /data-ref="local\/team-0001\/app:v000"/);
  const last = await timed("/-/?page=600");
  t.match(last.text, /Tags 29,951–30,000 of 30,000/, "the last page");
  const beyond = await timed("/-/?page=9999");
  t.match(beyond.text, /page 600 of 600/, "a page past the end shows the last");
  const search = await timed(`/-/?q=${encodeURIComponent("team-0421 v04")}`);
  t.match(search.text, /Tags 1–10 of 10 matching “team-0421 v04” \(30,000 in all\)/, "every word must match");
  t.equal([...search.text.matchAll(/<tr class="tag"/g)].length, 10);
  t.notMatch(search.text, /team-0420/, "others are gone");
  const none = await timed("/-/?q=nothing-like-this");
  t.match(none.text, /No tags matching/);
  t.comment(
    `30,000 tags: first page ${first.ms} ms (KV scan and sort included), page 2 ${second.ms} ms, last page ${last.ms} ms, ` +
      `search ${search.ms} ms, empty search ${none.ms} ms`,
  );
  t.ok(second.ms < 1000 && search.ms < 1000, "paging and searching a built listing stay well under a second");
});

t.test("routing: /-/ is the page's, in HTML; the registry API keeps its JSON errors", async (t) => {
  t.same(matchRoute("/-/"), { kind: "admin" });
  t.same(matchRoute("/-"), { kind: "admin" });
  t.same(matchRoute("/-/downloads.json"), { kind: "admin" });
  t.same(matchRoute("/-x"), { kind: "not-found" }, "only /- and what is under /-/");
  const server = await startInProcessStowage(t, ["--upstream", "local=http://127.0.0.1:1"], { logLevel: "error" });
  const page = await fetch(`${server.url}/-/`);
  t.equal(page.status, 200, "the page, from loopback");
  t.match(page.headers.get("content-type"), /^text\/html/);
  t.match(page.headers.get("x-request-id"), /./, "with a request id like every answer");
  const missing = await fetch(`${server.url}/-/nothing-here`);
  t.equal(missing.status, 404);
  t.match(missing.headers.get("content-type"), /^text\/html/, "a browser gets an HTML 404 under /-/");
  t.match(await missing.text(), /no such page: \/-\/nothing-here/);
  const redirect = await fetch(`${server.url}/-`, { redirect: "manual" });
  t.equal(redirect.status, 308);
  t.equal(redirect.headers.get("location"), "/-/");
  const api = await fetch(`${server.url}/v2/nothing/here`);
  t.equal(api.status, 404);
  t.match(api.headers.get("content-type"), /^application\/json/, "the registry API still answers JSON");
  t.match((await api.json()) as object, { errors: [{ code: "UNSUPPORTED" }] });
  const feed = await fetch(`${server.url}/-/downloads.json`);
  t.equal(feed.status, 200);
  t.match(feed.headers.get("content-type"), /^application\/json/);
  t.equal(feed.headers.get("cache-control"), "no-store");
  t.same(((await feed.json()) as { downloads: unknown[] }).downloads, [], "no downloads in progress");

  // The upstream is unreachable: the pull fails, and the page shows both the failing upstream and the error.
  const pull = await fetch(`${server.url}/v2/local/team/app/manifests/v1`);
  t.ok(pull.status >= 500, "a pull from an unreachable upstream fails");
  const after = await (await fetch(`${server.url}/-/`)).text();
  t.match(after, /<tr data-upstream="local">[\s\S]*?<span class="bad">failing<\/span>[\s\S]*?is unreachable/, "the upstream is shown failing, and why");
  t.match(after, /<ol class="errors" id="errors">[\s\S]*?<b>request failed<\/b>/, "the failed request is among the recent errors");
});

t.test("downloads.json lists what BlobCache reports, for the page's live table", async (t) => {
  const f = await fixture(t, "loopback", false);
  const d = { digest: sha256("big"), upstream: "local", repo: "team/app", bytes: 1024, size: 4096, startedAt: 1000 };
  f.deps.blobs = { downloads: () => [d] };
  const page = new AdminPage(f.deps);
  const url = new URL("/-/downloads.json", ORIGIN);
  const answer = await page.handle(new Request(url), url, "127.0.0.1", createLogger("error", () => {}), "r");
  const body = (await answer.response.json()) as { now: number; downloads: unknown[] };
  t.same(body.downloads, [d]);
  t.type(body.now, "number", "with the server's clock, for the rate");
  const html = await get({ ...f, page }, "/-/");
  t.match(html.text, /<progress max="4096" value="1024">/, "the first paint has it too, before any script runs");
  t.match(html.text, /1\.0 KiB of 4\.0 KiB \(25%\)/);
});

t.test("the listing is rebuilt behind the page: an old one is served at once while a new one is built", async (t) => {
  const f = await fixture(t, "loopback", false);
  const clock = { now: 1_000_000 };
  const page = new AdminPage(f.deps, { now: () => clock.now });
  const view = async () => (await get({ ...f, page }, "/-/")).text;
  const record = { digest: sha256("m"), mediaType: OCI_MANIFEST, size: 1, checkedAt: 1 };
  await f.kv.write(kvKeys.tag("local", "team/one", "v1"), record);
  t.match(await view(), /Tags 1–1 of 1/);
  await f.kv.write(kvKeys.tag("local", "team/two", "v1"), record);
  t.match(await view(), /Tags 1–1 of 1/, "within 5 s the same listing");
  clock.now += 6_000;
  t.match(await view(), /Tags 1–1 of 1/, "after 5 s the old listing is served at once");
  await new Promise((r) => setTimeout(r, 200));
  t.match(await view(), /Tags 1–2 of 2/, "and the next request has the new one");
  clock.now += 10 * 60_000;
  await f.kv.write(kvKeys.tag("local", "team/three", "v1"), record);
  t.match(await view(), /Tags 1–3 of 3/, "a listing older than 5 minutes is not served: the request waits for a new one");
});

t.test("recent errors: the last 100 warnings and errors, newest first, with their child loggers' fields", async (t) => {
  const ring = new RecentErrors(100, () => 42);
  const lines: string[] = [];
  const log = keepingRecentErrors(createLogger("info", (l) => lines.push(l)), ring);
  log.info("not kept");
  log.debug("not kept either");
  for (let i = 0; i < 150; i++) log.child({ requestId: `r${i}` }).warn(`warning ${i}`, { i });
  log.error("the last", { why: new Error("boom") });
  const kept = ring.list();
  t.equal(kept.length, 100, "a fixed ring");
  t.match(kept[0], { level: "error", msg: "the last", time: 42 });
  t.match(kept[1], { level: "warn", msg: "warning 149", fields: { requestId: "r149", i: 149 } }, "newest first, with the request id of the child logger");
  t.equal(kept[99]!.msg, "warning 51", "the oldest ones went");
  t.equal(lines.length, 152, "every line still goes to the log, info included");
});
