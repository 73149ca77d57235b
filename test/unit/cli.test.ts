import { readFileSync } from "node:fs";
import t from "tap";
import { parseCommand, SERVE_HELP, USAGE } from "../../src/cli.ts";
import { optionsTable } from "../../src/config/help.ts";
import { setting, SETTING_KEYS } from "../../src/config/settings.ts";
import { type Env, errorOf, load, readerFor } from "../support/config-sources.ts";

const SECRET = "hunter2";
const ROWS = SETTING_KEYS.map(setting);

t.test("cli: commands", async (t) => {
  const parse = (argv: string[], env: Env = {}) => parseCommand(argv, env, readerFor({}));
  t.same(parse([]), { kind: "help", text: USAGE });
  t.same(parse(["help"]), { kind: "help", text: USAGE });
  t.same(parse(["--help"]), { kind: "help", text: USAGE });
  t.same(parse(["-h"]), { kind: "help", text: USAGE });
  t.same(parse(["help", "serve"]), { kind: "help", text: SERVE_HELP });
  t.same(parse(["serve", "--help"]), { kind: "help", text: SERVE_HELP });
  t.same(parse(["serve", "--listen", "abc", "-h"]), { kind: "help", text: SERVE_HELP }, "help wins over bad flags");
  t.same(parse(["--version"]), { kind: "version" });

  const serve = parse(["serve", "--listen", ":5555"], { STOWAGE_LOG_LEVEL: "debug" });
  t.equal(serve.kind, "serve");
  if (serve.kind === "serve") {
    t.same(serve.config.listen, { hostname: "0.0.0.0", port: 5555 });
    t.equal(serve.config.logLevel, "debug");
  }

  t.equal(errorOf(() => parse(["x"])).message, 'unknown command "x" (commands: serve, prefill, export, import, gc, purge, token, user, keys, help)');
  t.match(errorOf(() => parse([`--listen=${SECRET}`])).message, /^unknown option --listen \(/);
  t.notOk(errorOf(() => parse([`--upstream-credentials=a=b:${SECRET}`])).message.includes(SECRET));
  t.match(errorOf(() => parse(["serve", "--bogus"])).message, "unknown option --bogus");
});

t.test("the command line as parseArgs reads it, in the operator's words", async (t) => {
  const cases: Array<[string[], string]> = [
    [["-x"], "unknown option -x (see stowage serve --help)"],
    [["-listen", ":5000"], "unknown option -listen (see stowage serve --help)"],
    [["--", "--listen"], "unknown option -- (see stowage serve --help)"],
    [["--listen", ":5000", "extra"], 'unexpected argument "extra" (see stowage serve --help)'],
    [["--listen", "--data-dir", "/x"], "--listen needs a value"],
    [["--data-dir", "/x", "--listen"], "--listen needs a value"],
    [["--listen="], "--listen needs a value"],
  ];
  for (const [argv, message] of cases) t.equal(errorOf(() => load(argv)).message, message, argv.join(" "));
  t.match(errorOf(() => load(["--hash-workers", "-1"])).message, /^--hash-workers: .*"-1"/, "a value starting with one dash is the setting's to judge");
  t.equal(load(["--listen=--weird", "--listen", ":5001"]).listen.port, 5001, "only the last of a repeated setting counts");
  t.same(load(["--data-dir=a=b"]).dataDir, "a=b", "the value is everything after the first =");
});

// Pinned here so that a row lost from the table fails, not only a row lost from the help.
const FLAGS = ["--listen", "--public-url", "--metrics-listen", "--client-timeout", "--log-level", "--config",
  "--data-dir", "--storage", "--kv", "--hash-workers", "--max-blob-size", "--disk-reserve",
  "--cache-ttl", "--max-size", "--gc-interval", "--gc-grace",
  "--upstream", "--upstream-credentials", "--default-upstream", "--tag-ttl", "--upstream-timeout", "--upstream-concurrency", "--offline", "--resolve",
  "--access-control", "--htpasswd", "--token-ttl", "--admin-page"];
const ENVS = ["STOWAGE_LISTEN", "STOWAGE_PUBLIC_URL", "STOWAGE_METRICS_LISTEN", "STOWAGE_CLIENT_TIMEOUT", "STOWAGE_LOG_LEVEL", "STOWAGE_CONFIG",
  "STOWAGE_DATA_DIR", "STOWAGE_STORAGE", "STOWAGE_KV", "STOWAGE_HASH_WORKERS", "STOWAGE_MAX_BLOB_SIZE", "STOWAGE_DISK_RESERVE",
  "STOWAGE_CACHE_TTL", "STOWAGE_MAX_SIZE", "STOWAGE_GC_INTERVAL", "STOWAGE_GC_GRACE",
  "STOWAGE_UPSTREAMS", "STOWAGE_UPSTREAM_CREDENTIALS", "STOWAGE_DEFAULT_UPSTREAM", "STOWAGE_TAG_TTL", "STOWAGE_UPSTREAM_TIMEOUT",
  "STOWAGE_UPSTREAM_CONCURRENCY", "STOWAGE_OFFLINE", "STOWAGE_RESOLVE", "STOWAGE_ACCESS_CONTROL", "STOWAGE_HTPASSWD", "STOWAGE_TOKEN_TTL", "STOWAGE_ADMIN_PAGE"];

t.test("serve --help shows every row of the settings table: flag, variable, default", async (t) => {
  t.same(ROWS.map((r) => r.flag), FLAGS, "the table has every flag");
  t.same(ROWS.map((r) => r.env), ENVS, "the table has every environment variable");
  for (const row of ROWS) {
    const at = SERVE_HELP.indexOf(`\n  ${row.flag} ${row.metavar}\n`);
    t.ok(at >= 0, `help has ${row.flag} ${row.metavar}`);
    const block = SERVE_HELP.slice(at, SERVE_HELP.indexOf("\n\n", at + 1));
    t.match(block, `\n      Environment: ${row.env}`, `${row.flag}: its variable`);
    t.match(block, `\n      Default: ${row.shown.replace(/`/g, "")}\n`, `${row.flag}: its default`);
  }
  for (const cmd of ["serve", "help", "--version"]) t.ok(USAGE.includes(cmd), `USAGE has ${cmd}`);
});

t.test("the README's options table is the settings table", async (t) => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  const table = optionsTable();
  t.ok(readme.includes(`\n${table}\n`), "README.md holds the table as generated (replace it with optionsTable() from src/config/help.ts)", {
    expected: table,
  });
  const lines = table.split("\n").slice(2);
  t.equal(lines.length, FLAGS.length, "one line a setting");
  ROWS.forEach((row, i) => {
    t.ok(lines[i]?.startsWith(`| \`${row.flag} `) && lines[i]?.includes(`| \`${row.env}\` |`), `${row.flag} and ${row.env} on one line`);
  });
});

