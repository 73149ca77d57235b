import t from "tap";
import type { Config } from "../../src/config/types.ts";
import { redactedConfig } from "../../src/config/redact.ts";
import { type Env, errorOf, load } from "../support/config-sources.ts";

const SECRET = "hunter2";

const DOCKER_HUB = {
  name: "docker.io",
  url: "https://registry-1.docker.io",
  host: "registry-1.docker.io",
  aliases: ["docker.io", "index.docker.io", "registry-1.docker.io"],
  dockerHub: true,
  allowPrivateNetwork: false,
};

t.test("defaults", async (t) => {
  t.same(load([]), {
    listen: { hostname: "127.0.0.1", port: 5000 },
    dataDir: "./data",
    upstreams: [DOCKER_HUB],
    defaultUpstream: "docker.io",
    publicUrl: null,
    tagTtlSeconds: 60,
    upstreamTimeoutSeconds: 30,
    upstreamConcurrency: 32,
    clientTimeoutSeconds: 300,
    logLevel: "info",
    storage: { kind: "fs" },
    kv: null,
    hashWorkers: 2,
    resolve: [],
    maxBlobBytes: 32 * 1024 ** 3,
    diskReserveBytes: 512 * 1024 ** 2,
    metricsListen: null,
    offline: false,
    cacheTtlSeconds: null,
    maxSizeBytes: null,
    gcIntervalSeconds: 3600,
    gcGraceSeconds: 600,
    adminPage: "loopback",
  });
});

t.test("each flag, in both --flag value and --flag=value form", async (t) => {
  const cases: Array<[string, string, Partial<Config>]> = [
    ["--listen", "0.0.0.0:8080", { listen: { hostname: "0.0.0.0", port: 8080 } }],
    ["--listen", ":5001", { listen: { hostname: "0.0.0.0", port: 5001 } }],
    ["--listen", "[::1]:5002", { listen: { hostname: "::1", port: 5002 } }],
    ["--listen", "localhost:65535", { listen: { hostname: "localhost", port: 65535 } }],
    ["--data-dir", "/var/lib/stowage", { dataDir: "/var/lib/stowage" }],
    ["--data-dir", "relative/dir", { dataDir: "relative/dir" }],
    ["--public-url", "https://cache.example.com/", { publicUrl: "https://cache.example.com" }],
    ["--public-url", "http://10.0.0.1:8080", { publicUrl: "http://10.0.0.1:8080" }],
    ["--tag-ttl", "90", { tagTtlSeconds: 90 }],
    ["--tag-ttl", "90s", { tagTtlSeconds: 90 }],
    ["--tag-ttl", "5m", { tagTtlSeconds: 300 }],
    ["--tag-ttl", "1h", { tagTtlSeconds: 3600 }],
    ["--tag-ttl", "1h30m", { tagTtlSeconds: 5400 }],
    ["--tag-ttl", "0", { tagTtlSeconds: 0 }],
    ["--upstream-timeout", "2m", { upstreamTimeoutSeconds: 120 }],
    ["--upstream-concurrency", "8", { upstreamConcurrency: 8 }],
    ["--client-timeout", "2m", { clientTimeoutSeconds: 120 }],
    ["--log-level", "debug", { logLevel: "debug" }],
    ["--log-level", "WARN", { logLevel: "warn" }],
    ["--default-upstream", "docker.io", { defaultUpstream: "docker.io" }],
    ["--storage", "fs", { storage: { kind: "fs" } }],
    ["--storage", "s3://my-bucket", { storage: { kind: "s3", bucket: "my-bucket", prefix: "", endpoint: null, region: "us-east-1" } }],
    [
      "--storage",
      "s3://cache.bucket/a/b/?endpoint=http://127.0.0.1:7480/&region=eu-west-1",
      { storage: { kind: "s3", bucket: "cache.bucket", prefix: "a/b", endpoint: "http://127.0.0.1:7480", region: "eu-west-1" } },
    ],
    ["--kv", "/shared/stowage/kv.sqlite3", { kv: { kind: "file", path: "/shared/stowage/kv.sqlite3" } }],
    ["--kv", ":memory:", { kv: { kind: "memory" } }],
    ["--kv", "default", { kv: { kind: "platform" } }],
    ["--kv", "https://kv.example.com/api/databases/0f6e", { kv: { kind: "remote", url: "https://kv.example.com/api/databases/0f6e" } }],
    ["--hash-workers", "0", { hashWorkers: 0 }],
    ["--hash-workers", "4", { hashWorkers: 4 }],
    ["--max-blob-size", "64GiB", { maxBlobBytes: 64 * 1024 ** 3 }],
    ["--max-blob-size", "1.5GB", { maxBlobBytes: 1_500_000_000 }],
    ["--max-blob-size", "10485760", { maxBlobBytes: 10_485_760 }],
    ["--disk-reserve", "0", { diskReserveBytes: 0 }],
    ["--disk-reserve", "5 GiB", { diskReserveBytes: 5 * 1024 ** 3 }],
    ["--metrics-listen", "127.0.0.1:9090", { metricsListen: { hostname: "127.0.0.1", port: 9090 } }],
    ["--resolve", "registry.internal:443:10.0.0.5", { resolve: [{ host: "registry.internal", port: 443, address: "10.0.0.5" }] }],
    ["--resolve", "Auth.Hub.Test:8443:[::1]", { resolve: [{ host: "auth.hub.test", port: 8443, address: "::1" }] }],
  ];
  for (const [flag, value, expected] of cases) {
    t.match(load([flag, value]), expected, `${flag} ${value}`);
    t.match(load([`${flag}=${value}`]), expected, `${flag}=${value}`);
  }
  const c = load(["--upstream=ghcr.io=https://ghcr.io/", "--upstream", "local=http://127.0.0.1:5001/prefix/"]);
  t.same(
    c.upstreams.map((u) => [u.name, u.url, u.host, u.aliases, u.dockerHub]),
    [
      ["ghcr.io", "https://ghcr.io", "ghcr.io", ["ghcr.io"], false],
      ["local", "http://127.0.0.1:5001/prefix", "127.0.0.1:5001", ["127.0.0.1:5001"], false],
    ],
    "--upstream is repeatable and replaces the built-in default",
  );
  t.equal(c.defaultUpstream, "ghcr.io", "the first upstream is the default");
  t.equal(load(["--log-level", "warn", "--log-level", "error"]).logLevel, "error", "last repeated flag wins");
});

