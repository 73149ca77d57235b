/**
 * The settings table: every setting of `stowage serve` is one row, and its flag, its
 * STOWAGE_* variable, its config-file key, its check, its default and its help all come
 * from that row. The command-line reader, the environment reader, the file schema,
 * `serve --help`, the README's options table and the plain fields of Config are built
 * from this table; adding a setting is adding a row (and its parser, if it is new).
 * Rows stand in sections, which are help's headings and the order of every listing.
 */
import type { Listen } from "../runtime/runtime.ts";
import { fromString, must, ok, type Parsed } from "./problems.ts";
import { DEFAULT_UPSTREAM, parseCredentialsEntry, parsePublicUrl, parseResolve, parseUpstreamEntry, parseUpstreamName } from "./upstream-values.ts";
import {
  MAX_TIMEOUT_SECONDS,
  MAX_TOKEN_TTL_SECONDS,
  MIN_MAX_BLOB_BYTES,
  MIN_TOKEN_TTL_SECONDS,
  parseBoolean,
  parseConcurrency,
  parseDuration,
  parseHashWorkers,
  parseKv,
  parseListen,
  parseLogLevel,
  parseAdminPage,
  parseDurationOrOff,
  parseOnOff,
  parsePath,
  parseSize,
  parseSizeOrOff,
  parseStorage,
} from "./values.ts";

export type Setting = {
  flag: `--${string}`;
  env: `STOWAGE_${string}`;
  /** Key in the config file; null where the file has a shape of its own for it (upstreams:) or none. */
  file: string | null;
  /** What a value looks like, as help shows it after the flag. */
  metavar: string;
  /** Repeatable flag; its environment variable holds several entries, split by `split`. */
  list?: { split: RegExp; splitText: string; fileError?: string };
  /** Checks one value: a string from a flag or the environment, any YAML/JSON value from the file. */
  parse: (raw: unknown) => Parsed<unknown>;
  /** What the flag means when written without a value (`--offline`); without it, a value is required. */
  bare?: string;
  /** The file's own check, where it differs from the command line's (true/false for on/off). */
  fileParse?: (raw: unknown) => Parsed<unknown>;
  /**
   * The Config field of a plain setting: the value of the highest-precedence source, or
   * `default`. Settings without it are combined with others when merged (merge.ts).
   */
  field?: string;
  default?: unknown;
  /** Help: what the setting does, one string a line. */
  about: readonly string[];
  /** The default as help and the README show it; `backticks` mark literal values. */
  shown: string;
  example: string;
  /** The value in the config-file example, where the flag's example is not the file's form. */
  fileExample?: string;
};

const duration = (min: number, max: number) => (raw: unknown) => parseDuration(raw, min, max);
const ENTRIES = { split: /[\s,]+/, splitText: "entries separated by commas or spaces" };

const SERVING = {
  listen: {
    flag: "--listen", env: "STOWAGE_LISTEN", file: "listen", metavar: "HOST:PORT",
    parse: fromString(parseListen), field: "listen", default: must("default listen", parseListen("127.0.0.1:5000")) as Listen,
    about: ['Address to listen on. ":PORT" means all interfaces; IPv6 as "[::1]:PORT".'],
    shown: "`127.0.0.1:5000`", example: "--listen :5000", fileExample: '":5000"',
  },
  publicUrl: {
    flag: "--public-url", env: "STOWAGE_PUBLIC_URL", file: "publicUrl", metavar: "URL",
    parse: fromString(parsePublicUrl), field: "publicUrl", default: null,
    about: ["Address (origin only) at which clients reach this cache, e.g. behind a proxy."],
    shown: "derived from each request", example: "--public-url https://cache.example.com",
  },
  metricsListen: {
    // A separate listener for /metrics (and /healthz); null: /metrics is on the main listener.
    flag: "--metrics-listen", env: "STOWAGE_METRICS_LISTEN", file: "metricsListen", metavar: "HOST:PORT",
    parse: fromString(parseListen), field: "metricsListen", default: null,
    about: [
      "Serve /metrics (and /healthz) on this separate address, and not on --listen.",
      "Without it, /metrics is on --listen (behind login when access control is on).",
    ],
    shown: "none (`/metrics` on `--listen`)", example: "--metrics-listen 127.0.0.1:9090",
  },
  clientTimeout: {
    // A client that takes no bytes for this long is cut off, freeing what its download holds.
    flag: "--client-timeout", env: "STOWAGE_CLIENT_TIMEOUT", file: "clientTimeout", metavar: "DURATION",
    parse: duration(1, MAX_TIMEOUT_SECONDS), field: "clientTimeoutSeconds", default: 300,
    about: [
      "A client that takes no bytes of a blob for this long is cut off, so a stuck",
      "job cannot hold a download's resources for ever.",
    ],
    shown: "`5m`", example: "--client-timeout 2m",
  },
  logLevel: {
    flag: "--log-level", env: "STOWAGE_LOG_LEVEL", file: "logLevel", metavar: "LEVEL",
    parse: fromString(parseLogLevel), field: "logLevel", default: "info",
    about: ["One of debug, info, warn, error."],
    shown: "`info`", example: "--log-level debug",
  },
  config: {
    // Read before every other source, as it is one of them.
    flag: "--config", env: "STOWAGE_CONFIG", file: null, metavar: "FILE",
    parse: fromString((raw) => ok(raw)),
    about: ["Read settings from a YAML or JSON file (see below)."],
    shown: "none", example: "--config /etc/stowage.yaml",
  },
} as const satisfies Record<string, Setting>;

