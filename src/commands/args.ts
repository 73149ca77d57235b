/**
 * The command lines of prefill, export, import, gc and purge: each command's own options and its
 * positional arguments, with every other option handed to the serve settings (so these
 * commands take the same --config, --storage, --upstream... as serve). Every serve setting
 * takes a value (or, for a flag that may stand alone like --offline, an on/off word), which is
 * what makes the split unambiguous. Pure.
 */

/** Serve flags that may stand alone (`--offline`): they take the next argument only when it is an on/off word. */
const BARE_FLAGS = new Set(SETTING_KEYS.flatMap((key) => (setting(key).bare === undefined ? [] : [setting(key).flag as string])));
const ON_OFF = /^(on|off|true|false|yes|no|1|0)$/i;
import { ConfigError, quote } from "../config/problems.ts";
import { setting, SETTING_KEYS } from "../config/settings.ts";
import type { Config } from "../config/types.ts";
import type { PurgeSelector } from "../gc/collector.ts";
import { parsePlatform, type Platform } from "../registry/manifest-refs.ts";
import { resolveImageRef } from "../upstream/target.ts";

type OptionSpec = { value: boolean; repeatable?: boolean; short?: string };

export type SplitArgs = {
  /** The command's own options, by long name (without --), each value as given. */
  own: Map<string, string[]>;
  positionals: string[];
  /** Everything else, for loadConfig. */
  serve: string[];
};

export function splitArgs(command: string, argv: string[], specs: Record<string, OptionSpec>): SplitArgs {
  const own = new Map<string, string[]>();
  const positionals: string[] = [];
  const serve: string[] = [];
  const byShort = new Map(Object.entries(specs).flatMap(([name, s]) => (s.short ? [[s.short, name] as const] : [])));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    // "-" alone is standard input (or output), a positional.
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const written = eq >= 0 ? arg.slice(0, eq) : arg;
    const name = written.startsWith("--") ? written.slice(2) : byShort.get(written.slice(1));
    const spec = name === undefined ? undefined : specs[name];
    if (name === undefined || spec === undefined) {
      if (!written.startsWith("--")) throw new ConfigError(`unknown option ${written} for stowage ${command} (see stowage ${command} --help)`);
      // A serve setting: it and its value go to the settings reader, which checks them.
      serve.push(arg);
      const next = argv[i + 1];
      if (eq < 0 && next !== undefined && (!BARE_FLAGS.has(written) || ON_OFF.test(next.trim()))) serve.push(argv[++i]!);
      continue;
    }
    let value: string;
    if (!spec.value) {
      if (eq >= 0) throw new ConfigError(`${written} takes no value`);
      value = "true";
    } else if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("-") && next !== "-")) throw new ConfigError(`${written} needs a value`);
      value = next;
      i++;
    }
    const values = own.get(name) ?? [];
    if (values.length > 0 && !spec.repeatable) throw new ConfigError(`${written} is given more than once`);
    values.push(value);
    own.set(name, values);
  }
  return { own, positionals, serve };
}

export function platformsFrom(values: readonly string[]): Platform[] {
  return values.map((v) => {
    const p = parsePlatform(v);
    if (!p) throw new ConfigError(`--platform ${quote(v)}: write it as os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7`);
    return p;
  });
}

export function jobsFrom(value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new ConfigError(`--jobs ${quote(value)}: give a whole number from 1 to 64`);
  return n;
}

export type PrefillCommand = {
  kind: "prefill";
  config: Config;
  refs: string[];
  /** Files of references (or "-" for standard input), read by the command. */
  from: string[];
  platforms: Platform[];
  jobs: number;
  withReferrers: boolean;
};
export type ExportCommand = {
  kind: "export";
  config: Config;
  refs: string[] | "all";
  /** A file, or "-" for standard output. */
  output: string;
  since: string | null;
  withReferrers: boolean;
};
export type ImportCommand = { kind: "import"; config: Config; input: string };
export type ContentCommand = PrefillCommand | ExportCommand | ImportCommand;