t.test("environment variables", async (t) => {
  const c = load([], {
    STOWAGE_LISTEN: ":6000",
    STOWAGE_DATA_DIR: "/srv/cache",
    STOWAGE_UPSTREAMS: "ghcr.io=https://ghcr.io, quay.io=https://quay.io\n docker.io=https://index.docker.io",
    STOWAGE_UPSTREAM_CREDENTIALS: "ghcr.io=bot:p,a:s=s\n  docker.io=me:x",
    STOWAGE_DEFAULT_UPSTREAM: "quay.io",
    STOWAGE_PUBLIC_URL: "https://cache.example.com",
    STOWAGE_TAG_TTL: "10m",
    STOWAGE_UPSTREAM_TIMEOUT: "45s",
    STOWAGE_LOG_LEVEL: "error",
  });
  t.same(c.listen, { hostname: "0.0.0.0", port: 6000 });
  t.equal(c.dataDir, "/srv/cache");
  t.same(c.upstreams.map((u) => u.name), ["ghcr.io", "quay.io", "docker.io"]);
  t.same(c.upstreams[0]?.credentials, { username: "bot", password: "p,a:s=s" }, "password may hold , : =");
  t.same(c.upstreams[2]?.credentials, { username: "me", password: "x" });
  t.equal(c.upstreams[1]?.credentials, undefined);
  t.equal(c.defaultUpstream, "quay.io");
  t.equal(c.publicUrl, "https://cache.example.com");
  t.equal(c.tagTtlSeconds, 600);
  t.equal(c.upstreamTimeoutSeconds, 45);
  t.equal(c.logLevel, "error");
  t.same(load([], { STOWAGE_LISTEN: "", STOWAGE_PUBLIC_URL: "  " }).listen, { hostname: "127.0.0.1", port: 5000 }, "blank variables count as unset");
});

const YAML_FILE = `
# comment
listen: "[::]:7000"
dataDir: /data
defaultUpstream: ghcr.io
publicUrl: https://cache.example.com
tagTtl: 2m
upstreamTimeout: 10
logLevel: warn
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
    username: hubuser
    password: "s:e=c,r et"
  - name: ghcr.io
    url: https://ghcr.io
    username: gh
    passwordEnv: GH_TOKEN
  - name: local
    url: http://127.0.0.1:5001
    username: admin
    passwordFile: /run/secrets/local
`;

