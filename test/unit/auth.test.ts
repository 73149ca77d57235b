// Access control: scope, rule and htpasswd tables; token verification against hostile tokens
// and key rotation (in-process, with a controlled clock); and the token endpoint and registry
// routes of a real started Stowage, driven the way containerd, skopeo and docker drive them.
import t, { type Test } from "tap";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { readdirSync, readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openKv } from "@deno/kv";
import bcrypt from "bcryptjs";
import { base64url, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, SignJWT } from "jose";
import { AccessControl } from "../../src/auth/access.ts";
import { revokeRefreshTokens, rotateKeys } from "../../src/auth/admin.ts";
import { readAuthorization } from "../../src/auth/credentials.ts";
import { IdentityStore, parseHtpasswd } from "../../src/auth/identities.ts";
import { clientKey, DEFAULT_LIMITS, LoginThrottle } from "../../src/auth/login-throttle.ts";
import { PasswordChecks } from "../../src/auth/password-checks.ts";
import { KeyRing } from "../../src/auth/keys.ts";
import { globToRegExp, mayPull, type Principal, type Rule } from "../../src/auth/rules.ts";
import { parseScopes } from "../../src/auth/scopes.ts";
import { handleTokenRequest } from "../../src/auth/token-service.ts";
import type { OidcProvider } from "../../src/auth/oidc.ts";
import type { AccessConfig } from "../../src/auth/access-config.ts";
import { loadConfig } from "../../src/config/load.ts";
import { ConfigError } from "../../src/config/problems.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { type Kv, TypedKv } from "../../src/kv/kv.ts";
import { openKvAt } from "../../src/kv/open.ts";
import { createLogger } from "../../src/log.ts";
import { parseWwwAuthenticate } from "../../src/registry/challenge.ts";
import { RegistryError } from "../../src/registry/errors.ts";
import { OCI_MANIFEST } from "../../src/registry/media-types.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { FakeRegistry, startHttpServer } from "../support/fake-registry.ts";
import { startInProcessStowage } from "../support/in-process-stowage.ts";
import { sha256 } from "../support/oci.ts";

// Low bcrypt cost keeps the test fast; the format is what matters here.
const hash = (secret: string) => bcrypt.hashSync(secret, 4);

// ------------------------------------------------------------------ tables

t.test("parseScopes: repeated params, space-joined fields, malformed scopes", async (t) => {
  const pull = (name: string) => ({ type: "repository", name, actions: ["pull"] });
  const cases: Array<[string, string[], ReturnType<typeof parseScopes>]> = [
    ["one scope", ["repository:a/b:pull"], { scopes: [pull("a/b")], invalid: [] }],
    ["repeated params (docker, skopeo POST)", ["repository:a:pull", "repository:b:pull"], { scopes: [pull("a"), pull("b")], invalid: [] }],
    ["one space-joined field (containerd POST)", ["repository:a:pull repository:b:pull"], { scopes: [pull("a"), pull("b")], invalid: [] }],
    ["same repository twice merges", ["repository:a:pull", "repository:a:push,pull"], { scopes: [{ type: "repository", name: "a", actions: ["pull", "push"] }], invalid: [] }],
    ["name with a port", ["repository:127.0.0.1:5000/x:pull"], { scopes: [pull("127.0.0.1:5000/x")], invalid: [] }],
    ["catalog scope parses", ["registry:catalog:*"], { scopes: [{ type: "registry", name: "catalog", actions: ["*"] }], invalid: [] }],
    ["resource class", ["repository(plugin):a:pull"], { scopes: [{ type: "repository(plugin)", name: "a", actions: ["pull"] }], invalid: [] }],
    ["extra spaces", ["  repository:a:pull   "], { scopes: [pull("a")], invalid: [] }],
    ["empty", [""], { scopes: [], invalid: [] }],
    ["no actions", ["repository:a:"], { scopes: [], invalid: ["repository:a:"] }],
    ["no name", ["repository::pull"], { scopes: [], invalid: ["repository::pull"] }],
    ["one colon", ["repository:a"], { scopes: [], invalid: ["repository:a"] }],
    ["bad action", ["repository:a:PULL!"], { scopes: [], invalid: ["repository:a:PULL!"] }],
    ["bad type", ["Repo:a:pull"], { scopes: [], invalid: ["Repo:a:pull"] }],
    ["space-separated junk", ["repository:a:pull junk"], { scopes: [pull("a")], invalid: ["junk"] }],
  ];
  for (const [what, input, expected] of cases) t.same(parseScopes(input), expected, what);
  const many = Array.from({ length: 100 }, (_, i) => `repository:r${i}:pull`).join(" ");
  t.ok(parseScopes([many]).invalid.includes("(too many scopes)"), "a flood of scopes is refused");
  t.ok(parseScopes([`repository:${"a".repeat(600)}:pull`]).invalid.length === 1, "an overlong scope is refused");
});

t.test("rules: globs, first match decides, default is signed-in only", async (t) => {
  const globs: Array<[string, string, boolean]> = [
    ["*", "alpine", true],
    ["*", "library/alpine", false],
    ["**", "library/alpine", true],
    ["team/*", "team/app", true],
    ["team/*", "team/app/sub", false],
    ["team/**", "team/app/sub", true],
    ["**/base", "base", true],
    ["**/base", "x/y/base", true],
    ["app?", "app1", true],
    ["a.b", "aXb", false],
    ["library/alpine", "library/alpine", true],
  ];
  for (const [glob, name, match] of globs) t.equal(globToRegExp(glob).test(name), match, `${glob} ~ ${name}`);

  const rules: Rule[] = [
    { upstream: "*", repository: "public/**", pull: ["anonymous", "*"] },
    { upstream: "local", repository: "team/**", pull: ["alice", "ci"] },
    { upstream: "hub", repository: "**", pull: ["alice"] },
  ];
  const anon: Principal = { kind: "anonymous" };
  const alice: Principal = { kind: "identity", subject: "alice" };
  const bob: Principal = { kind: "identity", subject: "bob" };
  const table: Array<[Principal, string, string, boolean]> = [
    [anon, "local", "public/x", true],
    [bob, "local", "public/x", true],
    [anon, "local", "team/app", false],
    [bob, "local", "team/app", false],
    [alice, "local", "team/app", true],
    [alice, "other", "team/app", true], // no rule: any signed-in identity
    [bob, "other", "team/app", true],
    [anon, "other", "team/app", false], // no rule: anonymous may not
    [bob, "hub", "library/alpine", false],
    [alice, "hub", "library/alpine", true],
  ];
  for (const [who, upstream, repo, allowed] of table) {
    t.equal(mayPull(rules, who, upstream, repo), allowed, `${who.kind === "anonymous" ? "anonymous" : who.subject} ${upstream}/${repo}`);
  }
});

t.test("htpasswd: bcrypt entries only, comments, problems never echo the hash field", async (t) => {
  const good = hash("pw");
  const parsed = parseHtpasswd(
    [
      "# comment",
      "",
      `alice:${good.replace("$2b$", "$2y$")}`,
      `bob:${good.replace("$2b$", "$2a$")}`,
      `carol:${good}`,
      "dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
      "eve:plaintext-secret",
      "nocolon",
      `alice:${good}`,
      `anonymous:${good}`,
      `john smith:${good}`,
      `-dash:${good}`,
      `${"x".repeat(129)}:${good}`,
      `ci.bot@example.com:${good}`,
    ].join("\r\n"),
  );
  t.same(parsed.entries.map((e) => e.name), ["alice", "bob", "carol", "ci.bot@example.com"]);
  t.equal(parsed.problems.length, 8);
  t.match(parsed.problems[0], /line 6: user "dave" does not have a bcrypt hash/);
  t.notMatch(parsed.problems.join("\n"), /plaintext-secret|W6ph5/, "no secret material in messages");
  t.match(parsed.problems[3], /line 9: user "alice" appears more than once/);
  // The same name rules as users in the config file; "anonymous" is what clients without credentials are.
  t.match(parsed.problems[4], /line 10: user name "anonymous" is reserved for clients without credentials/);
  t.match(parsed.problems[5], /line 11: user name "john smith" is not allowed: use letters, digits/);
  t.match(parsed.problems[6], /line 12: user name "-dash" is not allowed/);
  t.match(parsed.problems[7], /line 13: user name "x{80}" is not allowed/, "an overlong name, shortened in the message");
});