const STORAGE = {
  dataDir: {
    flag: "--data-dir", env: "STOWAGE_DATA_DIR", file: "dataDir", metavar: "DIR",
    parse: fromString(parsePath), field: "dataDir", default: "./data",
    about: ["Directory for cached blobs, manifests and metadata."],
    shown: "`./data`", example: "--data-dir /var/lib/stowage",
  },
  storage: {
    // Merged with the file's s3: credentials into Config.storage.
    flag: "--storage", env: "STOWAGE_STORAGE", file: "storage", metavar: "fs|s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]",
    parse: fromString(parseStorage),
    about: [
      "Where cached blobs and manifests are kept: fs (under --data-dir) or an S3 bucket,",
      "objects under PREFIX/blobs/. endpoint= for S3-compatible servers (Ceph RGW, MinIO),",
      "region= defaults to us-east-1. Credentials come from AWS_ACCESS_KEY_ID,",
      "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the usual AWS profile and role",
      "sources, or s3: in the config file. With S3 and no writable disk (Deno Deploy,",
      "deno run --deny-write) Stowage runs without a local spool.",
    ],
    shown: "`fs`", example: "--storage s3://cache-bucket/stowage?endpoint=http://127.0.0.1:7480",
  },
  kv: {
    // Where the metadata (tags, blob records, leases, tokens) lives; null: kv.sqlite3 in the data dir.
    flag: "--kv", env: "STOWAGE_KV", file: "kv", metavar: "PATH|:memory:|default|URL",
    parse: fromString(parseKv), field: "kv", default: null,
    about: [
      "Where metadata lives (tags, blob records, fetch leases, signing keys). Instances",
      "sharing a bucket must share this too: a file path on one machine; across",
      "machines a KV Connect URL (token in DENO_KV_ACCESS_TOKEN) or, on Deno Deploy,",
      "default (the project's KV). :memory: forgets everything on exit.",
    ],
    shown: "`kv.sqlite3` in `--data-dir`; `default` when the disk is not writable", example: "--kv /shared/stowage/kv.sqlite3",
  },
  hashWorkers: {
    flag: "--hash-workers", env: "STOWAGE_HASH_WORKERS", file: "hashWorkers", metavar: "N",
    parse: parseHashWorkers, field: "hashWorkers", default: 2,
    about: [
      "Worker threads that verify sha256 digests of downloads; 0 hashes on the main",
      "thread (chosen automatically where the platform has no worker threads).",
    ],
    shown: "`2` (`0`: on the main thread)", example: "--hash-workers 4",
  },
  maxBlobSize: {
    // No blob larger than this is downloaded or stored (guards bodies without Content-Length too).
    flag: "--max-blob-size", env: "STOWAGE_MAX_BLOB_SIZE", file: "maxBlobSize", metavar: "SIZE",
    parse: (raw: unknown) => parseSize(raw, MIN_MAX_BLOB_BYTES), field: "maxBlobBytes", default: 32 * 1024 ** 3,
    about: [
      "Largest blob Stowage downloads: a larger declared size is refused, and a body",
      "without Content-Length is cut off there. Sizes: 512MiB, 32GiB, 2TB, bytes.",
    ],
    shown: "`32GiB`", example: "--max-blob-size 64GiB",
  },
  diskReserve: {
    // Free space the filesystem spool must leave on its disk; below it, blobs are served uncached.
    flag: "--disk-reserve", env: "STOWAGE_DISK_RESERVE", file: "diskReserve", metavar: "SIZE",
    parse: (raw: unknown) => parseSize(raw), field: "diskReserveBytes", default: 512 * 1024 ** 2,
    about: [
      "Free space the blob spool leaves on its disk. A download that would go below it",
      "is served to the client uncached (and logged), instead of filling the disk.",
    ],
    shown: "`512MiB`", example: "--disk-reserve 5GiB",
  },
} as const satisfies Record<string, Setting>;