const JSON_FILE = JSON.stringify({
  listen: "127.0.0.2:7001",
  tagTtl: 0,
  upstreams: [{ name: "quay.io", url: "https://quay.io" }],
});

t.test("config file: YAML and JSON", async (t) => {
  const files = { "/etc/stowage.yaml": YAML_FILE, "/run/secrets/local": "  file-pass\n" };
  const c = load(["--config", "/etc/stowage.yaml"], { GH_TOKEN: "gh-token" }, files);
  t.same(c, {
    listen: { hostname: "::", port: 7000 },
    dataDir: "/data",
    upstreams: [
      { ...DOCKER_HUB, credentials: { username: "hubuser", password: "s:e=c,r et" } },
      {
        name: "ghcr.io",
        url: "https://ghcr.io",
        host: "ghcr.io",
        aliases: ["ghcr.io"],
        dockerHub: false,
        allowPrivateNetwork: false,
        credentials: { username: "gh", password: "gh-token" },
      },
      {
        name: "local",
        url: "http://127.0.0.1:5001",
        host: "127.0.0.1:5001",
        aliases: ["127.0.0.1:5001"],
        dockerHub: false,
        allowPrivateNetwork: false,
        credentials: { username: "admin", password: "file-pass" },
      },
    ],
    defaultUpstream: "ghcr.io",
    publicUrl: "https://cache.example.com",
    tagTtlSeconds: 120,
    upstreamTimeoutSeconds: 10,
    upstreamConcurrency: 32,
    clientTimeoutSeconds: 300,
    logLevel: "warn",
    storage: { kind: "fs" },
    kv: null,
    hashWorkers: 2,
    resolve: [],
    maxBlobBytes: 32 * 1024 ** 3,
    diskReserveBytes: 512 * 1024 ** 2,
    metricsListen: null,
    offline: false,
    cacheTtlSeconds: null,
    maxSizeBytes: null,
    gcIntervalSeconds: 3600,
    gcGraceSeconds: 600,
    adminPage: "loopback",
  });

  const j = load([], { STOWAGE_CONFIG: "s.json" }, { "s.json": JSON_FILE });
  t.same(j.listen, { hostname: "127.0.0.2", port: 7001 });
  t.equal(j.tagTtlSeconds, 0);
  t.same(j.upstreams.map((u) => u.name), ["quay.io"]);
  t.equal(j.defaultUpstream, "quay.io");

  t.same(load(["--config=empty.yaml"], {}, { "empty.yaml": "# nothing yet\n" }), load([]), "an empty file means defaults");
  t.equal(
    load(["--config", "a.yaml"], { STOWAGE_CONFIG: "b.yaml" }, { "a.yaml": "tagTtl: 1", "b.yaml": "tagTtl: 2" }).tagTtlSeconds,
    1,
    "--config beats STOWAGE_CONFIG",
  );
});

t.test("precedence: flags > environment > file > defaults", async (t) => {
  const files = { "c.yaml": "listen: 127.0.0.1:1001\ndataDir: /file\nlogLevel: debug\ntagTtl: 1\n" };
  const env = { STOWAGE_CONFIG: "c.yaml", STOWAGE_LISTEN: "127.0.0.1:1002", STOWAGE_DATA_DIR: "/env" };
  const c = load(["--listen", "127.0.0.1:1003"], env, files);
  t.equal(c.listen.port, 1003, "flag beats env and file");
  t.equal(c.dataDir, "/env", "env beats file");
  t.equal(c.logLevel, "debug", "file beats default");
  t.equal(c.tagTtlSeconds, 1);
  t.equal(c.upstreamTimeoutSeconds, 30, "default when no source sets it");
});