t.test("Authorization header parsing", async (t) => {
  const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
  const cases: Array<[string | null, string]> = [
    [null, "none"],
    [`Basic ${b64("u:p:with:colons")}`, "basic"],
    [`basic ${b64("ü:pä")}`, "basic"],
    ["Bearer aaa.bbb.ccc", "bearer"],
    ["Bearer", "invalid"],
    ["Bearer a.b", "invalid"],
    ["Bearer a b c", "invalid"],
    ["Basic !!!", "invalid"],
    [`Basic ${b64("nocolon")}`, "invalid"],
    [`Basic ${Buffer.from([0xff, 0xfe, 0x3a, 0x41]).toString("base64")}`, "invalid"], // not UTF-8
    ["Digest x", "invalid"],
    [`Bearer ${"a".repeat(10_000)}.b.c`, "invalid"],
  ];
  for (const [header, kind] of cases) t.equal(readAuthorization(header).kind, kind, String(header).slice(0, 40));
  t.same(readAuthorization(`Basic ${b64("u:p:with:colons")}`), { kind: "basic", username: "u", password: "p:with:colons" });
});

t.test("config: off by default, one setting turns it on, --htpasswd implies on", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-auth-config-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const htpasswd = join(dir, "htpasswd");
  await writeFile(htpasswd, `bob:${hash("pw")}\n`);
  const load = (argv: string[], env: Record<string, string> = {}) =>
    loadConfig({ argv, env, readFile: (p) => readFileSync(p, "utf8") });
  t.equal(load([]).access, undefined, "off by default");
  t.ok(load(["--access-control", "on"]).access, "--access-control on");
  t.ok(load([], { STOWAGE_ACCESS_CONTROL: "on" }).access, "STOWAGE_ACCESS_CONTROL");
  t.equal(load(["--access-control", "off"], { STOWAGE_ACCESS_CONTROL: "on" }).access, undefined, "flag beats env");
  const withFile = load(["--htpasswd", htpasswd]).access;
  t.same(withFile?.identities.map((i) => [i.name, i.kind]), [["bob", "user"]], "--htpasswd users, access on");
  t.equal(withFile?.tokenTtlSeconds, 900, "default token lifetime");
  t.throws(() => load(["--htpasswd", htpasswd, "--access-control", "off"]), ConfigError);

  const file = join(dir, "stowage.yaml");
  await writeFile(
    file,
    [
      "accessControl: true",
      "tokenTtl: 5m",
      "users:",
      `  - { name: alice, passwordHash: "${hash("pw")}" }`,
      "robots:",
      `  - { name: ci, secretHash: "${hash("s")}" }`,
      "rules:",
      "  - { repository: 'team/**', pull: [alice] }",
    ].join("\n"),
  );
  const fromFile = load(["--config", file]).access;
  t.equal(fromFile?.tokenTtlSeconds, 300);
  t.same(fromFile?.rules, [{ upstream: "*", repository: "team/**", pull: ["alice"] }]);
  t.same(fromFile?.identities.map((i) => [i.name, i.kind]), [["alice", "user"], ["ci", "robot"]]);

  await writeFile(file, ["rules:", "  - { repository: 'team/**', pull: [alice] }"].join("\n"));
  t.throws(() => load(["--config", file]), /has users, robots, rules, oidc or admins, but access control is off/, "rules without access control are an error");
  t.equal(load(["--config", file, "--access-control", "off"]).access, undefined, "unless turned off on purpose");
  await writeFile(file, ["accessControl: true", "users:", `  - { name: alice, passwordHash: "${hash("pw")}", password: pw }`].join("\n"));
  t.throws(() => load(["--config", file]), /users\[0\]: unknown key "password" \(allowed: name, passwordHash\)/);
  for (const kind of ["users", "robots"]) {
    const key = kind === "users" ? "passwordHash" : "secretHash";
    await writeFile(file, ["accessControl: true", `${kind}:`, `  - { name: anonymous, ${key}: "${hash("pw")}" }`].join("\n"));
    t.throws(() => load(["--config", file]), /"anonymous" is reserved/, `${kind} cannot be named anonymous`);
  }
  await writeFile(htpasswd, `bob:${hash("pw")}\nanonymous:${hash("pw")}\n`);
  t.throws(() => load(["--htpasswd", htpasswd]), /line 2: user name "anonymous" is reserved/, "nor can htpasswd users, and the error names the line");
  await writeFile(htpasswd, `bob:${hash("pw")}\n`);
  await writeFile(file, ["accessControl: true", "users:", "  - { name: alice }"].join("\n"));
  t.throws(() => load(["--config", file]), /users\[0\]\.passwordHash: expected a bcrypt hash/);

  await writeFile(file, ["accessControl: true", "users:", "  - { name: alice, passwordHash: hunter2-plain }"].join("\n"));
  const err = (() => {
    try {
      load(["--config", file]);
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof ConfigError, "a plain-text password is refused");
  t.match(String(err), /users\[0\]\.passwordHash: expected a bcrypt hash/);
  t.notMatch(String(err), /hunter2/, "and not echoed");
});

// --------------------------------------------------- verification, in-process

const LOCAL: Upstream = { name: "local", url: "http://127.0.0.1:1", host: "127.0.0.1:1", aliases: ["127.0.0.1:1"], dockerHub: false, allowPrivateNetwork: false };
const OTHER: Upstream = { name: "other", url: "http://127.0.0.1:2", host: "127.0.0.1:2", aliases: ["127.0.0.1:2"], dockerHub: false, allowPrivateNetwork: false };

type Clock = { now: number };

async function accessControl(t: Test, clock: Clock, rules: Rule[] = [], oidc: OidcProvider[] = []): Promise<AccessControl & { kv: TypedKv }> {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const access: AccessConfig = {
    service: "stowage",
    issuer: "stowage",
    tokenTtlSeconds: 300,
    identities: [
      { name: "alice", kind: "user", hash: hash("wonderland"), source: "test" },
      { name: "ci", kind: "robot", hash: hash("robot-secret"), source: "test" },
    ],
    rules,
    oidc,
    admins: [],
  };
  const kv = new TypedKv(raw);
  return Object.assign(new AccessControl({ access, upstreams: [LOCAL, OTHER], defaultUpstream: "local", publicUrl: null, kv, now: () => clock.now }), { kv });
}

const ORIGIN = "http://127.0.0.1:5000";

/** Runs authorize; returns null when allowed, else the refusal. */
async function refusal(ac: AccessControl, path: string, authorization: string | null): Promise<RegistryError | null> {
  const url = new URL(path, ORIGIN);
  const name = /^\/v2\/(.+)\/manifests\/[^/]+$/.exec(url.pathname)?.[1] ?? null;
  const headers = new Headers();
  if (authorization !== null) headers.set("authorization", authorization);
  try {
    await ac.authorize(new Request(url, { headers }), url, name);
    return null;
  } catch (err) {
    if (err instanceof RegistryError) return err;
    throw err;
  }
}

t.test("verification refuses hostile and stale tokens with a reason and a challenge", async (t) => {
  const clock = { now: Date.UTC(2030, 0, 1) };
  const ac = await accessControl(t, clock, [{ upstream: "*", repository: "public/**", pull: ["anonymous", "*"] }]);
  const alice: Principal = { kind: "identity", subject: "alice" };
  const scope = (name: string) => [{ type: "repository", name, actions: ["pull"] }];
  const good = (await ac.issue(alice, scope("team/app"))).token;
  const { kid, key } = await ac.keys.signingKey();
  const nowS = Math.floor(clock.now / 1000);
  const claims = { iss: "stowage", sub: "alice", aud: "stowage", iat: nowS, nbf: nowS, exp: nowS + 300, jti: "x", access: scope("team/app") };
  const sign = (override: Record<string, unknown>, header: Record<string, unknown> = {}) =>
    new SignJWT({ ...claims, ...override }).setProtectedHeader({ alg: "ES256", kid, ...header }).sign(key);
  const [h, p] = good.split(".") as [string, string, string];
  const unsigned = (payload: unknown, header: unknown) =>
    `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(payload))}.`;
  const jwks = await ac.keys.jwks();
  const publicJwk = JSON.stringify(jwks.keys[0]);
  const hs256 = await new SignJWT(claims).setProtectedHeader({ alg: "HS256", kid }).sign(new TextEncoder().encode(publicJwk));
  const tampered = `${h}.${base64url.encode(JSON.stringify({ ...decodeJwt(good), access: scope("other/secret") }))}.${good.split(".")[2]}`;

  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${good}`), null, "a good token passes");
  t.equal(await refusal(ac, "/v2/", `Bearer ${good}`), null, "and opens /v2/");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${await sign({ exp: nowS - 30 })}`), null, "expired 30 s ago: within clock skew");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${await sign({ exp: nowS + 350 })}`), null, "lifetime 350 s with a 300 s TTL: within clock skew");
  const year = 365 * 86_400;
  void p;

  const cases: Array<[string, string, string | null, RegExp]> = [
    ["no credentials", "/v2/team/app/manifests/v1", null, /authentication required for repository team\/app/],
    ["no credentials at /v2/", "/v2/", null, /authentication required for this registry/],
    ["alg none", "/v2/team/app/manifests/v1", `Bearer ${unsigned(claims, { alg: "none", kid })}`, /malformed|not signed with ES256/],
    ["HS256 keyed with the public key", "/v2/team/app/manifests/v1", `Bearer ${hs256}`, /not signed with ES256/],
    ["tampered payload", "/v2/other/secret/manifests/v1", `Bearer ${tampered}`, /signature is invalid/],
    ["expired", "/v2/team/app/manifests/v1", `Bearer ${await sign({ exp: nowS - 120 })}`, /expired/],
    ["not yet valid", "/v2/team/app/manifests/v1", `Bearer ${await sign({ nbf: nowS + 120, iat: nowS + 120 })}`, /not valid yet/],
    ["wrong audience", "/v2/team/app/manifests/v1", `Bearer ${await sign({ aud: "other-service" })}`, /for another service/],
    ["audience as a list of others", "/v2/team/app/manifests/v1", `Bearer ${await sign({ aud: ["x", "y"] })}`, /for another service/],
    ["wrong issuer", "/v2/team/app/manifests/v1", `Bearer ${await sign({ iss: "evil" })}`, /issued by someone else/],
    ["unknown key id", "/v2/team/app/manifests/v1", `Bearer ${await sign({}, { kid: "nope" })}`, /unknown key/],
    ["another repository's token", "/v2/team/other/manifests/v1", `Bearer ${good}`, /alice has no pull access to repository team\/other/],
    ["granted name, other upstream via ?ns=", "/v2/team/app/manifests/v1?ns=127.0.0.1:2", `Bearer ${await sign({ access: scope("team/app") })}`, null as unknown as RegExp],
    ["access claim widened by a forger without the key", "/v2/team/x/manifests/v1", `Bearer ${unsigned({ ...claims, access: scope("team/x") }, { alg: "ES256", kid })}`, /malformed|signature/],
    ["removed identity", "/v2/team/app/manifests/v1", `Bearer ${await sign({ sub: "mallory" })}`, /no longer exists/],
    ["malformed: Bearer", "/v2/team/app/manifests/v1", "Bearer", /bearer token is malformed/],
    ["malformed: Bearer a.b", "/v2/team/app/manifests/v1", "Bearer a.b", /bearer token is malformed/],
    ["malformed: Basic !!!", "/v2/team/app/manifests/v1", "Basic !!!", /Basic credentials are malformed/],
    ["Basic with a wrong password", "/v2/team/app/manifests/v1", `Basic ${btoa("alice:nope")}`, /invalid username or password/],
    ["Basic of a known user (a distribution proxy with credentials in its remoteurl)", "/v2/team/app/manifests/v1", `Basic ${btoa("alice:wonderland")}`, null as unknown as RegExp],
    ["huge header", "/v2/team/app/manifests/v1", `Bearer ${"a".repeat(100_000)}`, /too long/],
    // Signed with the real key (as by someone who read it from the KV file), but never issued by /token.
    ["signed with our key, valid for a year", "/v2/team/app/manifests/v1", `Bearer ${await sign({ exp: nowS + year })}`, /lifetime \(31536000 s\) exceeds this Stowage's token lifetime \(300 s\)/],
    ["signed with our key, iat moved up to just before a far exp", "/v2/team/app/manifests/v1", `Bearer ${await sign({ iat: nowS + year - 300, exp: nowS + year })}`, /lifetime .* exceeds/],
    ["signed with our key, no iat", "/v2/team/app/manifests/v1", `Bearer ${await sign({ iat: undefined })}`, /no iat/],
    ["garbage JSON in a JWT shape", "/v2/team/app/manifests/v1", "Bearer e30.e30.e30", /malformed/],
  ];
  for (const [what, path, auth, reason] of cases) {
    const err = await refusal(ac, path, auth);
    if (reason === null) {
      t.equal(err, null, `${what}: allowed`);
      continue;
    }
    t.ok(err, `${what}: refused`);
    if (!err) continue;
    t.same([err.status, err.code], [401, "UNAUTHORIZED"], `${what}: 401 UNAUTHORIZED`);
    t.match(err.message, reason, `${what}: says why`);
    const challenge = parseWwwAuthenticate(err.headers["www-authenticate"] ?? "")[0];
    const name = /^\/v2\/(.+)\/manifests/.exec(path)?.[1];
    t.same(
      challenge?.params,
      { realm: `${ORIGIN}/token`, service: "stowage", ...(name ? { scope: `repository:${name}:pull` } : {}) },
      `${what}: Bearer challenge`,
    );
  }

  // Anonymous: the grant follows the rules; the refusal names the host:port hint.
  const anonymous = await ac.issue({ kind: "anonymous" }, [...scope("public/base"), ...scope("team/app")]);
  t.same(anonymous.access, scope("public/base"), "anonymous gets only what the rules allow");
  t.equal(await refusal(ac, "/v2/public/base/manifests/v1", `Bearer ${anonymous.token}`), null);
  const denied = await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${anonymous.token}`);
  t.match(denied?.message, /needs credentials, and the client sent none: log in to 127\.0\.0\.1:5000 \(containerd and BuildKit look up credentials by the exact host:port/);
});