t.test("the shown defaults are the defaults", async (t) => {
  for (const row of ROWS) {
    if (row.default === undefined || row.default === null) continue;
    const literal = /^`([^`]+)`/.exec(row.shown)?.[1];
    t.ok(literal, `${row.flag}: default shown as a literal value`);
    t.same(row.parse(literal), { ok: true, value: row.default }, `${row.flag}: ${literal} is its default`);
  }
});

t.test("the config-file example of serve --help loads", async (t) => {
  const example = SERVE_HELP.slice(SERVE_HELP.indexOf("\n\n", SERVE_HELP.indexOf("Config file (")) + 2)
    .split("\n")
    .map((line) => line.slice(2))
    .join("\n")
    // The example's hashes are placeholders; the schema wants real ones.
    .replaceAll("$2b$10$...", () => `$2b$10$${"a".repeat(53)}`);
  const c = load(["--config", "example.yaml"], { HUB_TOKEN: "t0ken" }, { "example.yaml": example, "/etc/stowage/htpasswd": "" });
  for (const row of ROWS) {
    if (row.file === null) continue;
    t.ok(new RegExp(`^${row.file}: `, "m").test(example), `the example sets ${row.file}`);
  }
  t.equal(c.upstreams.length, 2);
  t.equal(c.access?.identities.length, 2);
  t.equal(c.storage.kind, "s3");
});