t.test("upstream merging and credentials across sources", async (t) => {
  const files = {
    "c.yaml": `
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
  - name: ghcr.io
    url: https://ghcr.io
    username: file-user
    password: file-pass
`,
  };
  const env = {
    STOWAGE_CONFIG: "c.yaml",
    STOWAGE_UPSTREAMS: "ghcr.io=https://ghcr-mirror.example.com,quay.io=https://quay.io",
    STOWAGE_UPSTREAM_CREDENTIALS: "docker.io=env-user:env:pa=ss",
  };
  const c = load(
    ["--upstream", "quay.io=https://quay-mirror.example.com", "--upstream", "local=http://localhost:5001",
      "--upstream-credentials", "ghcr.io=flag-user:a:b=c,d"],
    env,
    files,
  );
  t.same(
    c.upstreams.map((u) => [u.name, u.url]),
    [
      ["docker.io", "https://registry-1.docker.io"],
      ["ghcr.io", "https://ghcr-mirror.example.com"],
      ["quay.io", "https://quay-mirror.example.com"],
      ["local", "http://localhost:5001"],
    ],
    "same name replaces the URL in place; new names append",
  );
  t.equal(c.defaultUpstream, "docker.io");
  t.same(c.upstreams[0]?.credentials, { username: "env-user", password: "env:pa=ss" });
  t.same(c.upstreams[1]?.credentials, { username: "flag-user", password: "a:b=c,d" }, "flag credentials replace file credentials");
  t.equal(c.upstreams[3]?.credentials, undefined);

  const onDefault = load(["--upstream-credentials", "docker.io=u:p"]);
  t.same(onDefault.upstreams[0]?.credentials, { username: "u", password: "p" }, "credentials attach to the built-in default");
});

t.test("Docker Hub detection", async (t) => {
  const cases: Array<[string, boolean, string[]]> = [
    ["https://registry-1.docker.io", true, ["docker.io", "index.docker.io", "registry-1.docker.io"]],
    ["https://index.docker.io/", true, ["docker.io", "index.docker.io", "registry-1.docker.io"]],
    ["https://docker.io", true, ["docker.io", "index.docker.io", "registry-1.docker.io"]],
    ["https://mirror.gcr.io", false, ["mirror.gcr.io"]],
    ["https://registry-1.docker.io:8443", false, ["registry-1.docker.io:8443"]],
    ["https://HUB.Example.COM:443/", false, ["hub.example.com"]],
  ];
  for (const [url, dockerHub, aliases] of cases) {
    const u = load(["--upstream", `hub=${url}`]).upstreams[0];
    t.equal(u?.dockerHub, dockerHub, `${url} dockerHub`);
    t.same(u?.aliases, aliases, `${url} aliases`);
    t.ok(u && u.aliases.includes(u.host), `${url} aliases include the host`);
  }
});