t.test("mirror requests: rules apply to the upstream named by ?ns=", async (t) => {
  const clock = { now: Date.UTC(2030, 0, 1) };
  const ac = await accessControl(t, clock, [{ upstream: "other", repository: "**", pull: ["alice"] }]);
  const ci = await ac.issue({ kind: "identity", subject: "ci" }, [{ type: "repository", name: "app", actions: ["pull"] }]);
  t.equal(await refusal(ac, "/v2/app/manifests/v1", `Bearer ${ci.token}`), null, "ci may pull app from the default upstream");
  const err = await refusal(ac, "/v2/app/manifests/v1?ns=127.0.0.1:2", `Bearer ${ci.token}`);
  t.match(err?.message, /ci has no pull access/, "but the same name under upstream other is refused");
  const basic = await refusal(ac, "/v2/app/manifests/v1?ns=127.0.0.1:2", `Basic ${btoa("ci:robot-secret")}`);
  t.match(basic?.message, /ci has no pull access/, "and so are ci's Basic credentials");
  t.equal(await refusal(ac, "/v2/app/manifests/v1?ns=127.0.0.1:2", `Basic ${btoa("alice:wonderland")}`), null, "while alice's pass");
});

t.test("key rotation: old tokens work until they expire; then the retired key is refused", async (t) => {
  const clock = { now: Date.UTC(2030, 0, 1) };
  const ac = await accessControl(t, clock);
  const alice: Principal = { kind: "identity", subject: "alice" };
  const scope = [{ type: "repository", name: "team/app", actions: ["pull"] }];
  const before = (await ac.issue(alice, scope)).token;
  const oldKid = decodeProtectedHeader(before).kid;

  // Rotation through a second ring on the same KV, as `stowage keys rotate` (another process) does.
  const rotated = await new KeyRing(ac.kv, 360_000, () => clock.now).rotate();
  t.same(rotated.retired, [oldKid], "the old key is retired");
  clock.now += 11_000; // the server looks at KV again after 10 s
  const after = (await ac.issue(alice, scope)).token;
  t.equal(decodeProtectedHeader(after).kid, rotated.kid, "the new key signs new tokens");
  t.same((await ac.keys.jwks()).keys.map((k) => k.kid).sort(), [oldKid, rotated.kid].sort(), "JWKS publishes both keys");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${before}`), null, "a token signed before rotation still works");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${after}`), null, "and so does the new one");

  clock.now += 400_000; // beyond token lifetime (300 s) + skew (60 s) since the rotation
  const err = await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${before}`);
  t.match(err?.message, /retired key/, "a token of a rotated-out and expired key is refused");
  t.same((await ac.keys.jwks()).keys.map((k) => k.kid), [rotated.kid], "and the old key leaves the JWKS");
});

// ------------------------------------------------------- a real Stowage

/** An upstream that serves the same small manifest under tag v1 of every repository; `hits` lists what it was asked. */
async function fakeUpstream(t: Test): Promise<{ url: string; digest: string; hits: string[] }> {
  const up = await new FakeRegistry().start(t);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"a".repeat(64)}`, size: 2 },
      layers: [],
    }, null, 2),
  );
  const digest = sha256(manifest);
  up.on("v1", (req, res) => {
    res.writeHead(200, { "content-type": OCI_MANIFEST, "content-length": manifest.length, "docker-content-digest": digest });
    res.end(req.method === "HEAD" ? undefined : manifest);
  });
  return {
    url: up.url,
    digest,
    get hits() {
      return up.requests.map((s) => `${s.method} ${s.path}${s.search}`);
    },
  };
}

