// The command lines of prefill, export and import: their own options, their references, and
// every serve setting beside them (the same --config, --storage, --upstream as serve).
import t from "tap";
import { parseCommand, type CliCommand } from "../../src/cli.ts";
import { ConfigError } from "../../src/config/problems.ts";

const parse = (argv: string[]) => parseCommand(argv, {}, () => "");
const without = (c: CliCommand) => {
  const { config, ...rest } = c as CliCommand & { config?: unknown };
  return { rest, config: config as { dataDir?: string; offline?: boolean; upstreams?: Array<{ name: string }> } | undefined };
};

t.test("prefill: references, files, platforms, jobs and serve settings mixed in any order", async (t) => {
  const { rest, config } = without(parse([
    "prefill", "alpine:3.20", "--platform", "linux/arm64", "--data-dir", "/srv/stowage", "ghcr.io/o/i@sha256:" + "a".repeat(64),
    "--from", "deploy.yaml", "--platform=linux/arm/v7", "-j", "8", "--with-referrers", "--offline", "--upstream", "ghcr=https://ghcr.io",
  ]));
  t.same(rest, {
    kind: "prefill",
    refs: ["alpine:3.20", "ghcr.io/o/i@sha256:" + "a".repeat(64)],
    from: ["deploy.yaml"],
    platforms: [{ os: "linux", architecture: "arm64" }, { os: "linux", architecture: "arm", variant: "v7" }],
    jobs: 8,
    withReferrers: true,
  });
  t.equal(config?.dataDir, "/srv/stowage", "serve settings reach the configuration");
  t.equal(config?.offline, true, "--offline alone, before another option, means on");
  t.ok(config?.upstreams?.some((u) => u.name === "ghcr"));
  const fromStdin = without(parse(["prefill", "--from", "-"])).rest;
  t.same(fromStdin, { kind: "prefill", refs: [], from: ["-"], platforms: [], jobs: 4, withReferrers: false }, "--from - reads standard input; 4 jobs by default");
});

t.test("--offline alone before a positional does not swallow it", async (t) => {
  const { rest, config } = without(parse(["import", "--offline", "bundle.tar"]));
  t.same(rest, { kind: "import", input: "bundle.tar" });
  t.equal(config?.offline, true);
  const off = without(parse(["import", "--offline", "off", "bundle.tar"]));
  t.equal(off.config?.offline, false, "an on/off word after it is its value");
});

t.test("export: references or --all, -o, --since", async (t) => {
  t.same(without(parse(["export", "--all", "-o", "-"])).rest, { kind: "export", refs: "all", output: "-", since: null, withReferrers: false });
  t.same(without(parse(["export", "alpine", "busybox:1", "--output=b.tar", "--since", "a.tar", "--with-referrers"])).rest, {
    kind: "export",
    refs: ["alpine", "busybox:1"],
    output: "b.tar",
    since: "a.tar",
    withReferrers: true,
  });
});

t.test("mistakes are told in the operator's words", async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [["prefill"], /needs images: REF\.\.\./],
    [["prefill", "alpine", "--platform", "arm64"], /os\/arch/],
    [["prefill", "alpine", "--jobs", "0"], /1 to 64/],
    [["prefill", "alpine", "--from"], /--from needs a value/],
    [["prefill", "alpine", "-x"], /unknown option -x for stowage prefill/],
    [["prefill", "alpine", "--no-such-setting", "1"], /unknown option --no-such-setting/],
    [["prefill", "alpine", "--with-referrers=yes"], /takes no value/],
    [["export", "--all"], /needs -o FILE/],
    [["export", "alpine", "--all", "-o", "x.tar"], /either REF\.\.\. or --all/],
    [["export", "-o", "x.tar"], /needs images/],
    [["export", "--all", "-o", "a", "-o", "b"], /more than once/],
    [["import"], /one bundle/],
    [["import", "a.tar", "b.tar"], /one bundle/],
  ];
  for (const [argv, message] of cases) {
    t.throws(() => parse(argv), ConfigError, argv.join(" "));
    try {
      parse(argv);
    } catch (err) {
      t.match((err as Error).message, message, argv.join(" "));
    }
  }
});

t.test("--help of each command shows the usage", async (t) => {
  for (const cmd of ["prefill", "export", "import"]) {
    const c = parse([cmd, "--help"]);
    t.equal(c.kind, "help");
    t.match((c as { text: string }).text, `stowage ${cmd}`);
  }
});