t.test("bad inputs: one-line messages naming the setting, never the password", async (t) => {
  const withSecret = { STOWAGE_UPSTREAM_CREDENTIALS: `docker.io=user:${SECRET}` };
  const cases: Array<{ name: string; argv?: string[]; env?: Env; files?: Record<string, string>; starts: string; has?: string }> = [
    { name: "bad listen", argv: ["--listen", "abc"], starts: "--listen:", has: '"abc"' },
    { name: "listen without port", env: { STOWAGE_LISTEN: "127.0.0.1" }, starts: "STOWAGE_LISTEN:" },
    { name: "bare IPv6 listen", argv: ["--listen", "::1:5000"], starts: "--listen:" },
    { name: "port 0", argv: ["--listen=:0"], starts: "--listen:", has: "65535" },
    { name: "port 70000", argv: ["--listen", "127.0.0.1:70000"], starts: "--listen:", has: "70000" },
    { name: "ftp upstream", argv: ["--upstream", "x=ftp://example.com"], starts: "--upstream:", has: "ftp:" },
    { name: "upstream without =", argv: ["--upstream", "https://ghcr.io"], starts: "--upstream:", has: "NAME=URL" },
    { name: "upstream without = and with userinfo", argv: ["--upstream", `https://u:${SECRET}@ghcr.io`], starts: "--upstream:", has: "NAME=URL" },
    { name: "not a URL", env: { STOWAGE_UPSTREAMS: "x=not a url" }, starts: "STOWAGE_UPSTREAMS:" },
    { name: "URL with credentials", argv: ["--upstream", `x=https://user:${SECRET}@example.com`], starts: "--upstream:", has: "--upstream-credentials" },
    { name: "URL with query", argv: ["--upstream", "x=https://example.com/?a=b"], starts: "--upstream:", has: "query" },
    { name: "duplicate flag names", argv: ["--upstream", "a=https://a.example", "--upstream", "a=https://b.example"], starts: "--upstream:", has: '"a"' },
    { name: "duplicate env names", env: { STOWAGE_UPSTREAMS: "a=https://a.example a=https://b.example" }, starts: "STOWAGE_UPSTREAMS:" },
    {
      name: "duplicate file names",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams:\n  - {name: a, url: https://a.example}\n  - {name: a, url: https://b.example}\n" },
      starts: "c.yaml: upstreams[1].name:",
    },
    { name: "default naming nothing", argv: ["--default-upstream", "ghcr.io"], env: withSecret, starts: "--default-upstream:", has: "docker.io" },
    { name: "default naming nothing (env)", env: { STOWAGE_DEFAULT_UPSTREAM: "nope" }, starts: "STOWAGE_DEFAULT_UPSTREAM:" },
    { name: "invalid upstream name", argv: ["--upstream", "Docker.IO=https://registry-1.docker.io"], starts: "--upstream:", has: '"Docker.IO"' },
    { name: "invalid default name", argv: ["--default-upstream", "Docker.IO"], starts: "--default-upstream:" },
    { name: "credentials for unknown upstream", argv: ["--upstream-credentials", `nope=user:${SECRET}`], starts: "--upstream-credentials:", has: '"nope"' },
    { name: "env credentials for unknown upstream", env: { STOWAGE_UPSTREAM_CREDENTIALS: `nope=user:${SECRET}` }, starts: "STOWAGE_UPSTREAM_CREDENTIALS:" },
    { name: "credentials without colon", argv: ["--upstream-credentials", `docker.io=${SECRET}`], starts: "--upstream-credentials:" },
    { name: "credentials without name", argv: [`--upstream-credentials=${SECRET}`], starts: "--upstream-credentials:" },
    { name: "credentials with empty password", argv: ["--upstream-credentials", "docker.io=user:"], starts: "--upstream-credentials:" },
    { name: "bad duration", argv: ["--tag-ttl", "5 minutes"], starts: "--tag-ttl:", has: '"5 minutes"' },
    { name: "bad duration (env)", env: { STOWAGE_UPSTREAM_TIMEOUT: "1.5m" }, starts: "STOWAGE_UPSTREAM_TIMEOUT:" },
    { name: "zero timeout", argv: ["--upstream-timeout", "0"], starts: "--upstream-timeout:" },
    { name: "zero concurrency", argv: ["--upstream-concurrency", "0"], starts: "--upstream-concurrency:" },
    { name: "fractional concurrency", argv: ["--upstream-concurrency=2.5"], starts: "--upstream-concurrency:" },
    { name: "concurrency in env", argv: [], env: { STOWAGE_UPSTREAM_CONCURRENCY: "lots" }, starts: "STOWAGE_UPSTREAM_CONCURRENCY:" },
    { name: "zero client timeout", argv: ["--client-timeout", "0"], starts: "--client-timeout:" },
    { name: "negative file ttl", argv: ["--config", "c.yaml"], files: { "c.yaml": "tagTtl: -5" }, starts: "c.yaml: tagTtl:" },
    { name: "bad log level", argv: ["--log-level", "verbose"], starts: "--log-level:", has: "debug, info, warn, error" },
    { name: "public URL with path", argv: ["--public-url", "https://cache.example.com/v2"], starts: "--public-url:" },
    { name: "unknown flag", argv: ["--foo", "bar"], starts: "unknown option --foo (see stowage serve --help)" },
    { name: "unknown flag with =", argv: [`--pasword=${SECRET}`], starts: "unknown option --pasword " },
    { name: "positional argument", argv: ["extra"], starts: "unexpected argument" },
    { name: "missing value at end", argv: ["--listen"], starts: "--listen needs a value" },
    { name: "missing value before flag", argv: ["--listen", "--data-dir", "/x"], starts: "--listen needs a value" },
    { name: "empty = value", argv: ["--data-dir="], starts: "--data-dir needs a value" },
    { name: "missing config file", argv: ["--config", "nope.yaml"], starts: "--config:", has: "nope.yaml" },
    { name: "missing config file (env)", env: { STOWAGE_CONFIG: "nope.yaml" }, starts: "STOWAGE_CONFIG:" },
    {
      name: "unknown top-level key",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "tagTTL: 60\n" },
      starts: "c.yaml: unknown key",
      has: '"tagTTL"',
    },
    {
      name: "unknown upstream key",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `upstreams:\n  - name: a\n    url: https://a.example\n    pasword: ${SECRET}\n` },
      starts: "c.yaml: upstreams[0]: unknown key",
      has: '"pasword"',
    },
    {
      name: "bad file url",
      argv: ["--config", "c.json"],
      files: { "c.json": JSON.stringify({ upstreams: [{ name: "a", url: "https://a.example" }, { name: "b", url: "ftp://b" }] }) },
      starts: "c.json: upstreams[1].url:",
    },
    {
      name: "file URL with credentials",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `upstreams:\n  - name: a\n    url: https://u:${SECRET}@a.example\n` },
      starts: "c.yaml: upstreams[0].url:",
    },
    {
      name: "numeric password in YAML",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams:\n  - name: a\n    url: https://a.example\n    username: u\n    password: 12345678\n" },
      starts: "c.yaml: upstreams[0].password:",
    },
    {
      name: "username without password",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams:\n  - name: a\n    url: https://a.example\n    username: u\n" },
      starts: "c.yaml: upstreams[0]:",
      has: "password",
    },
    {
      name: "password without username",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `upstreams:\n  - name: a\n    url: https://a.example\n    password: ${SECRET}\n` },
      starts: "c.yaml: upstreams[0]:",
      has: "username",
    },
    {
      name: "two password sources",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `upstreams:\n  - {name: a, url: "https://a.example", username: u, password: ${SECRET}, passwordEnv: X}\n` },
      starts: "c.yaml: upstreams[0]:",
    },
    {
      name: "passwordEnv not set",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams:\n  - {name: a, url: 'https://a.example', username: u, passwordEnv: MISSING_VAR}\n" },
      starts: "c.yaml: upstreams[0].passwordEnv:",
      has: "MISSING_VAR",
    },
    {
      name: "passwordFile missing",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams:\n  - {name: a, url: 'https://a.example', username: u, passwordFile: /run/nope}\n" },
      starts: "c.yaml: upstreams[0].passwordFile:",
      has: "/run/nope",
    },
    {
      name: "YAML syntax error on a password line",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `upstreams:\n  - name: a\n    password: }${SECRET}\n` },
      starts: "c.yaml: invalid YAML at line 3",
    },
    {
      name: "JSON syntax error",
      argv: ["--config", "c.json"],
      files: { "c.json": `{"upstreams": [{"password": ${SECRET}}]}` },
      starts: "c.json: invalid JSON",
    },
    { name: "storage scheme", argv: ["--storage", "gs://bucket"], starts: "--storage:", has: "s3://BUCKET" },
    { name: "storage bucket name", env: { STOWAGE_STORAGE: "s3://Bad_Bucket" }, starts: "STOWAGE_STORAGE:", has: "bucket" },
    { name: "storage with credentials", argv: ["--storage", `s3://key:${SECRET}@bucket`], starts: "--storage:", has: "AWS_ACCESS_KEY_ID" },
    { name: "storage endpoint", argv: ["--storage", "s3://bucket?endpoint=ftp://x"], starts: "--storage:", has: "endpoint" },
    { name: "storage parameter", argv: ["--storage", "s3://bucket?acl=public"], starts: "--storage:", has: '"acl"' },
    { name: "storage prefix", argv: ["--storage", "s3://bucket/a//b"], starts: "--storage:", has: "prefix" },
    { name: "kv file key", argv: ["--config", "c.yaml"], files: { "c.yaml": "kv: ''\n" }, starts: "c.yaml: kv", has: "KV Connect URL" },
    { name: "kv scheme", argv: ["--kv", "redis://127.0.0.1:6379"], starts: "--kv:", has: "KV Connect URL" },
    { name: "kv URL with credentials", argv: ["--kv", `https://user:${SECRET}@kv.example.com/`], starts: "--kv:", has: "DENO_KV_ACCESS_TOKEN" },
    { name: "hash workers negative", argv: ["--hash-workers", "-1"], starts: "--hash-workers:", has: '"-1"' },
    { name: "hash workers too many", env: { STOWAGE_HASH_WORKERS: "64" }, starts: "STOWAGE_HASH_WORKERS:", has: "0 (hash on the main thread) to 16" },
    {
      name: "s3 credentials without s3 storage",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `s3: {accessKeyId: AK, secretAccessKey: ${SECRET}}\n` },
      starts: "c.yaml: s3:",
    },
    {
      name: "s3 credentials: unknown key",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": `storage: s3://bucket\ns3: {accessKeyId: AK, secret: ${SECRET}}\n` },
      starts: "c.yaml: s3",
    },
    { name: "top level is a list", argv: ["--config", "c.yaml"], files: { "c.yaml": "- a\n- b\n" }, starts: "c.yaml: expected a mapping" },
    {
      name: "upstreams is not a list",
      argv: ["--config", "c.yaml"],
      files: { "c.yaml": "upstreams: docker.io\n" },
      starts: "c.yaml: upstreams:",
    },
  ];
  for (const c of cases) {
    const err = errorOf(() => load(c.argv ?? [], c.env ?? {}, c.files ?? {}));
    t.ok(err.message.startsWith(c.starts), `${c.name}: message starts with ${c.starts}`, { found: err.message });
    if (c.has) t.ok(err.message.includes(c.has), `${c.name}: message mentions ${c.has}`, { found: err.message });
    t.notOk(err.message.includes("\n"), `${c.name}: one line`);
    t.notOk(err.message.includes(SECRET), `${c.name}: password not shown`, { found: err.message });
  }
});