// The collector's period: at most a week, well within what a timer can wait for.
const MAX_GC_INTERVAL_SECONDS = 7 * 86_400;

const EXPIRY = {
  cacheTtl: {
    // Content nobody pulled for this long is removed by the collector (tags, then what they alone referenced).
    flag: "--cache-ttl", env: "STOWAGE_CACHE_TTL", file: "cacheTtl", metavar: "DURATION",
    parse: (raw: unknown) => parseDurationOrOff(raw, 1, Number.MAX_SAFE_INTEGER), field: "cacheTtlSeconds", default: null,
    about: [
      "Remove cached content nobody pulled for this long: tags first, then manifests",
      "and blobs no remaining tag or manifest refers to (a blob a kept image shares",
      "stays). Checked every --gc-interval, or now with stowage gc. off: keep all.",
    ],
    shown: "`off` (nothing expires)", example: "--cache-ttl 90d",
  },
  maxSize: {
    // Above it, the least recently pulled content goes until the store is under 90% of it.
    flag: "--max-size", env: "STOWAGE_MAX_SIZE", file: "maxSize", metavar: "SIZE",
    parse: (raw: unknown) => parseSizeOrOff(raw, 1), field: "maxSizeBytes", default: null,
    about: [
      "Largest size of the store: above it, the least recently pulled content is",
      "removed until the store is under 90% of it. Checked every --gc-interval, or",
      "now with stowage gc. off: no limit.",
    ],
    shown: "`off` (no limit)", example: "--max-size 500GiB",
  },
  gcInterval: {
    flag: "--gc-interval", env: "STOWAGE_GC_INTERVAL", file: "gcInterval", metavar: "DURATION",
    parse: duration(1, MAX_GC_INTERVAL_SECONDS), field: "gcIntervalSeconds", default: 3600,
    about: [
      "How often the server applies --cache-ttl and --max-size (the first time a",
      "minute after start, or one interval if that is shorter). Without either, it",
      "only runs at start-up, to clear records and objects a crash left without",
      "each other.",
    ],
    shown: "`1h`", example: "--gc-interval 15m",
  },
  gcGrace: {
    // Protects a pull in progress: its manifest may be stored before its tag, its blobs after both.
    flag: "--gc-grace", env: "STOWAGE_GC_GRACE", file: "gcGrace", metavar: "DURATION",
    parse: duration(0, MAX_GC_INTERVAL_SECONDS), field: "gcGraceSeconds", default: 600,
    about: [
      "Blobs and manifests stored more recently than this are kept by expiry, the",
      "size limit and the orphan sweep, so the parts of a pull in progress stay",
      "together. A purge removes what it names however recently it was stored.",
    ],
    shown: "`10m`", example: "--gc-grace 30m",
  },
} as const satisfies Record<string, Setting>;

