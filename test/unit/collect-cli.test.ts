// The command lines of gc and purge: their own options, what purge removes (resolved as a
// pull would resolve it), and every serve setting beside them. And what they print.
import t from "tap";
import { parseCommand, type CliCommand } from "../../src/cli.ts";
import { collectOptions, printReport } from "../../src/commands/collect.ts";
import { ConfigError } from "../../src/config/problems.ts";
import { ImageRefError } from "../../src/registry/image-ref.ts";

const parse = (argv: string[]) => parseCommand(argv, {}, () => "");
const without = (c: CliCommand) => {
  const { config, ...rest } = c as CliCommand & { config?: unknown };
  return { rest, config: config as { cacheTtlSeconds?: number | null; maxSizeBytes?: number | null; dataDir?: string; upstreams?: Array<{ name: string }> } | undefined };
};
const DIGEST = "sha256:" + "a".repeat(64);

t.test("gc: --dry-run and the serve settings, --max-size applied now", async (t) => {
  const { rest, config } = without(parse(["gc", "--max-size", "100GiB", "--dry-run", "--data-dir", "/srv/stowage", "--cache-ttl=90d"]));
  t.same(rest, { kind: "gc", dryRun: true });
  t.equal(config?.maxSizeBytes, 100 * 1024 ** 3);
  t.equal(config?.cacheTtlSeconds, 90 * 86_400);
  t.equal(config?.dataDir, "/srv/stowage");
  const plain = parse(["gc"]);
  t.same(without(plain).rest, { kind: "gc", dryRun: false });
  t.same(collectOptions(plain as Parameters<typeof collectOptions>[0]), { cacheTtlMs: null, maxBytes: null, dryRun: false, by: "cli" }, "no limits: none asked for");
  const limited = parse(["gc", "--cache-ttl", "1h", "--max-size", "1GiB"]);
  t.same(collectOptions(limited as Parameters<typeof collectOptions>[0]), { cacheTtlMs: 3_600_000, maxBytes: 1024 ** 3, dryRun: false, by: "cli" });
});

t.test("purge: references resolved as a pull resolves them, repositories, upstreams", async (t) => {
  const c = parse([
    "purge", "alpine:3.20", "--upstream", "ghcr=https://ghcr.io", "ghcr.io/owner/app@" + DIGEST, "--repository", "docker.io/library/*",
    "--upstream", "ghcr", "--dry-run", "team/app",
  ]);
  const { rest, config } = without(c);
  t.same(config?.upstreams?.map((u) => u.name), ["ghcr"], "--upstream NAME=URL configures an upstream");
  t.same(rest, {
    kind: "purge",
    dryRun: true,
    selectors: [
      { kind: "image", upstream: "ghcr", repo: "alpine", tag: "3.20", digest: null },
      { kind: "image", upstream: "ghcr", repo: "owner/app", tag: null, digest: DIGEST },
      { kind: "image", upstream: "ghcr", repo: "team/app", tag: "latest", digest: null },
      { kind: "repository", glob: "docker.io/library/*" },
      { kind: "upstream", name: "ghcr" },
    ],
  });
  const hub = without(parse(["purge", "alpine", "--upstream=docker.io"])).rest;
  t.same(hub, {
    kind: "purge",
    dryRun: false,
    selectors: [{ kind: "image", upstream: "docker.io", repo: "library/alpine", tag: "latest", digest: null }, { kind: "upstream", name: "docker.io" }],
  }, "Docker Hub's short names get library/; --upstream=NAME selects");
  t.same(collectOptions(parse(["purge", "--upstream", "docker.io"]) as Parameters<typeof collectOptions>[0]), {
    cacheTtlMs: null,
    maxBytes: null,
    purge: [{ kind: "upstream", name: "docker.io" }],
    dryRun: false,
    by: "cli",
  }, "a purge applies no limit");
});

t.test("mistakes are told in the operator's words", async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [["purge"], /needs what to remove: REF\.\.\./],
    [["purge", "--dry-run"], /needs what to remove/],
    [["purge", "--upstream", "quay"], /--upstream "quay" is not a configured upstream \(upstreams: docker\.io\)/],
    [["purge", "--repository", "a b"], /--repository "a b": expected a repository name or a pattern/],
    [["purge", "alpine", "--dry-run=yes"], /takes no value/],
    [["purge", "alpine", "-f"], /unknown option -f for stowage purge/],
    [["gc", "alpine"], /takes no images .*stowage purge/],
    [["gc", "--max-size", "lots"], /^--max-size: expected a size/],
    [["gc", "--cache-ttl", "forever"], /^--cache-ttl: expected a duration/],
  ];
  for (const [argv, message] of cases) {
    t.throws(() => parse(argv), ConfigError, argv.join(" "));
    try {
      parse(argv);
    } catch (err) {
      t.match((err as Error).message, message, argv.join(" "));
    }
  }
  const refError = (argv: string[]) => {
    try {
      parse(argv);
    } catch (err) {
      return err instanceof ImageRefError ? err.message : `not an ImageRefError: ${String(err)}`;
    }
    return "nothing thrown";
  };
  t.match(refError(["purge", "quay.io/a/b"]), /registry quay\.io is not one of the configured upstreams/, "a registry that is not an upstream (main exits 2)");
  t.match(refError(["purge", "Alpine:x"]), /"Alpine" is not a valid repository name/, "an invalid reference");
});

t.test("--help shows the usage with both commands", async (t) => {
  for (const cmd of ["gc", "purge"]) {
    const c = parse([cmd, "--help"]);
    t.equal(c.kind, "help");
    t.match((c as { text: string }).text, `stowage ${cmd}`);
  }
});

t.test("what gc prints: a table and the total on a terminal, JSON lines otherwise", async (t) => {
  const report = {
    ran: true,
    dryRun: false,
    removed: [
      { kind: "tag" as const, name: "docker.io/library/alpine:3.19", bytes: 0, reason: "ttl" as const },
      { kind: "blob" as const, name: DIGEST, bytes: 3 * 1024 * 1024, reason: "ttl" as const },
    ],
    bytesFreed: 3 * 1024 * 1024,
    storeBytesBefore: 10 * 1024 * 1024,
    storeBytesAfter: 7 * 1024 * 1024,
    startedAt: 0,
    durationMs: 1234,
  };
  let screen = "";
  printReport(report, { terminal: true, write: (s) => (screen += s) });
  const lines = screen.trimEnd().split("\n");
  t.match(lines[0], /^KIND\s+NAME\s+SIZE\s+REASON$/);
  t.match(lines[1], /^tag\s+docker\.io\/library\/alpine:3\.19\s+0 bytes\s+ttl$/);
  t.match(lines[2], new RegExp(`^blob\\s+${DIGEST}\\s+3 MiB\\s+ttl$`));
  t.equal(lines[3], "removed 2 items, freed 3 MiB (store: 10 MiB -> 7 MiB) in 1.2s");

  let piped = "";
  printReport({ ...report, dryRun: true }, { terminal: false, write: (s) => (piped += s) });
  const json = piped.trimEnd().split("\n").map((l) => JSON.parse(l));
  t.same(json, report.removed.map((r) => ({ ...r, dryRun: true })), "one JSON line per removal, nothing else on standard output");
});