t.test("redactedConfig hides passwords and keeps the rest", async (t) => {
  const c = load(["--upstream-credentials", `docker.io=someone:${SECRET}`, "--upstream", "docker.io=https://registry-1.docker.io",
    "--upstream", "ghcr.io=https://ghcr.io"]);
  const text = JSON.stringify(redactedConfig(c));
  t.notOk(text.includes(SECRET), "password gone");
  t.ok(text.includes("someone"), "username kept");
  t.ok(text.includes("***"), "placeholder shown");
  t.match(redactedConfig(c), { upstreams: [{ name: "docker.io", credentials: { password: "***" } }, { name: "ghcr.io" }] });
  t.equal(c.upstreams[0]?.credentials?.password, SECRET, "the config itself is not modified");
});

t.test("S3 storage from the config file; credentials never in redactedConfig", async (t) => {
  const c = load(["--config", "c.yaml"], {}, {
    "c.yaml": `storage: s3://bucket/stowage?endpoint=http://127.0.0.1:7480\ns3:\n  accessKeyId: AKID\n  secretAccessKey: ${SECRET}\n`,
  });
  t.same(c.storage, {
    kind: "s3",
    bucket: "bucket",
    prefix: "stowage",
    endpoint: "http://127.0.0.1:7480",
    region: "us-east-1",
    credentials: { accessKeyId: "AKID", secretAccessKey: SECRET },
  });
  const text = JSON.stringify(redactedConfig(c));
  t.notOk(text.includes(SECRET) || text.includes("AKID"), "credentials gone");
  t.match(redactedConfig(c), { storage: { bucket: "bucket", credentials: { secretAccessKey: "***" } } });
  t.equal(load(["--config", "c.yaml", "--storage", "fs"], {}, { "c.yaml": "storage: s3://bucket\n" }).storage.kind, "fs", "the flag wins over the file");
});