t.test("token endpoint and registry routes of a started Stowage", async (t) => {
  const upstream = await fakeUpstream(t);
  const { url: base, logs, dataDir } = await startInProcessStowage(t, ["--config", "$DIR/stowage.yaml", "--htpasswd", "$DIR/htpasswd", "--upstream", `local=${upstream.url}`], {
    files: {
      "htpasswd": `bob:${hash("builder").replace("$2b$", "$2y$")}\n`,
      "stowage.yaml": [
        "users:",
        `  - { name: alice, passwordHash: "${hash("wonderland")}" }`,
        "robots:",
        `  - { name: ci, secretHash: "${hash("robot-secret")}" }`,
        "rules:",
        "  - { repository: 'public/**', pull: [anonymous, '*'] }",
        "  - { upstream: local, repository: 'team/**', pull: [alice, ci] }",
      ].join("\n"),
    },
  });
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString("base64")}`;
  const token = async (query: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}/token?${query}`, { headers });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const post = async (form: Record<string, string | string[]>, headers: Record<string, string> = {}) => {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(form)) for (const one of [v].flat()) body.append(k, one);
    const res = await fetch(`${base}/token`, { method: "POST", body, headers });
    return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
  };
  const manifest = (name: string, tok: unknown, query = "") =>
    fetch(`${base}/v2/${name}/manifests/v1${query}`, { headers: { authorization: `Bearer ${String(tok)}`, accept: "application/vnd.oci.image.manifest.v1+json" } });
  const accessOf = (tok: unknown) => decodeJwt(String(tok)).access;
  const pullOf = (name: string) => ({ type: "repository", name, actions: ["pull"] });

  await t.test("challenges: /v2/ without scope, a repository with the name as the client wrote it", async (t) => {
    const v2 = await fetch(`${base}/v2/`);
    t.equal(v2.status, 401);
    t.equal(v2.headers.get("www-authenticate"), `Bearer realm="${base}/token",service="stowage"`);
    const head = await fetch(`${base}/v2/local/team/app/manifests/v1`, { method: "HEAD" });
    t.equal(head.status, 401);
    t.equal(head.headers.get("www-authenticate"), `Bearer realm="${base}/token",service="stowage",scope="repository:local/team/app:pull"`);
    t.same(upstream.hits, [], "nothing reached the upstream");
  });

  await t.test("anonymous GET without account (containerd, skopeo)", async (t) => {
    const denied = await token("scope=repository%3Alocal%2Fteam%2Fapp%3Apull&service=stowage");
    t.equal(denied.status, 200, "an empty grant is a token, not an error");
    t.same(accessOf(denied.body.token), [], "with no access");
    t.equal(denied.body.expires_in, 900);
    t.match(denied.body.issued_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, "issued_at is RFC 3339");
    t.equal(denied.body.refresh_token, undefined);
    const res = await manifest("local/team/app", denied.body.token);
    t.equal(res.status, 401, "the registry route then refuses");
    const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
    t.equal(body.errors[0]?.code, "UNAUTHORIZED");
    t.match(body.errors[0]?.message, /needs credentials.*exact host:port/);
    t.notOk(upstream.hits.some((h) => h.includes("team/app")), "the upstream was never asked for it");

    const open = await token("scope=repository%3Alocal%2Fpublic%2Fbase%3Apull&service=stowage&offline_token=true");
    t.same(accessOf(open.body.token), [pullOf("local/public/base")]);
    t.equal(open.body.refresh_token, undefined, "no refresh token without an identity");
    const pulled = await manifest("local/public/base", open.body.token);
    t.equal(pulled.status, 200);
    t.equal(pulled.headers.get("docker-content-digest"), upstream.digest);
  });

  await t.test("GET with Basic and account (skopeo --creds, docker, distribution)", async (t) => {
    // account names someone else: identity comes from the credentials only.
    const got = await token("account=bob&scope=repository:local/team/app:pull&scope=repository:local/misc/tool:pull&service=stowage", {
      authorization: basic("alice", "wonderland"),
    });
    t.equal(got.status, 200);
    t.equal(decodeJwt(String(got.body.token)).sub, "alice");
    t.same(accessOf(got.body.token), [pullOf("local/team/app"), pullOf("local/misc/tool")]);
    t.equal(got.body.token, got.body.access_token);
    const claims = decodeJwt(String(got.body.token));
    t.same(Object.keys(claims).sort(), ["access", "aud", "exp", "iat", "iss", "jti", "nbf", "sub"]);
    t.equal(typeof claims.aud, "string", "aud is a string");
    const res = await manifest("local/team/app", got.body.token);
    t.equal(res.status, 200);
    t.equal(res.headers.get("docker-content-digest"), upstream.digest);

    const bob = await token("scope=repository:local/team/app:pull&scope=repository:local/misc/tool:pull", { authorization: basic("bob", "builder") });
    t.same(accessOf(bob.body.token), [pullOf("local/misc/tool")], "htpasswd user: everything the rules do not reserve");

    const wrong = await token("scope=repository:local/team/app:pull", { authorization: basic("alice", "nope") });
    t.equal(wrong.status, 401);
    t.equal((wrong.body.errors as Array<{ code: string }>)[0]?.code, "UNAUTHORIZED");
    t.notMatch(JSON.stringify(wrong.body), /nope/, "the password is not echoed");
    t.notOk(logs.some((l) => l.includes("wonderland") || l.includes("builder")), "no password in the log");
  });

  await t.test("POST password grant with one space-joined scope field (containerd)", async (t) => {
    const got = await post({
      client_id: "containerd-client",
      grant_type: "password",
      username: "alice",
      password: "wonderland",
      scope: "repository:local/team/app:pull repository:local/team/lib:pull",
      service: "stowage",
    });
    t.equal(got.status, 200);
    t.same(accessOf(got.body.access_token), [pullOf("local/team/app"), pullOf("local/team/lib")]);
    t.equal(got.body.refresh_token, undefined);
    t.equal((await manifest("local/team/lib", got.body.access_token)).status, 200);

    const wrong = await post({ grant_type: "password", username: "alice", password: "nope", scope: "repository:local/team/app:pull" });
    t.equal(wrong.status, 401, "wrong password: 401, so containerd retries as GET and then fails");
    t.equal(wrong.body.error, "invalid_grant");
    const unknown = await post({ grant_type: "client_credentials", client_id: "x" });
    t.same([unknown.status, unknown.body.error], [400, "unsupported_grant_type"]);
    const missing = await post({ grant_type: "password", username: "alice" });
    t.same([missing.status, missing.body.error], [400, "invalid_request"]);
  });

  await t.test("refresh tokens: offline access, refresh_token grant (skopeo identity token), revocation", async (t) => {
    const offline = await post({ grant_type: "password", username: "ci", password: "robot-secret", access_type: "offline", scope: "repository:local/team/app:pull" });
    t.equal(offline.status, 200);
    const refresh = String(offline.body.refresh_token);
    t.match(refresh, /^[A-Za-z0-9_-]{43}$/);
    const viaGet = await token("offline_token=true&scope=repository:local/team/app:pull", { authorization: basic("alice", "wonderland") });
    t.type(viaGet.body.refresh_token, "string", "GET offline_token=true returns one too");

    const refreshed = await post({
      client_id: "containers/image",
      grant_type: "refresh_token",
      refresh_token: refresh,
      scope: ["repository:local/team/app:pull", "repository:local/public/base:pull"],
      service: "stowage",
    });
    t.equal(refreshed.status, 200);
    t.equal(decodeJwt(String(refreshed.body.token)).sub, "ci");
    t.same(accessOf(refreshed.body.token), [pullOf("local/team/app"), pullOf("local/public/base")]);
    t.equal((await manifest("local/team/app", refreshed.body.token)).status, 200);

    // As `stowage token revoke` opens it, beside the running server.
    const state = await openKvAt(nodeRuntime, { kind: "file", path: join(dataDir, "kv.sqlite3") });
    t.teardown(() => state.close());
    t.equal(await revokeRefreshTokens(new TypedKv(state), "ci"), 1, "stowage token revoke ci");
    const revoked = await post({ grant_type: "refresh_token", refresh_token: refresh, scope: "repository:local/team/app:pull" });
    t.same([revoked.status, revoked.body.error], [401, "invalid_grant"], "a revoked refresh token is refused");
    const aliceStill = await post({ grant_type: "refresh_token", refresh_token: String(viaGet.body.refresh_token) });
    t.equal(aliceStill.status, 200, "other identities' refresh tokens are untouched");

    // Rotation from another process: tokens issued before keep working.
    const before = String(refreshed.body.token);
    await rotateKeys(new TypedKv(state as unknown as Kv), 900);
    t.equal((await manifest("local/team/app", before)).status, 200, "a token from before `keys rotate` still works");
    const jwks = (await (await fetch(`${base}/token/jwks.json`)).json()) as { keys: Array<{ kid: string; d?: string }> };
    t.equal(jwks.keys.length, 2, "JWKS lists the new and the retired key");
    t.notOk(jwks.keys.some((k) => "d" in k), "and never a private part");
  });

  await t.test("hostile inputs at the token endpoint", async (t) => {
    const cases: Array<[string, () => Promise<{ status: number; body: Record<string, unknown> }>, number, string]> = [
      ["malformed scope", () => token("scope=repository::pull"), 400, "invalid_scope"],
      ["wrong service", () => token("service=elsewhere&scope=repository:a:pull"), 400, "invalid_request"],
      ["Basic !!!", () => token("scope=repository:a:pull", { authorization: "Basic !!!" }), 401, "invalid_client"],
      ["Bearer at the token endpoint", () => token("", { authorization: "Bearer a.b.c" }), 401, "invalid_client"],
      ["unknown user", () => token("", { authorization: basic("mallory", "x") }), 401, "invalid_grant"],
      ["huge password", () => token("", { authorization: basic("alice", "x".repeat(5000)) }), 401, "invalid_grant"],
      ["form of the wrong type", async () => {
        const res = await fetch(`${base}/token`, { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      }, 400, "invalid_request"],
      ["huge form", () => post({ grant_type: "password", username: "alice", password: "x".repeat(100_000) }), 413, "invalid_request"],
      ["form that is not UTF-8", async () => {
        const res = await fetch(`${base}/token`, { method: "POST", body: new Uint8Array([0x67, 0x3d, 0xff, 0xfe]), headers: { "content-type": "application/x-www-form-urlencoded" } });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      }, 400, "invalid_request"],
      ["empty form", () => post({}), 400, "unsupported_grant_type"],
      ["made-up refresh token", () => post({ grant_type: "refresh_token", refresh_token: "A".repeat(43) }), 401, "invalid_grant"],
      ["DELETE", async () => {
        const res = await fetch(`${base}/token`, { method: "DELETE" });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      }, 405, "invalid_request"],
    ];
    for (const [what, run, status, error] of cases) {
      const got = await run();
      t.same([got.status, got.body.error], [status, error], what);
    }
  });
});

