/**
 * Command-line front end: turns argv into a command to run. Printing and
 * exiting belong to the entry point, so this module stays pure.
 */
import { IDENTITY_NAME } from "./auth/identities.ts";
import { type Config, ConfigError, DEFAULTS, ENV_VARS, FLAGS, loadConfig } from "./config.ts";

export type CliCommand =
  | { kind: "serve"; config: Config }
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "token-create"; name: string }
  | { kind: "token-revoke"; name: string; config: Config }
  | { kind: "user-hash" }
  | { kind: "keys-rotate"; config: Config };

export const USAGE = `Stowage: a pull-through cache for container images (OCI distribution API)

Usage:
  stowage serve [options]   run the cache server
  stowage help [serve]      show this help, or the help for serve
  stowage token create NAME print a new robot token secret (once) and the config
                            entry with its bcrypt hash
  stowage token revoke NAME [serve options]
                            revoke every refresh (identity) token of user or robot NAME
  stowage user hash         read a password from standard input, print its bcrypt hash
  stowage keys rotate [serve options]
                            sign new tokens with a new key; tokens signed with the old
                            key stay valid until they expire
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
    usage: `${FLAGS.storage} fs|s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]`,
    env: ENV_VARS.storage,
    about: [
      "Where cached blobs and manifests are kept: fs (under --data-dir) or an S3 bucket,",
      "objects under PREFIX/blobs/. endpoint= for S3-compatible servers (Ceph RGW, MinIO),",
      "region= defaults to us-east-1. Credentials come from AWS_ACCESS_KEY_ID,",
      "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the usual AWS profile and role",
      "sources, or s3: in the config file. With S3 and no writable disk (Deno Deploy,",
      "deno run --deny-write) Stowage runs without a local spool.",
    ],
    default: "fs",
    example: "--storage s3://cache-bucket/stowage?endpoint=http://127.0.0.1:7480",
  },
  {
    usage: `${FLAGS.kv} PATH|:memory:|default|URL`,
    env: ENV_VARS.kv,
    about: [
      "Where metadata lives (tags, blob records, fetch leases, signing keys). Instances",
      "sharing a bucket must share this too: a file path on one machine; across",
      "machines a KV Connect URL (token in DENO_KV_ACCESS_TOKEN) or, on Deno Deploy,",
      "default (the project's KV). :memory: forgets everything on exit.",
    ],
    default: "kv.sqlite3 in --data-dir; default when the disk is not writable",
    example: "--kv /shared/stowage/kv.sqlite3",
  },
  {
    usage: `${FLAGS.hashWorkers} N`,
    env: ENV_VARS.hashWorkers,
    about: [
      "Worker threads that verify sha256 digests of downloads; 0 hashes on the main",
      "thread (chosen automatically where the platform has no worker threads).",
    ],
    default: String(DEFAULTS.hashWorkers),
    example: "--hash-workers 4",
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
    usage: `${FLAGS.upstreamConcurrency} N`,
    env: ENV_VARS.upstreamConcurrency,
    about: [
      "Requests in flight to one upstream at a time; more wait their turn. A blob",
      "download counts until its body ends. Protects upstreams from a fleet's burst.",
    ],
    default: String(DEFAULTS.upstreamConcurrency),
    example: "--upstream-concurrency 8",
  },
  {
    usage: `${FLAGS.clientTimeout} DURATION`,
    env: ENV_VARS.clientTimeout,
    about: [
      "A client that takes no bytes of a blob for this long is cut off, so a stuck",
      "job cannot hold a download's resources for ever.",
    ],
    default: `${DEFAULTS.clientTimeoutSeconds}s`,
    example: "--client-timeout 2m",
  },
  {
    usage: `${FLAGS.logLevel} LEVEL`,
    env: ENV_VARS.logLevel,
    about: ["One of debug, info, warn, error."],
    default: DEFAULTS.logLevel,
    example: "--log-level debug",
  },
  {
    usage: `${FLAGS.accessControl} on|off`,
    env: ENV_VARS.accessControl,
    about: [
      "Decide who may pull what. When on, clients get bearer tokens from /token (Docker",
      "token auth); identities come from --htpasswd and users:/robots: in the config",
      "file, and rules: say who may pull which repository (see below).",
    ],
    default: "off (anonymous pulls of everything), or on when --htpasswd is given",
    example: "--access-control on",
  },
  {
    usage: `${FLAGS.htpasswd} FILE`,
    env: ENV_VARS.htpasswd,
    about: [
      "Users from an Apache htpasswd file with bcrypt entries (htpasswd -B). Turns access",
      "control on: these users may pull everything, anonymous clients nothing, unless",
      "rules say otherwise.",
    ],
    default: "none",
    example: "--htpasswd /etc/stowage/htpasswd",
  },
  {
    usage: `${FLAGS.tokenTtl} DURATION`,
    env: ENV_VARS.tokenTtl,
    about: ["Lifetime of the bearer tokens Stowage issues (60s to 24h)."],
    default: `${DEFAULTS.tokenTtlSeconds}s`,
    example: "--token-ttl 30m",
  },
  {
    usage: `${FLAGS.resolve} HOST:PORT:ADDRESS`,
    env: `${ENV_VARS.resolve} (entries separated by commas or spaces)`,
    about: [
      "Connect to ADDRESS whenever an upstream URL, token realm or redirect names",
      "HOST:PORT, as curl's --resolve does (split-horizon DNS, registries reached by an",
      "internal address); repeatable. TLS still checks the certificate against HOST.",
      "Node only: on Deno, use the system resolver (/etc/hosts).",
    ],
    default: "none (the system resolver)",
    example: "--resolve registry.internal:443:10.0.0.5",
  },
  {
    usage: `${FLAGS.maxBlobSize} SIZE`,
    env: ENV_VARS.maxBlobSize,
    about: [
      "Largest blob Stowage downloads: a larger declared size is refused, and a body",
      "without Content-Length is cut off there. Sizes: 512MiB, 32GiB, 2TB, bytes.",
    ],
    default: "32GiB",
    example: "--max-blob-size 64GiB",
  },
  {
    usage: `${FLAGS.diskReserve} SIZE`,
    env: ENV_VARS.diskReserve,
    about: [
      "Free space the blob spool leaves on its disk. A download that would go below it",
      "is served to the client uncached (and logged), instead of filling the disk.",
    ],
    default: "512MiB",
    example: "--disk-reserve 5GiB",
  },
  {
    usage: `${FLAGS.metricsListen} HOST:PORT`,
    env: ENV_VARS.metricsListen,
    about: [
      "Serve /metrics (and /healthz) on this separate address, and not on --listen.",
      "Without it, /metrics is on --listen (behind login when access control is on).",
    ],
    default: "none",
    example: "--metrics-listen 127.0.0.1:9090",
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
  storage: s3://cache-bucket/stowage?endpoint=http://127.0.0.1:7480   # or fs
  s3:                        # optional; else the AWS environment variables
    accessKeyId: AKIA...
    secretAccessKey: ...
  upstreams:
    - name: docker.io
      url: https://registry-1.docker.io
      username: someone      # optional; then exactly one of:
      passwordEnv: HUB_TOKEN #   password, passwordEnv (a variable name)
                             #   or passwordFile (a path; content is trimmed)
    - name: harbor.lan
      url: https://harbor.lan
      allowPrivateNetwork: true  # its redirects may lead to private addresses
  resolve: [harbor.lan:443:10.0.0.5]
  maxBlobSize: 32GiB
  diskReserve: 512MiB
  metricsListen: 127.0.0.1:9090

  # Access control (all optional; any of these needs accessControl: true or htpasswd)
  accessControl: true
  htpasswd: /etc/stowage/htpasswd
  tokenTtl: 15m
  tokenService: stowage       # the service= of challenges and aud of tokens
  users:                      # hashes from: stowage user hash
    - name: alice
      passwordHash: $2b$10$...
  robots:                     # from: stowage token create NAME
    - name: ci
      secretHash: $2b$10$...
  rules:                      # the first rule matching a repository decides;
    - upstream: docker.io     # no match: every signed-in identity, not anonymous
      repository: library/*   # * stays within a path component, ** does not
      pull: [anonymous, "*"]  # "*" is every signed-in identity
    - repository: team/**     # upstream defaults to every upstream
      pull: [alice, ci, github-ci]
  oidc:                       # CI jobs sign in with their id_token as the password
    - issuer: https://token.actions.githubusercontent.com
      audience: https://cache.example.com
      identity: github-ci     # the name rules use for such jobs
      claims:                 # every condition must match (globs); required,
        repository_owner: my-org  # unless allowAnyClaims: true (any job of that CI)
        ref: refs/heads/**
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
  if (command === "token" || command === "user" || command === "keys") return adminCommand(command, rest, env, readFile);
  if (command.startsWith("-")) {
    const flag = command.split("=")[0];
    throw new ConfigError(`unknown option ${flag} (options go after the command, e.g. stowage serve ${flag} ...; see stowage --help)`);
  }
  throw new ConfigError(`unknown command ${JSON.stringify(command)} (commands: serve, token, user, keys, help)`);
}

function adminCommand(
  command: "token" | "user" | "keys",
  args: string[],
  env: Record<string, string | undefined>,
  readFile: (p: string) => string,
): CliCommand {
  const [sub, ...rest] = args;
  const full = `${command} ${sub ?? ""}`.trim();
  if (args.some(isHelp)) return { kind: "help", text: USAGE };
  const name = (): string => {
    const n = rest[0];
    if (n === undefined || n.startsWith("-")) throw new ConfigError(`stowage ${full} needs a NAME (e.g. stowage ${full} ci-bot)`);
    if (!IDENTITY_NAME.test(n) || n === "anonymous") {
      throw new ConfigError(`invalid name ${JSON.stringify(n.slice(0, 80))}: use letters, digits, '.', '_', '@' or '-' (not "anonymous")`);
    }
    return n;
  };
  switch (full) {
    case "token create":
      if (rest.length > 1) throw new ConfigError(`stowage token create takes only a NAME`);
      return { kind: "token-create", name: name() };
    case "token revoke":
      return { kind: "token-revoke", name: name(), config: loadConfig({ argv: rest.slice(1), env, readFile }) };
    case "user hash":
      if (rest.length > 0) throw new ConfigError("stowage user hash reads the password from standard input and takes no arguments");
      return { kind: "user-hash" };
    case "keys rotate":
      return { kind: "keys-rotate", config: loadConfig({ argv: rest, env, readFile }) };
  }
  throw new ConfigError(`unknown command "stowage ${full}" (see stowage --help)`);
}