t.test("--resolve, sizes, private networks and OIDC conditions", async (t) => {
  const c = load(["--resolve", "a.test:443:127.0.0.2", "--resolve=b.test:443:127.0.0.3"]);
  t.same(c.resolve.map((r) => `${r.host}:${r.port}:${r.address}`), ["a.test:443:127.0.0.2", "b.test:443:127.0.0.3"], "repeatable, in order");
  t.same(load([], { STOWAGE_RESOLVE: "a.test:443:127.0.0.2, b.test:80:127.0.0.3" }).resolve.length, 2, "from the environment");
  for (const bad of ["a.test:443", "a.test:0:127.0.0.1", "a.test:443:not-an-ip", "a.test:443:999.1.1.1", "a test:443:127.0.0.1"]) {
    t.throws(() => load(["--resolve", bad]), { name: "ConfigError", message: /--resolve: .*HOST:PORT:ADDRESS|--resolve: port/ }, `refuses ${bad}`);
  }
  for (const bad of ["12 parsecs", "-1", "1KiB", "GiB"]) {
    t.throws(() => load(["--max-blob-size", bad]), { name: "ConfigError", message: /^--max-blob-size: / }, `refuses --max-blob-size ${bad}`);
  }

  const file = `upstreams:\n  - name: lan\n    url: https://harbor.lan\n    allowPrivateNetwork: true\n  - name: hub\n    url: https://registry-1.docker.io\nresolve: [harbor.lan:443:10.0.0.5]\nmaxBlobSize: 2GiB\n`;
  const f = load(["--config", "s.yaml"], {}, { "s.yaml": file });
  t.same(f.upstreams.map((u) => [u.name, u.allowPrivateNetwork]), [["lan", true], ["hub", false]]);
  t.same(f.resolve, [{ host: "harbor.lan", port: 443, address: "10.0.0.5" }]);
  t.equal(f.maxBlobBytes, 2 * 1024 ** 3);

  const oidc = (extra: string) =>
    `accessControl: true\noidc:\n  - issuer: https://token.actions.githubusercontent.com\n    audience: https://cache.example.com\n    identity: github-ci\n${extra}`;
  t.throws(() => load(["--config", "o.yaml"], {}, { "o.yaml": oidc("") }), {
    name: "ConfigError",
    message: /o\.yaml: oidc\[0\] \(issuer https:\/\/token\.actions\.githubusercontent\.com, identity github-ci\) has no claims: .*allowAnyClaims: true/,
  }, "a provider without claim conditions is refused, naming it");
  t.equal(load(["--config", "o.yaml"], {}, { "o.yaml": oidc("    allowAnyClaims: true\n") }).access?.oidc.length, 1, "unless allowAnyClaims says it is meant");
  t.equal(load(["--config", "o.yaml"], {}, { "o.yaml": oidc("    claims: {repository_owner: my-org}\n") }).access?.oidc[0]?.claims.repository_owner, "my-org");
});