const UPSTREAMS = {
  upstream: {
    // The file gives these as upstreams: [{name, url, ...}].
    flag: "--upstream", env: "STOWAGE_UPSTREAMS", file: null, metavar: "NAME=URL", list: ENTRIES,
    parse: fromString(parseUpstreamEntry),
    about: [
      "A registry to cache; repeatable. Image names starting with NAME/ come from this",
      "upstream, and containerd mirror requests (?ns=HOST) match the URL's host.",
      "A name given again replaces the URL from a lower-precedence source.",
    ],
    shown: `\`${DEFAULT_UPSTREAM.name}=${DEFAULT_UPSTREAM.url}\`, only when no upstream is configured`,
    example: "--upstream ghcr.io=https://ghcr.io",
  },
  credentials: {
    // The file gives these as username and password* of upstreams: entries.
    flag: "--upstream-credentials", env: "STOWAGE_UPSTREAM_CREDENTIALS", file: null, metavar: "NAME=USER:PASSWORD",
    // Whitespace only, so that passwords may contain commas.
    list: { split: /\s+/, splitText: "entries separated by spaces or newlines" },
    parse: fromString(parseCredentialsEntry),
    about: [
      'Credentials for upstream NAME; repeatable. The password is everything after the',
      'first ":" and may contain ":", "=" and ",". Prefer the environment variable or',
      "the config file, so the password does not appear in the process list.",
    ],
    shown: "none (anonymous pulls)", example: "--upstream-credentials docker.io=someone:s3cret",
  },
  defaultUpstream: {
    flag: "--default-upstream", env: "STOWAGE_DEFAULT_UPSTREAM", file: "defaultUpstream", metavar: "NAME",
    parse: fromString(parseUpstreamName),
    about: ["Upstream for image names that do not start with an upstream name."],
    shown: "the first upstream", example: "--default-upstream docker.io",
  },
  tagTtl: {
    flag: "--tag-ttl", env: "STOWAGE_TAG_TTL", file: "tagTtl", metavar: "DURATION",
    parse: duration(0, Number.MAX_SAFE_INTEGER), field: "tagTtlSeconds", default: 60,
    about: [
      "How long a cached tag is served before it is checked with the upstream again;",
      "0 checks every time. Durations: 90, 90s, 5m, 1h, 1h30m.",
    ],
    shown: "`60s`", example: "--tag-ttl 5m",
  },
  upstreamTimeout: {
    flag: "--upstream-timeout", env: "STOWAGE_UPSTREAM_TIMEOUT", file: "upstreamTimeout", metavar: "DURATION",
    parse: duration(1, MAX_TIMEOUT_SECONDS), field: "upstreamTimeoutSeconds", default: 30,
    about: [
      "Limit for connecting to an upstream and receiving its response headers, and",
      "the longest pause allowed while receiving a body.",
    ],
    shown: "`30s`", example: "--upstream-timeout 1m",
  },
  upstreamConcurrency: {
    // Requests in flight to one upstream at a time (a blob download counts until its body ends).
    flag: "--upstream-concurrency", env: "STOWAGE_UPSTREAM_CONCURRENCY", file: "upstreamConcurrency", metavar: "N",
    parse: parseConcurrency, field: "upstreamConcurrency", default: 32,
    about: [
      "Requests in flight to one upstream at a time; more wait their turn. A blob",
      "download counts until its body ends. Protects upstreams from a fleet's burst.",
    ],
    shown: "`32`", example: "--upstream-concurrency 8",
  },
  offline: {
    // Air-gapped sites: tags resolve to what is stored, misses are 404 at once, nothing waits on a connect timeout.
    flag: "--offline", env: "STOWAGE_OFFLINE", file: "offline", metavar: "[on|off]",
    parse: fromString(parseOnOff), fileParse: parseBoolean, field: "offline", default: false, bare: "on",
    about: [
      "Never contact any upstream (one upstream alone: offline: true in its upstreams:",
      "entry). Tags answer from the store whatever their age, a miss is 404 at once;",
      "fill the store with stowage prefill or stowage import. --offline alone means on.",
    ],
    shown: "`off`", example: "--offline", fileExample: "false",
  },
  resolve: {
    // Name resolution overrides for upstream connections (split-horizon networks, tests); replaces lower sources' list.
    flag: "--resolve", env: "STOWAGE_RESOLVE", file: "resolve", metavar: "HOST:PORT:ADDRESS",
    list: { ...ENTRIES, fileError: "expected a list of HOST:PORT:ADDRESS entries" },
    parse: fromString(parseResolve), field: "resolve",
    about: [
      "Connect to ADDRESS whenever an upstream URL, token realm or redirect names",
      "HOST:PORT, as curl's --resolve does (split-horizon DNS, registries reached by an",
      "internal address); repeatable. TLS still checks the certificate against HOST.",
      "Node only: on Deno, use the system resolver (/etc/hosts).",
    ],
    shown: "none (the system resolver)", example: "--resolve registry.internal:443:10.0.0.5",
  },
} as const satisfies Record<string, Setting>;

