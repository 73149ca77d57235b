/**
 * Command-line front end: turns argv into a command to run. Printing and
 * exiting belong to the entry point, so this module stays pure.
 */
import { type Config, ConfigError, DEFAULTS, ENV_VARS, FLAGS, loadConfig } from "./config.ts";

export type CliCommand =
  | { kind: "serve"; config: Config }
  | { kind: "help"; text: string }
  | { kind: "version" };

export const USAGE = `Stowage: a pull-through cache for container images (OCI distribution API)

Usage:
  stowage serve [options]   run the cache server
  stowage help [serve]      show this help, or the help for serve
  stowage --version         print the version

Run "stowage serve --help" for every option of serve.
`;

type OptionHelp = { usage: string; env: string; about: string[]; default: string; example: string };

const OPTIONS: OptionHelp[] = [
  {
    usage: `${FLAGS.listen} HOST:PORT`,
    env: ENV_VARS.listen,
    about: ['Address to listen on. ":PORT" means all interfaces; IPv6 as "[::1]:PORT".'],
    default: DEFAULTS.listen,
    example: "--listen :5000",
  },
  {
    usage: `${FLAGS.dataDir} DIR`,
    env: ENV_VARS.dataDir,
    about: ["Directory for cached blobs, manifests and metadata."],
    default: DEFAULTS.dataDir,
    example: "--data-dir /var/lib/stowage",
  },
  {
    usage: `${FLAGS.upstream} NAME=URL`,
    env: `${ENV_VARS.upstream} (entries separated by commas or spaces)`,
    about: [
      "A registry to cache; repeatable. Image names starting with NAME/ come from this",
      "upstream, and containerd mirror requests (?ns=HOST) match the URL's host.",
      "A name given again replaces the URL from a lower-precedence source.",
    ],
    default: `${DEFAULTS.upstream.name}=${DEFAULTS.upstream.url}, only when no upstream is configured`,
    example: "--upstream ghcr.io=https://ghcr.io",
  },
  {
    usage: `${FLAGS.credentials} NAME=USER:PASSWORD`,
    env: `${ENV_VARS.credentials} (entries separated by spaces or newlines)`,
    about: [
      'Credentials for upstream NAME; repeatable. The password is everything after the',
      'first ":" and may contain ":", "=" and ",". Prefer the environment variable or',
      "the config file, so the password does not appear in the process list.",
    ],
    default: "none (anonymous pulls)",
    example: "--upstream-credentials docker.io=someone:s3cret",
  },
  {
    usage: `${FLAGS.defaultUpstream} NAME`,
    env: ENV_VARS.defaultUpstream,
    about: ["Upstream for image names that do not start with an upstream name."],
    default: "the first upstream",
    example: "--default-upstream docker.io",
  },
  {
    usage: `${FLAGS.publicUrl} URL`,
    env: ENV_VARS.publicUrl,
    about: ["Address (origin only) at which clients reach this cache, e.g. behind a proxy."],
    default: "derived from each request",
    example: "--public-url https://cache.example.com",
  },
  {
    usage: `${FLAGS.tagTtl} DURATION`,
    env: ENV_VARS.tagTtl,
    about: [
      "How long a cached tag is served before it is checked with the upstream again;",
      "0 checks every time. Durations: 90, 90s, 5m, 1h, 1h30m.",
    ],
    default: `${DEFAULTS.tagTtlSeconds}s`,
    example: "--tag-ttl 5m",
  },
  {
    usage: `${FLAGS.upstreamTimeout} DURATION`,
    env: ENV_VARS.upstreamTimeout,
    about: [
      "Limit for connecting to an upstream and receiving its response headers, and",
      "the longest pause allowed while receiving a body.",
    ],
    default: `${DEFAULTS.upstreamTimeoutSeconds}s`,
    example: "--upstream-timeout 1m",
  },
  {
    usage: `${FLAGS.logLevel} LEVEL`,
    env: ENV_VARS.logLevel,
    about: ["One of debug, info, warn, error."],
    default: DEFAULTS.logLevel,
    example: "--log-level debug",
  },
  {
    usage: `${FLAGS.config} FILE`,
    env: ENV_VARS.config,
    about: ["Read settings from a YAML or JSON file (see below)."],
    default: "none",
    example: "--config /etc/stowage.yaml",
  },
];

const formatOption = (o: OptionHelp) =>
  [
    `  ${o.usage}`,
    ...o.about.map((line) => `      ${line}`),
    `      Environment: ${o.env}`,
    `      Default: ${o.default}`,
    `      Example: ${o.example}`,
  ].join("\n");

export const SERVE_HELP = `Usage: stowage serve [options]

Every option can also be set with an environment variable or in a config file.
Precedence: command-line option > environment variable > config file > default.
Both "--option value" and "--option=value" work.

${OPTIONS.map(formatOption).join("\n\n")}

  -h, --help
      Show this help.

Config file (YAML or JSON; unknown keys are rejected):

  listen: 127.0.0.1:5000
  dataDir: ./data
  defaultUpstream: docker.io
  publicUrl: https://cache.example.com
  tagTtl: 60s                # or a number of seconds
  upstreamTimeout: 30s
  logLevel: info
  upstreams:
    - name: docker.io
      url: https://registry-1.docker.io
      username: someone      # optional; then exactly one of:
      passwordEnv: HUB_TOKEN #   password, passwordEnv (a variable name)
                             #   or passwordFile (a path; content is trimmed)
`;

const isHelp = (arg: string) => arg === "--help" || arg === "-h";

export function parseCommand(
  argv: string[],
  env: Record<string, string | undefined>,
  readFile: (p: string) => string,
): CliCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || isHelp(command)) {
    return { kind: "help", text: rest[0] === "serve" ? SERVE_HELP : USAGE };
  }
  if (command === "--version") return { kind: "version" };
  if (command === "serve") {
    if (rest.some(isHelp)) return { kind: "help", text: SERVE_HELP };
    return { kind: "serve", config: loadConfig({ argv: rest, env, readFile }) };
  }
  if (command.startsWith("-")) {
    const flag = command.split("=")[0];
    throw new ConfigError(`unknown option ${flag} (options go after the command, e.g. stowage serve ${flag} ...; see stowage --help)`);
  }
  throw new ConfigError(`unknown command ${JSON.stringify(command)} (commands: serve, help)`);
}