// ------------------------------------------------ logins under attack

t.test("password checks: bounded queue, 429 when full, worker thread on Node", async (t) => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  let started = 0;
  const checks = new PasswordChecks(async () => {
    started++;
    await gate;
    return false;
  }, "inline", 1, 2);
  const first = [checks.compare("a", "h"), checks.compare("b", "h"), checks.compare("c", "h")];
  await t.rejects(checks.compare("d", "h"), { name: "PasswordChecksBusy" }, "one running and two waiting: the fourth is refused at once");
  t.equal(started, 1, "only one check runs at a time");
  t.equal(checks.pending, 3);
  release();
  t.same(await Promise.all(first), [false, false, false], "the waiting ones run once a slot is free");
  t.equal(checks.pending, 0);

  const workers = await PasswordChecks.workers(nodeRuntime.spawnWorker!);
  t.teardown(() => workers.close());
  t.equal(workers.mode, "worker");
  const h = hash("right");
  t.same(await Promise.all([workers.compare("right", h), workers.compare("wrong", h)]), [true, false], "the worker compares like bcrypt");
  if (process.platform === "linux") {
    // As `top -H` shows it: the checking thread runs below the serving threads' priority (field 19 of stat is nice).
    const nice = readdirSync("/proc/self/task").map((tid) => Number(readFileSync(`/proc/self/task/${tid}/stat`, "utf8").split(") ")[1]!.split(" ")[16]));
    t.ok(nice.includes(10), `a thread of this process runs at nice 10 (nice values: ${[...new Set(nice)].join(", ")})`);
    t.equal(nice[0], 0, "the main thread keeps its priority");
  }
});