t.test("expiry, size limit, collector period and the operator page", async (t) => {
  t.equal(load(["--cache-ttl", "90d"]).cacheTtlSeconds, 90 * 86_400, "days");
  t.equal(load(["--cache-ttl", "1d12h"]).cacheTtlSeconds, 36 * 3600, "days and hours");
  t.equal(load(["--cache-ttl", "off"]).cacheTtlSeconds, null, "off: nothing expires");
  t.equal(load(["--max-size", "500GiB"]).maxSizeBytes, 500 * 1024 ** 3);
  t.equal(load([], { STOWAGE_MAX_SIZE: "2TB" }).maxSizeBytes, 2e12, "from the environment");
  t.equal(load(["--max-size=off"]).maxSizeBytes, null);
  t.equal(load(["--gc-interval", "15m"]).gcIntervalSeconds, 900);
  t.equal(load(["--gc-grace", "0"]).gcGraceSeconds, 0, "no grace");
  t.equal(load(["--admin-page", "open"]).adminPage, "open");
  const f = load(["--config", "s.yaml"], {}, { "s.yaml": "cacheTtl: 30d\nmaxSize: 100GiB\ngcInterval: 600\nadminPage: \"off\"\n" });
  t.same([f.cacheTtlSeconds, f.maxSizeBytes, f.gcIntervalSeconds, f.adminPage], [30 * 86_400, 100 * 1024 ** 3, 600, "off"], "from the file");
  t.match(errorOf(() => load(["--cache-ttl", "90 days"])).message, /^--cache-ttl: expected a duration like .*90d/);
  t.match(errorOf(() => load(["--max-size", "lots"])).message, /^--max-size: expected a size/);
  t.match(errorOf(() => load(["--gc-interval", "30d"])).message, /^--gc-interval: must be at most 604800s/);
  t.match(errorOf(() => load(["--admin-page", "public"])).message, /^--admin-page: expected one of off, loopback, open, got "public"/);
});

t.test("admins: known users, robots and oidc identities only", async (t) => {
  const HASH = "$2b$10$" + "a".repeat(53);
  const file = (admins: string) =>
    `accessControl: true\nusers:\n  - name: alice\n    passwordHash: "${HASH}"\nrobots:\n  - name: ci\n    secretHash: "${HASH}"\n` +
    `oidc:\n  - issuer: https://token.actions.githubusercontent.com\n    audience: https://cache.example.com\n    identity: github-ci\n    allowAnyClaims: true\n${admins}`;
  const c = load(["--config", "a.yaml"], {}, { "a.yaml": file("admins: [alice, ci, github-ci]\n") });
  t.same(c.access?.admins, ["alice", "ci", "github-ci"], "users, robots and oidc identities");
  t.same(load(["--config", "a.yaml"], {}, { "a.yaml": file("") }).access?.admins, [], "none by default");
  t.equal(
    errorOf(() => load(["--config", "a.yaml"], {}, { "a.yaml": file("admins: [alice, bob, carol]\n") })).message,
    'a.yaml: admins: "bob", "carol" are not known users, robots or oidc identities (known: alice, ci, github-ci)',
    "unknown names are named, with the known ones",
  );
  t.same(
    load(["--config", "a.yaml", "--htpasswd", "h"], {}, { "a.yaml": "admins: [dave]\n", h: `dave:${HASH}\n` }).access?.admins,
    ["dave"],
    "htpasswd users count",
  );
  t.match(errorOf(() => load(["--config", "a.yaml"], {}, { "a.yaml": "admins: [alice]\n" })).message, /admins, but access control is off/);
});