const ACCESS = {
  accessControl: {
    flag: "--access-control", env: "STOWAGE_ACCESS_CONTROL", file: "accessControl", metavar: "on|off",
    parse: fromString(parseOnOff), fileParse: parseBoolean,
    about: [
      "Decide who may pull what. When on, clients get bearer tokens from /token (Docker",
      "token auth); identities come from --htpasswd and users:/robots: in the config",
      "file, and rules: say who may pull which repository (see below).",
    ],
    shown: "`off` (anonymous pulls of everything), or on when `--htpasswd` is given", example: "--access-control on", fileExample: "true",
  },
  htpasswd: {
    flag: "--htpasswd", env: "STOWAGE_HTPASSWD", file: "htpasswd", metavar: "FILE",
    parse: fromString(parsePath),
    about: [
      "Users from an Apache htpasswd file with bcrypt entries (htpasswd -B). Turns access",
      "control on: these users may pull everything, anonymous clients nothing, unless",
      "rules say otherwise.",
    ],
    shown: "none", example: "--htpasswd /etc/stowage/htpasswd",
  },
  tokenTtl: {
    flag: "--token-ttl", env: "STOWAGE_TOKEN_TTL", file: "tokenTtl", metavar: "DURATION",
    parse: duration(MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS), default: 900,
    about: ["Lifetime of the bearer tokens Stowage issues (60s to 24h)."],
    shown: "`15m`", example: "--token-ttl 30m",
  },
  adminPage: {
    // The operator page /-/: who may open it (with access control on, only the config's admins: ever may).
    flag: "--admin-page", env: "STOWAGE_ADMIN_PAGE", file: "adminPage", metavar: "off|loopback|open",
    parse: fromString(parseAdminPage), field: "adminPage", default: "loopback",
    about: [
      "The operator page at /-/ (cached images, sizes, downloads, purge). With access",
      "control on, only the identities in the config file's admins: may use it. With",
      "it off: loopback answers only clients on this machine, open answers everyone",
      "who reaches --listen. off: no page.",
    ],
    shown: "`loopback`", example: "--admin-page open",
  },
} as const satisfies Record<string, Setting>;

/** Every setting; help and the README list them in this order, by section. */
export const SETTINGS = { ...SERVING, ...STORAGE, ...EXPIRY, ...UPSTREAMS, ...ACCESS };

export const SECTIONS: ReadonlyArray<{ title: string; keys: readonly SettingKey[] }> = [
  { title: "Serving", keys: Object.keys(SERVING) as SettingKey[] },
  { title: "Storage", keys: Object.keys(STORAGE) as SettingKey[] },
  { title: "Expiry and size limits", keys: Object.keys(EXPIRY) as SettingKey[] },
  { title: "Upstreams", keys: Object.keys(UPSTREAMS) as SettingKey[] },
  { title: "Access control", keys: Object.keys(ACCESS) as SettingKey[] },
];

type Rows = typeof SETTINGS;
export type SettingKey = keyof Rows;

/** The checked value of one entry of a setting. */
export type SettingValue<K extends SettingKey> = Rows[K]["parse"] extends (raw: unknown) => Parsed<infer T> ? T : never;

type PlainKey = { [K in SettingKey]: Rows[K] extends { field: string } ? K : never }[SettingKey];
type FieldValue<K extends SettingKey> = Rows[K] extends { list: object } ? SettingValue<K>[]
  : SettingValue<K> | (Rows[K] extends { default: infer D } ? (D extends null ? null : never) : never);

/** The Config fields that come straight from one row each. */
export type PlainConfig = {
  -readonly [K in PlainKey as Rows[K] extends { field: infer F extends string } ? F : never]: FieldValue<K>;
};

/** The rows in table order (the order of help and the README). */
export const SETTING_KEYS = Object.keys(SETTINGS) as SettingKey[];

export const setting = (key: SettingKey): Setting => SETTINGS[key];

export const DEFAULTS = {
  upstream: DEFAULT_UPSTREAM,
  tokenTtlSeconds: SETTINGS.tokenTtl.default,
  tokenService: "stowage",
  tokenIssuer: "stowage",
} as const;