t.test("remembered sign-ins: a changed hash or a removed user takes effect at once", async (t) => {
  let compares = 0;
  const counting = new PasswordChecks(async (secret, h) => {
    compares++;
    return bcrypt.compareSync(secret, h);
  }, "inline", 1, 8);
  const entry = (pw: string) => ({ name: "alice", kind: "user" as const, hash: hash(pw), source: "test" });
  const store = new IdentityStore([entry("old-pw")], counting);
  t.same(await store.verify("alice", "old-pw"), { subject: "alice", kind: "user" });
  t.same(await store.verify("alice", "old-pw"), { subject: "alice", kind: "user" });
  t.equal(compares, 1, "the second sign-in within a minute is remembered, no bcrypt");
  store.update([entry("new-pw")]);
  t.equal(await store.verify("alice", "old-pw"), null, "after a password change the old password fails");
  t.same(await store.verify("alice", "new-pw"), { subject: "alice", kind: "user" }, "and the new one works");
  t.equal(compares, 3, "both were checked afresh");
  store.update([]);
  t.equal(await store.verify("alice", "new-pw"), null, "a removed user cannot sign in with a remembered password");
});

t.test("unknown names cost no bcrypt, but take as long and queue like a real check", async (t) => {
  let compares = 0;
  const checks = new PasswordChecks(async (secret, h) => {
    compares++;
    await new Promise((r) => setTimeout(r, 120)); // a slow hash, as a high bcrypt cost would be
    return bcrypt.compareSync(secret, h);
  }, "inline", 1, 1);
  const store = new IdentityStore([{ name: "alice", kind: "user", hash: hash("right"), source: "test" }], checks);
  t.equal(await store.verify("alice", "wrong"), null, "a wrong password for a known name");
  t.equal(compares, 1, "was checked with bcrypt");

  const started = performance.now();
  t.equal(await store.verify("intruder-1", "guess"), null, "a made-up name fails");
  const took = performance.now() - started;
  t.equal(compares, 1, "without running bcrypt");
  t.ok(took >= 60, `and it took about as long as a real check (${took.toFixed(0)} ms; a real one here ≥ 120 ms, averaged with the first estimate)`);

  // It holds a slot while it waits: one running, one waiting, the third is refused, as for real checks.
  const held = [store.verify("intruder-2", "x"), store.verify("intruder-3", "x")];
  await t.rejects(store.verify("intruder-4", "x"), { name: "PasswordChecksBusy" }, "a full queue refuses unknown names too");
  t.same(await Promise.all(held), [null, null]);
  t.equal(compares, 1, "still no bcrypt for any of them");
});

t.test("login throttle: per address and per name, sliding window, trusted addresses, bounded", async (t) => {
  const cases: Array<[string, string]> = [
    ["127.0.0.1", "127.0.0.1"],
    ["::ffff:10.1.2.3", "10.1.2.3"],
    ["2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"],
    ["2001:db8:1:2::99", "2001:db8:1:2::/64"],
    ["2001:0db8::1", "2001:db8:0:0::/64"],
    ["[fe80::1%eth0]", "fe80:0:0:0::/64"],
    ["::1", "0:0:0:0::/64"],
  ];
  for (const [address, key] of cases) t.equal(clientKey(address), key, address);

  const clock = { now: 1_000_000 };
  const throttle = new LoginThrottle({ ...DEFAULT_LIMITS, perAddress: 4, perUser: 3, maxRecords: 50 }, () => clock.now);
  throttle.succeeded("10.0.0.1", "alice");
  for (let i = 0; i < 3; i++) {
    t.equal(throttle.check("10.0.0.9", "alice"), null, `failure ${i + 1} is still checked`);
    throttle.failed("10.0.0.9", "alice");
    clock.now += 1000;
  }
  t.match(throttle.check("10.0.0.9", "alice"), { retryAfterSeconds: 57, message: /too many failed sign-ins as "alice"; try again in 57 s/ });
  t.match(throttle.check("10.0.0.8", "alice"), { retryAfterSeconds: 57 }, "the name is refused from a new address too");
  t.equal(throttle.check("10.0.0.1", "alice"), null, "but not from an address that signed in as alice");
  t.equal(throttle.check("10.0.0.8", "bob"), null, "other names are not affected");
  t.equal(throttle.check("10.0.0.9", null), null, "nor CI tokens from the same address (not guessable)");
  throttle.failed("10.0.0.9", "bob");
  t.match(throttle.check("10.0.0.9", "carol"), { message: /too many failed sign-ins from 10\.0\.0\.9/ }, "the fourth failure from one address blocks the address");
  clock.now += 58_000;
  t.equal(throttle.check("10.0.0.8", "alice"), null, "once the oldest failure left the window, one more try");

  const leaves = [throttle.enter("10.0.0.7"), throttle.enter("10.0.0.7"), throttle.enter("10.0.0.7"), throttle.enter("10.0.0.7")];
  t.ok(leaves.every((l) => l !== null), "four checks at once from one address");
  t.equal(throttle.enter("10.0.0.7"), null, "a fifth waits for none: refused");
  leaves[0]!();
  leaves[0]!();
  t.not(throttle.enter("10.0.0.7"), null, "a slot is free again (released once, however often called)");
  t.equal(throttle.enter("10.0.0.7"), null);

  for (let i = 0; i < 500; i++) throttle.failed(`10.1.${i >> 8}.${i & 255}`, `user${i}`);
  t.equal(throttle.check("10.1.1.243", "user499"), null, "records stay bounded (the newest kept; one failure is no block)");
});

/** A request from a chosen loopback address (the throttle tells clients apart by it). */
function call(
  url: string,
  opts: { from?: string; method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? "GET", headers: opts.headers, localAddress: opts.from ?? "127.0.0.1" }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: performance.now() - started }));
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