/** The command line of prefill, export or import; `load` reads the serve settings among them. */
export function parseContentCommand(command: "prefill" | "export" | "import", args: string[], load: (argv: string[]) => Config): ContentCommand {
  switch (command) {
    case "prefill": {
      const a = splitArgs(command, args, {
        from: { value: true, repeatable: true },
        platform: { value: true, repeatable: true },
        jobs: { value: true, short: "j" },
        "with-referrers": { value: false },
      });
      const from = a.own.get("from") ?? [];
      if (a.positionals.length === 0 && from.length === 0) {
        throw new ConfigError("stowage prefill needs images: REF... (e.g. alpine:3.20 ghcr.io/owner/app:1.2), or --from FILE (- for standard input)");
      }
      return {
        kind: "prefill",
        config: load(a.serve),
        refs: a.positionals,
        from,
        platforms: platformsFrom(a.own.get("platform") ?? []),
        jobs: jobsFrom(a.own.get("jobs")?.[0], 4),
        withReferrers: a.own.has("with-referrers"),
      };
    }
    case "export": {
      const a = splitArgs(command, args, {
        output: { value: true, short: "o" },
        all: { value: false },
        since: { value: true },
        "with-referrers": { value: false },
      });
      const output = a.own.get("output")?.[0];
      if (output === undefined) throw new ConfigError("stowage export needs -o FILE (or -o - for standard output)");
      const all = a.own.has("all");
      if (all && a.positionals.length > 0) throw new ConfigError("stowage export takes either REF... or --all, not both");
      if (!all && a.positionals.length === 0) throw new ConfigError("stowage export needs images: REF... (e.g. alpine:3.20), or --all for everything cached");
      return {
        kind: "export",
        config: load(a.serve),
        refs: all ? "all" : a.positionals,
        output,
        since: a.own.get("since")?.[0] ?? null,
        withReferrers: a.own.has("with-referrers"),
      };
    }
    case "import": {
      const a = splitArgs(command, args, {});
      if (a.positionals.length !== 1) throw new ConfigError("stowage import takes one bundle: FILE, or - for standard input");
      return { kind: "import", config: load(a.serve), input: a.positionals[0]! };
    }
  }
}

/** `stowage gc`: the serve settings' --cache-ttl and --max-size, applied now. */
export type GcCommand = { kind: "gc"; config: Config; dryRun: boolean };
/** `stowage purge`: what to remove, resolved against the configured upstreams. */
export type PurgeCommand = { kind: "purge"; config: Config; selectors: PurgeSelector[]; dryRun: boolean };
export type CollectCommand = GcCommand | PurgeCommand;

// As rules: name (the file's globs): letters, digits, . _ - / and the * and ** wildcards.
const REPOSITORY_GLOB = /^[A-Za-z0-9._\-/*?]{1,256}$/;

/**
 * The command line of gc or purge. For purge, `--upstream NAME` (no "=") selects an upstream to
 * purge, while `--upstream NAME=URL` stays the serve setting that configures one.
 */
export function parseCollectCommand(command: "gc" | "purge", args: string[], load: (argv: string[]) => Config): CollectCommand {
  if (command === "gc") {
    const a = splitArgs(command, args, { "dry-run": { value: false } });
    if (a.positionals.length > 0) {
      throw new ConfigError(`stowage gc takes no images (${quote(a.positionals[0]!)}); to remove particular images, use stowage purge REF...`);
    }
    return { kind: "gc", config: load(a.serve), dryRun: a.own.has("dry-run") };
  }
  const upstreamNames: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      rest.push(...args.slice(i));
      break;
    }
    const inline = arg.startsWith("--upstream=") ? arg.slice("--upstream=".length) : null;
    const next = args[i + 1];
    if (inline !== null && !inline.includes("=")) upstreamNames.push(inline);
    else if (arg === "--upstream" && next !== undefined && !next.startsWith("-") && !next.includes("=")) {
      upstreamNames.push(next);
      i++;
    } else rest.push(arg);
  }
  const a = splitArgs(command, rest, { repository: { value: true, repeatable: true }, "dry-run": { value: false } });
  const globs = a.own.get("repository") ?? [];
  if (a.positionals.length === 0 && globs.length === 0 && upstreamNames.length === 0) {
    throw new ConfigError(
      "stowage purge needs what to remove: REF... (as a client pulls it, e.g. alpine:3.20 or ghcr.io/owner/image:tag), --repository GLOB (e.g. 'docker.io/library/*') or --upstream NAME",
    );
  }
  for (const glob of globs) {
    if (!REPOSITORY_GLOB.test(glob)) throw new ConfigError(`--repository ${quote(glob)}: expected a repository name or a pattern with * or ** wildcards, e.g. 'docker.io/library/*'`);
  }
  const config = load(a.serve);
  for (const name of upstreamNames) {
    if (!config.upstreams.some((u) => u.name === name)) {
      throw new ConfigError(`--upstream ${quote(name)} is not a configured upstream (upstreams: ${config.upstreams.map((u) => u.name).join(", ")})`);
    }
  }
  const selectors: PurgeSelector[] = [
    ...a.positionals.map((ref): PurgeSelector => {
      const target = resolveImageRef(config.upstreams, config.defaultUpstream, ref);
      return { kind: "image", upstream: target.upstream.name, repo: target.repo, tag: target.tag, digest: target.digest };
    }),
    ...globs.map((glob): PurgeSelector => ({ kind: "repository", glob })),
    ...upstreamNames.map((name): PurgeSelector => ({ kind: "upstream", name })),
  ];
  return { kind: "purge", config, selectors, dryRun: a.own.has("dry-run") };
}