t.test("sign-ins of a started Stowage under attack: worker thread, throttling, mirror realms", async (t) => {
  const local = await fakeUpstream(t);
  const ghcr = await fakeUpstream(t);
  const stowage = await startInProcessStowage(t, ["--config", "$DIR/stowage.yaml", "--upstream", `local=${local.url}`, "--upstream", `ghcr.io=${ghcr.url}`], {
    files: {
      "stowage.yaml": [
        "accessControl: true",
        "users:",
        ...[["alice", "wonderland"], ["bob", "builder"], ["carol", "carol-pw"], ["xavier", "x-pw"]].map(([n, p]) => `  - { name: ${n}, passwordHash: "${hash(p!)}" }`),
        "rules:",
        "  - { upstream: ghcr.io, repository: '**', pull: [xavier] }",
        "  - { upstream: '*', repository: '**', pull: [alice, bob, carol] }",
      ].join("\n"),
    },
    logLevel: "info",
  });
  const { url: base, logs } = stowage;
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString("base64")}`;

  t.ok(
    logs.some((l) => /access control is on without --public-url: .*follows each request's Host header.*set --public-url/.test(l) && l.includes('"level":"warn"')),
    "start-up warns that the realm follows the Host header without --public-url, and what to do",
  );

  await t.test("40 parallel failed logins do not stall /healthz", async (t) => {
    // Unknown names: each costs a full bcrypt (cost 10, ~0.1 s here) against the decoy hash.
    let maxGap = 0;
    let last = performance.now();
    const probe = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
    }, 5);
    const attack = Promise.all(
      Array.from({ length: 40 }, (_, i) => call(`${base}/v2/`, { from: `127.0.1.${10 + (i % 10)}`, headers: { authorization: basic(`nobody-${i}`, "guess") } })),
    );
    let done = false;
    const health: number[] = [];
    void attack.finally(() => (done = true));
    while (!done) {
      const res = await call(`${base}/healthz`);
      t.equal(res.status, 200);
      health.push(res.ms);
      await new Promise((r) => setTimeout(r, 50));
    }
    const answers = await attack;
    clearInterval(probe);
    const worst = Math.max(...health);
    const statuses = answers.map((a) => a.status);
    const refused = statuses.filter((s) => s === 401).length;
    t.ok(statuses.every((s) => s === 401 || s === 429), "every failed login is a 401, or a 429 once the check queue is full");
    t.ok(refused >= 20, `most were checked (${refused} 401s): the attack did cost bcrypt time`);
    t.ok(health.length >= 5, `/healthz was asked ${health.length} times during the attack`);
    // On the event loop, 40 bcrypts held /healthz for 5.7 s here (bcryptjs yields between rounds,
    // so the loop's longest single stall, ~0.4 s, says less than a request's wait).
    t.ok(worst < 1500, `/healthz answered within ${worst.toFixed(0)} ms at worst during the attack`);
    t.comment(`longest event-loop stall during the attack: ${maxGap.toFixed(0)} ms`);
    const busy = answers.find((a) => a.status === 429);
    if (busy) {
      t.equal(busy.headers["retry-after"], "1", "a full queue says: again in a second");
      t.match(JSON.parse(busy.body), { errors: [{ code: "TOOMANYREQUESTS", message: /too many sign-ins are waiting/ }] });
    }
  });

  await t.test("failed sign-ins are throttled per name and per address, with 429 and Retry-After", async (t) => {
    const token = (from: string, user: string, pw: string, query = "scope=repository:team/app:pull&service=stowage") =>
      call(`${base}/token?${query}`, { from, headers: { authorization: basic(user, pw) } });
    t.equal((await token("127.0.0.1", "bob", "builder")).status, 200, "bob signs in from his usual machine");
    for (let i = 0; i < 5; i++) t.equal((await token("127.0.0.3", "bob", `guess-${i}`)).status, 401, `guess ${i + 1} for bob: 401`);

    const throttled = await token("127.0.0.3", "bob", "guess-5");
    t.equal(throttled.status, 429, "the sixth guess within a minute: 429");
    const after = Number(throttled.headers["retry-after"]);
    t.ok(Number.isInteger(after) && after >= 1 && after <= 60, `with Retry-After (${throttled.headers["retry-after"]})`);
    t.match(JSON.parse(throttled.body), { errors: [{ code: "TOOMANYREQUESTS", message: /too many failed sign-ins as "bob"; try again in \d+ s/ }] });
    t.notMatch(throttled.body, /guess/, "the password is not echoed");

    const right = await token("127.0.0.3", "bob", "builder");
    t.equal(right.status, 429, "even the right password gets no answer from the guessing address: nothing is checked");
    const registry = await call(`${base}/v2/team/app/manifests/v1`, { from: "127.0.0.3", headers: { authorization: basic("bob", "builder") } });
    t.equal(registry.status, 429, "registry routes with Basic credentials are throttled the same way");
    t.ok(registry.headers["retry-after"], "with Retry-After");
    t.match(JSON.parse(registry.body), { errors: [{ code: "TOOMANYREQUESTS" }] });
    const form = new URLSearchParams({ grant_type: "password", username: "bob", password: "builder", scope: "repository:team/app:pull" });
    const posted = await call(`${base}/token`, { from: "127.0.0.3", method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: form.toString() });
    t.equal(posted.status, 429, "and the POST password grant");
    t.match(JSON.parse(posted.body), { errors: [{ code: "TOOMANYREQUESTS" }] });

    t.equal((await token("127.0.0.1", "bob", "builder")).status, 200, "bob still signs in from the machine he used before");
    t.equal((await token("127.0.0.4", "carol", "carol-pw")).status, 200, "others sign in from other addresses as usual");
    t.equal((await token("127.0.0.4", "bob", "builder")).status, 429, "bob from a machine never used before waits out the window (the price of the per-name limit)");

    for (let i = 0; i < 10; i++) t.equal((await token("127.0.0.5", `made-up-${i}`, "x")).status, 401);
    const address = await token("127.0.0.5", "carol", "carol-pw");
    t.equal(address.status, 429, "ten failures from one address under ten names: the address is refused");
    t.match(JSON.parse(address.body), { errors: [{ message: /too many failed sign-ins from 127\.0\.0\.5/ }] });
    t.equal((await token("127.0.0.6", "carol", "carol-pw")).status, 200, "carol from elsewhere is not");
    const warned = logs.filter((l) => l.includes('"msg":"too many failed sign-ins')).map((l) => JSON.parse(l) as { level: string; address?: string; user?: string });
    t.same(
      warned.map((w) => [w.level, w.user, w.address]),
      [["warn", "bob", "127.0.0.3"], ["warn", undefined, "127.0.0.5"]],
      "the log says once per block which name or address is refused (not once per refusal)",
    );
  });

  await t.test("mirror mode: the challenge realm carries ?ns=, and /token grants by that upstream's rules", async (t) => {
    const path = "/v2/team/app/manifests/v1?ns=ghcr.io";
    const challenged = await call(`${base}${path}`);
    t.equal(challenged.status, 401);
    const challenge = parseWwwAuthenticate(String(challenged.headers["www-authenticate"]))[0];
    t.same(challenge?.params, { realm: `${base}/token?ns=ghcr.io`, service: "stowage", scope: "repository:team/app:pull" }, "the realm names the mirrored registry");

    // As containerd and skopeo do: the realm's own query is kept, scope and service added to it.
    const realm = new URL(challenge!.params.realm!);
    realm.searchParams.set("scope", challenge!.params.scope!);
    realm.searchParams.set("service", "stowage");
    const got = await call(realm.href, { headers: { authorization: basic("xavier", "x-pw") } });
    t.equal(got.status, 200);
    const tok = String(JSON.parse(got.body).token);
    t.same(decodeJwt(tok).access, [{ type: "repository", name: "team/app", actions: ["pull"] }], "xavier, allowed only on ghcr.io, gets pull");
    const withoutNs = await call(`${base}/token?scope=repository:team/app:pull&service=stowage`, { headers: { authorization: basic("xavier", "x-pw") } });
    t.same(decodeJwt(String(JSON.parse(withoutNs.body).token)).access, [], "while the same scope without ns (the default upstream) is not granted");

    const pulled = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${tok}`, accept: "application/vnd.oci.image.manifest.v1+json" } });
    t.equal(pulled.status, 200, "the mirror request with that token passes");
    t.equal(pulled.headers.get("docker-content-digest"), ghcr.digest);
    t.ok(ghcr.hits.some((h) => h.includes("/v2/team/app/manifests/v1")), "served from the ghcr.io upstream");
    t.notOk(local.hits.some((h) => h.includes("team/app")), "not from the default one");

    const form = new URLSearchParams({ grant_type: "password", username: "xavier", password: "x-pw", scope: "repository:team/app:pull", service: "stowage" });
    const posted = await call(challenge!.params.realm!, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: form.toString() });
    t.same(decodeJwt(String(JSON.parse(posted.body).access_token)).access, [{ type: "repository", name: "team/app", actions: ["pull"] }], "the POST form to the realm too (containerd)");

    const unknown = await call(`${base}/v2/team/app/manifests/v1?ns=registry.evil.example`);
    t.equal(parseWwwAuthenticate(String(unknown.headers["www-authenticate"]))[0]?.params.realm, `${base}/token`, "an ns we do not mirror is never echoed into the realm");
  });
});

t.test("the realm comes from --public-url when set, whatever the Host header says", async (t) => {
  const raw = (await openKv(":memory:")) as unknown as Kv;
  t.teardown(() => raw.close());
  const access: AccessConfig = { service: "stowage", issuer: "stowage", tokenTtlSeconds: 300, identities: [], rules: [], oidc: [], admins: [] };
  const ac = new AccessControl({ access, upstreams: [LOCAL, OTHER], defaultUpstream: "local", publicUrl: "https://cache.example.com", kv: new TypedKv(raw) });
  const realmOf = (url: string) => parseWwwAuthenticate(ac.challenge(new URL(url), "app"))[0]?.params.realm;
  t.equal(realmOf("http://attacker.example/v2/app/manifests/v1"), "https://cache.example.com/token");
  t.equal(realmOf("http://attacker.example/v2/app/manifests/v1?ns=127.0.0.1:2"), "https://cache.example.com/token?ns=127.0.0.1%3A2");
});

t.test("access control off: no token service, anonymous pulls as before", async (t) => {
  const upstream = await fakeUpstream(t);
  const server = await startInProcessStowage(t, ["--upstream", `local=${upstream.url}`], { logLevel: "error" });
  t.equal((await fetch(`${server.url}/v2/`)).status, 200);
  t.equal((await fetch(`${server.url}/v2/local/team/app/manifests/v1`)).status, 200);
  const tokenRes = await fetch(`${server.url}/token?scope=repository:a:pull`);
  t.equal(tokenRes.status, 404);
  t.match(await tokenRes.text(), /access control is off/);
});

// ------------------------------------------------------------ CI federation

t.test("OIDC federation: a CI id_token as the password, verified against the issuer's JWKS", async (t) => {
  const { privateKey, publicKey } = await generateKeyPair("RS256");
  const stranger = await generateKeyPair("RS256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "ci-key", alg: "RS256", use: "sig" };
  let jwksFetches = 0;
  const issuerServer = await startHttpServer(t, (req, res) => {
    if (req.url === "/.well-known/openid-configuration") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ issuer: issuerUrl, jwks_uri: `${issuerUrl}/keys` }));
    } else if (req.url === "/keys") {
      jwksFetches++;
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] }));
    } else res.writeHead(404).end();
  });
  const issuerUrl = issuerServer.url;

  const clock = { now: Date.now() };
  const ac = await accessControl(
    t,
    clock,
    [{ upstream: "*", repository: "team/**", pull: ["github-ci"] }],
    [{ issuer: issuerUrl, audience: "https://cache.example.com", jwksUrl: null, identity: "github-ci", claims: { repository_owner: "my-org", ref: "refs/heads/**" } }],
  );
  const nowS = Math.floor(clock.now / 1000);
  const ciClaims = { iss: issuerUrl, aud: "https://cache.example.com", sub: "repo:my-org/app:ref:refs/heads/main", repository_owner: "my-org", ref: "refs/heads/main", iat: nowS, nbf: nowS, exp: nowS + 300 };
  const idToken = (over: Record<string, unknown> = {}, key: CryptoKey = privateKey, header: Record<string, unknown> = { alg: "RS256", kid: "ci-key" }) =>
    new SignJWT({ ...ciClaims, ...over }).setProtectedHeader(header as { alg: string }).sign(key);
  const ask = async (password: string, extra: Record<string, string> = {}) => {
    const body = new URLSearchParams({ grant_type: "password", username: "github-actions", password, scope: "repository:team/app:pull", ...extra });
    const res = await handleTokenRequest(ac, new Request(`${ORIGIN}/token`, { method: "POST", body }), new URL(`${ORIGIN}/token`), createLogger("error", () => {}));
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  const good = await ask(await idToken(), { access_type: "offline" });
  t.equal(good.status, 200, "a CI token of the configured issuer, audience and claims signs in");
  t.equal(decodeJwt(String(good.body.token)).sub, "github-ci", "as the configured identity");
  t.same(decodeJwt(String(good.body.token)).access, [{ type: "repository", name: "team/app", actions: ["pull"] }], "with what the rules give it");
  t.equal(good.body.refresh_token, undefined, "and no refresh token: CI tokens are short-lived on purpose");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Bearer ${String(good.body.token)}`), null, "the registry accepts the issued token");
  t.equal(await refusal(ac, "/v2/team/app/manifests/v1", `Basic ${btoa(`x:${await idToken()}`)}`), null, "and the CI token as Basic password");

  const hostile: Array<[string, Promise<string>]> = [
    ["another audience", idToken({ aud: "someone-else" })],
    ["another branch", idToken({ ref: "refs/pull/1/merge" })],
    ["another organisation", idToken({ repository_owner: "evil-org" })],
    ["claim missing", idToken({ repository_owner: undefined })],
    ["expired", idToken({ exp: nowS - 120 })],
    ["unknown issuer", idToken({ iss: "https://evil.example.com" })],
    ["signed with a key the issuer did not publish", idToken({}, stranger.privateKey)],
    ["alg none", Promise.resolve(`${base64url.encode(JSON.stringify({ alg: "none" }))}.${base64url.encode(JSON.stringify(ciClaims))}.`)],
    ["HS256 keyed with the published key", new SignJWT(ciClaims).setProtectedHeader({ alg: "HS256", kid: "ci-key" }).sign(new TextEncoder().encode(JSON.stringify(jwk)))],
  ];
  for (const [what, token] of hostile) {
    const got = await ask(await token);
    t.same([got.status, got.body.error], [401, "invalid_grant"], `${what}: refused`);
  }
  t.ok(jwksFetches >= 1 && jwksFetches <= 3, `the JWKS was fetched and cached (${jwksFetches} fetches)`);
});

t.test("operator commands: token create, user hash, keys rotate, token revoke", async (t) => {
  const { parseCommand } = await import("../../src/cli.ts");
  const { createRobotToken, hashPassword } = await import("../../src/auth/admin.ts");
  const noFile = () => {
    throw new Error("no file");
  };
  t.same(parseCommand(["token", "create", "ci-bot"], {}, noFile), { kind: "token-create", name: "ci-bot" });
  t.same(parseCommand(["user", "hash"], {}, noFile), { kind: "user-hash" });
  t.match(parseCommand(["keys", "rotate", "--data-dir", "/tmp/x"], {}, noFile), { kind: "keys-rotate", config: { dataDir: "/tmp/x" } });
  t.match(parseCommand(["token", "revoke", "alice", "--data-dir", "/tmp/x"], {}, noFile), { kind: "token-revoke", name: "alice" });
  t.throws(() => parseCommand(["token", "create"], {}, noFile), /needs a NAME/);
  t.throws(() => parseCommand(["token", "create", "anonymous"], {}, noFile), /invalid name/);
  t.throws(() => parseCommand(["token", "create", "a b"], {}, noFile), /invalid name/);
  t.throws(() => parseCommand(["user", "hash", "pw-in-argv"], {}, noFile), /standard input/);
  t.throws(() => parseCommand(["keys", "burn"], {}, noFile), /unknown command "stowage keys burn"/);

  const { secret, snippet } = await createRobotToken("ci-bot");
  t.match(secret, /^[A-Za-z0-9_-]{43}$/, "a 256-bit random secret");
  t.notMatch(snippet, secret, "the config snippet does not contain the secret");
  const dir = await mkdtemp(join(tmpdir(), "stowage-auth-cli-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "stowage.yaml"), snippet);
  const config = loadConfig({ argv: ["--config", join(dir, "stowage.yaml"), "--access-control", "on"], env: {}, readFile: (p) => readFileSync(p, "utf8") });
  const robot = config.access?.identities[0];
  t.same([robot?.name, robot?.kind], ["ci-bot", "robot"], "the printed snippet is a valid config file");
  t.ok(robot && bcrypt.compareSync(secret, robot.hash), "and its hash matches the printed secret");

  const hashed = await hashPassword("s3cret\n");
  t.ok(bcrypt.compareSync("s3cret", hashed), "user hash: the first line of stdin, without the newline");
  await t.rejects(hashPassword(""), /no password on standard input/);
});
