/**
 * Stowage configuration: command-line flags > STOWAGE_* environment >
 * config file (YAML or JSON) > built-in defaults.
 *
 * Pure: the caller injects argv, the environment and a file reader, so every
 * path is testable without touching the disk.
 */
import { z } from "zod";
import { parseDocument } from "yaml";
import { isIP } from "node:net";
import { BCRYPT_HASH, IDENTITY_NAME, type IdentityEntry, parseHtpasswd } from "./auth/identities.ts";
import type { OidcProvider } from "./auth/oidc.ts";
import type { Rule } from "./auth/rules.ts";

// ---------------------------------------------------------------- types

import type { AccessConfig } from "./auth/access-config.ts";
import type { LogLevel } from "./log.ts";
import type { Listen } from "./runtime/runtime.ts";
import type { Credentials, ResolveOverride, Upstream } from "./upstream/upstream.ts";

export type { AccessConfig, Credentials, Listen, LogLevel, ResolveOverride, Upstream };

export type Config = {
  access?: AccessConfig;
  listen: Listen;
  dataDir: string;
  upstreams: Upstream[];
  defaultUpstream: string;
  publicUrl: string | null;
  tagTtlSeconds: number;
  upstreamTimeoutSeconds: number;
  /** Requests in flight to one upstream at a time (a blob download counts until its body ends). */
  upstreamConcurrency: number;
  /** A client that takes no bytes for this long is cut off, freeing what its download holds. */
  clientTimeoutSeconds: number;
  logLevel: LogLevel;
  /** Where blobs and manifests live. */
  storage: Storage;
  /** Where the metadata (tags, blob records, leases, tokens) lives; null: kv.sqlite3 in the data dir. */
  kv: KvLocation | null;
  /** Worker threads that verify sha256 digests; 0 hashes on the main thread. */
  hashWorkers: number;
  /** Name resolution overrides for upstream connections (split-horizon networks, tests). */
  resolve: ResolveOverride[];
  /** No blob larger than this is downloaded or stored (guards bodies without Content-Length too). */
  maxBlobBytes: number;
  /** Free space the filesystem spool must leave on its disk; below it, blobs are served uncached. */
  diskReserveBytes: number;
  /** A separate listener for /metrics (and /healthz); null: /metrics is on the main listener. */
  metricsListen: Listen | null;
};

/**
 * The KV store. Instances that share a bucket must share one of these too:
 * a file on one machine, or a KV Connect server / Deno Deploy's KV across machines.
 */
export type KvLocation =
  | { kind: "file"; path: string }
  | { kind: "memory" }
  /** A KV Connect endpoint (a denokv server); the token comes from DENO_KV_ACCESS_TOKEN. */
  | { kind: "remote"; url: string }
  /** `Deno.openKv()` with no argument: on Deno Deploy, the project's own KV. */
  | { kind: "platform" };

import type { S3Credentials, Storage } from "./storage/storage-config.ts";
export type { S3Credentials, Storage };

/** One-line, operator-facing message naming the setting and the problem. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export type ConfigSources = {
  argv: string[];
  env: Record<string, string | undefined>;
  readFile: (path: string) => string;
};

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export const DEFAULTS = {
  listen: "127.0.0.1:5000",
  dataDir: "./data",
  upstream: { name: "docker.io", url: "https://registry-1.docker.io" },
  tagTtlSeconds: 60,
  upstreamTimeoutSeconds: 30,
  upstreamConcurrency: 32,
  clientTimeoutSeconds: 300,
  hashWorkers: 2,
  logLevel: "info",
  tokenTtlSeconds: 900,
  tokenService: "stowage",
  tokenIssuer: "stowage",
  maxBlobBytes: 32 * 1024 ** 3,
  diskReserveBytes: 512 * 1024 ** 2,
} as const;

// Clients refetch tokens below a minute; a day bounds the harm of a leaked token.
const MIN_TOKEN_TTL_SECONDS = 60;
const MAX_TOKEN_TTL_SECONDS = 86_400;

// Node's setTimeout fires immediately for delays above 2^31-1 ms (~24.8 days),
// so an unbounded timeout would silently become no timeout at all.
const MAX_UPSTREAM_TIMEOUT_SECONDS = 86_400;
const MAX_UPSTREAM_CONCURRENCY = 1024;
const MAX_HASH_WORKERS = 16;
// Below this, ordinary base image layers would not fit: almost certainly a unit mistake.
const MIN_MAX_BLOB_BYTES = 1024 ** 2;

// ------------------------------------------------------- value parsers
// Each returns a problem description without the setting name; the caller
// prefixes the name as the operator wrote it (flag, env var or file path).

type Parsed<T> = { ok: true; value: T } | { ok: false; problem: string };
const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const bad = <T>(problem: string): Parsed<T> => ({ ok: false, problem });

/** Quote a value for an error message: one line, bounded, URL userinfo hidden. */
function quote(value: string): string {
  const hidden = value.replace(/\/\/[^/\s]*@/g, "//***@");
  const short = hidden.length > 80 ? `${hidden.slice(0, 77)}...` : hidden;
  return JSON.stringify(short);
}

function parseListen(raw: string): Parsed<Listen> {
  const expected = `expected HOST:PORT (e.g. 127.0.0.1:5000), got ${quote(raw)}`;
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([A-Za-z0-9.-]*)):(\d+)$/.exec(raw);
  if (!m) return bad(expected);
  const bracketed = m[1];
  const plain = m[2] ?? "";
  if (bracketed !== undefined && !bracketed.includes(":")) return bad(expected);
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return bad(`port must be between 1 and 65535, got ${m[3]}`);
  }
  // ":PORT" follows the Go/Docker convention of "all interfaces".
  const hostname = bracketed ?? (plain === "" ? "0.0.0.0" : plain);
  return ok({ hostname, port });
}

const DURATION_HINT = "expected a duration like 90, 90s, 5m or 1h30m";

function parseDuration(raw: unknown, min: number, max: number): Parsed<number> {
  let seconds: number;
  if (typeof raw === "number") {
    if (!Number.isSafeInteger(raw)) return bad(`${DURATION_HINT}, got ${raw}`);
    seconds = raw;
  } else if (typeof raw === "string") {
    const text = raw.trim();
    const m = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text);
    if (/^\d+$/.test(text)) {
      seconds = Number(text);
    } else if (m && text !== "") {
      seconds = Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
    } else {
      return bad(`${DURATION_HINT}, got ${quote(raw)}`);
    }
    if (!Number.isSafeInteger(seconds)) return bad(`${DURATION_HINT}, got ${quote(raw)}`);
  } else {
    return bad(`${DURATION_HINT}, got ${describe(raw)}`);
  }
  if (seconds < min) return bad(`must be at least ${min}s, got ${seconds}s`);
  if (seconds > max) return bad(`must be at most ${max}s, got ${seconds}s`);
  return ok(seconds);
}

const NAME_PATTERN = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;

function parseUpstreamName(raw: string): Parsed<string> {
  if (NAME_PATTERN.test(raw)) return ok(raw);
  return bad(
    `invalid upstream name ${quote(raw)}: use lowercase letters and digits separated by ".", "_", "__" or "-" (e.g. docker.io)`,
  );
}

type HttpUrl = { url: string; host: string };

/** Shared checks for upstream and public URLs; never echoes embedded credentials. */
function parseHttpUrl(raw: string, example: string): Parsed<HttpUrl & { path: string }> {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return bad(`must be an http:// or https:// URL (e.g. ${example}), got ${quote(raw)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    return bad(`must use http:// or https:// (e.g. ${example}), got scheme ${quote(u.protocol)}`);
  }
  if (u.username !== "" || u.password !== "") {
    return bad("must not contain a username or password; give credentials separately (--upstream-credentials, or username/password in the config file)");
  }
  if (raw.includes("?") || raw.includes("#")) {
    return bad(`must not contain a query or fragment, got ${quote(raw)}`);
  }
  const path = u.pathname.replace(/\/+$/, "");
  return ok({ url: `${u.origin}${path}`, host: u.host, path });
}

function parseUpstreamUrl(raw: string): Parsed<HttpUrl> {
  const r = parseHttpUrl(raw, DEFAULTS.upstream.url);
  return r.ok ? ok({ url: r.value.url, host: r.value.host }) : r;
}

function parsePublicUrl(raw: string): Parsed<string> {
  const r = parseHttpUrl(raw, "https://cache.example.com");
  if (!r.ok) return r;
  // Registry clients always call /v2/ at the host root, so a path prefix
  // would produce URLs no client can use.
  if (r.value.path !== "") {
    return bad(`must be an origin without a path (e.g. https://cache.example.com), got ${quote(raw)}`);
  }
  return ok(r.value.url);
}

function parseLogLevel(raw: string): Parsed<LogLevel> {
  const level = LOG_LEVELS.find((l) => l === raw.trim().toLowerCase());
  return level ? ok(level) : bad(`expected one of ${LOG_LEVELS.join(", ")}, got ${quote(raw)}`);
}

const STORAGE_HINT = "expected fs or s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]";
const DEFAULT_S3_REGION = "us-east-1";

/** `fs`, or `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`; credentials never come from here. */
function parseStorage(raw: string): Parsed<Storage> {
  const text = raw.trim();
  if (text === "fs") return ok({ kind: "fs" });
  const m = /^s3:\/\/([^/?#]*)((?:\/[^?#]*)?)(?:\?([^#]*))?$/.exec(text);
  if (!m) return bad(`${STORAGE_HINT}, got ${quote(raw)}`);
  const [, bucket = "", path = "", query = ""] = m;
  if (bucket.includes("@")) {
    return bad("must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or s3: in the config file");
  }
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    return bad(`invalid bucket name ${quote(bucket)}: use 3 to 63 lowercase letters, digits, "." and "-" (${STORAGE_HINT})`);
  }
  const prefix = path.replace(/^\/+|\/+$/g, "");
  if (prefix !== "" && (!/^[A-Za-z0-9._\-/]+$/.test(prefix) || prefix.split("/").some((seg) => seg === "" || seg === "." || seg === ".."))) {
    return bad(`invalid key prefix ${quote(prefix)}: use letters, digits, ".", "_", "-" and single "/" between names`);
  }
  let endpoint: string | null = null;
  let region = DEFAULT_S3_REGION;
  for (const [key, value] of new URLSearchParams(query)) {
    if (key === "endpoint") {
      const r = parseHttpUrl(value, "http://127.0.0.1:7480");
      if (!r.ok) return bad(`endpoint ${r.problem}`);
      endpoint = r.value.url;
    } else if (key === "region") {
      if (!/^[a-z0-9-]{1,32}$/.test(value)) return bad(`invalid region ${quote(value)} (e.g. us-east-1)`);
      region = value;
    } else {
      return bad(`unknown parameter ${quote(key)} (allowed: endpoint, region)`);
    }
  }
  return ok({ kind: "s3", bucket, prefix, endpoint, region });
}

function parseDataDir(raw: string): Parsed<string> {
  return raw.trim() === "" ? bad("must not be empty") : ok(raw);
}

/** "NAME=URL" as used by --upstream and STOWAGE_UPSTREAMS. */
function parseUpstreamEntry(raw: string): Parsed<{ name: string } & HttpUrl> {
  const eq = raw.indexOf("=");
  if (eq <= 0) return bad(`expected NAME=URL (e.g. docker.io=${DEFAULTS.upstream.url}), got ${quote(raw)}`);
  const name = parseUpstreamName(raw.slice(0, eq));
  if (!name.ok) return name;
  const url = parseUpstreamUrl(raw.slice(eq + 1));
  if (!url.ok) return bad(`upstream ${quote(name.value)}: URL ${url.problem}`);
  return ok({ name: name.value, ...url.value });
}

/** "NAME=USER:PASSWORD"; split at the first "=" and the first ":" after it. */
function parseCredentialsEntry(raw: string): Parsed<{ name: string; credentials: Credentials }> {
  const eq = raw.indexOf("=");
  const colon = raw.indexOf(":", eq + 1);
  if (eq <= 0 || colon < 0) {
    // The value may be nothing but a password, so it is never shown.
    return bad("expected NAME=USER:PASSWORD (value not shown because it may contain a password)");
  }
  const name = parseUpstreamName(raw.slice(0, eq));
  if (!name.ok) return name;
  const username = raw.slice(eq + 1, colon);
  const password = raw.slice(colon + 1);
  if (username === "") return bad(`credentials for ${quote(name.value)} have an empty username`);
  if (password === "") return bad(`credentials for ${quote(name.value)} have an empty password`);
  return ok({ name: name.value, credentials: { username, password } });
}

function parseConcurrency(raw: unknown): Parsed<number> {
  const text = String(raw).trim();
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= MAX_UPSTREAM_CONCURRENCY)) {
    return bad(`expected a whole number from 1 to ${MAX_UPSTREAM_CONCURRENCY} (e.g. 32), got ${quote(text)}`);
  }
  return ok(n);
}

function parseHashWorkers(raw: unknown): Parsed<number> {
  const text = String(raw).trim();
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 0 && n <= MAX_HASH_WORKERS)) {
    return bad(`expected a whole number from 0 (hash on the main thread) to ${MAX_HASH_WORKERS}, got ${quote(text)}`);
  }
  return ok(n);
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  "": 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2,
  g: 1e9, gb: 1e9, gib: 1024 ** 3, t: 1e12, tb: 1e12, tib: 1024 ** 4,
};
const SIZE_HINT = "expected a size like 512MiB, 32GiB, 2TB or a number of bytes";

/** A byte size: a number (bytes) or a decimal with a unit (KiB/MiB/GiB/TiB or kB/MB/GB/TB). */
export function parseSize(raw: unknown, min = 0): Parsed<number> {
  const text = typeof raw === "number" ? String(raw) : typeof raw === "string" ? raw.trim() : null;
  const m = text === null ? null : /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(text);
  const unit = m ? SIZE_UNITS[(m[2] ?? "").toLowerCase()] : undefined;
  if (!m || unit === undefined) return bad(`${SIZE_HINT}, got ${typeof raw === "string" ? quote(raw) : describe(raw)}`);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) return bad(`${SIZE_HINT}, got ${quote(String(raw))}`);
  if (bytes < min) return bad(`must be at least ${min} bytes, got ${quote(String(raw))}`);
  return ok(bytes);
}

const RESOLVE_HINT = "expected HOST:PORT:ADDRESS (e.g. registry.internal:443:10.0.0.5, or [::1] for IPv6)";

function parseResolve(raw: string): Parsed<ResolveOverride> {
  const m = /^([A-Za-z0-9.-]+):(\d+):(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+))$/.exec(raw.trim());
  if (!m) return bad(`${RESOLVE_HINT}, got ${quote(raw)}`);
  const port = Number(m[2]);
  if (!(port >= 1 && port <= 65535)) return bad(`port must be between 1 and 65535, got ${m[2]}`);
  const address = m[3] ?? m[4] ?? "";
  if (isIP(address) === 0) return bad(`${quote(address)} is not an IP address (${RESOLVE_HINT})`);
  return ok({ host: m[1]!.toLowerCase().replace(/\.$/, ""), port, address });
}

const KV_HINT = "expected a file path, :memory:, default (Deno Deploy's KV) or a KV Connect URL (https://…)";

function parseKv(raw: string): Parsed<KvLocation> {
  const text = raw.trim();
  if (text === "") return bad(`must not be empty; ${KV_HINT}`);
  if (text === ":memory:") return ok({ kind: "memory" });
  if (text === "default") return ok({ kind: "platform" });
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      return bad(`${KV_HINT}, got ${quote(raw)}`);
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") return bad(`${KV_HINT}, got ${quote(raw)}`);
    if (url.username || url.password) {
      return bad("must not contain credentials; put the KV Connect access token in DENO_KV_ACCESS_TOKEN");
    }
    return ok({ kind: "remote", url: url.href });
  }
  return ok({ kind: "file", path: text });
}

function parseOnOff(raw: string): Parsed<boolean> {
  const v = raw.trim().toLowerCase();
  if (["on", "true", "1", "yes"].includes(v)) return ok(true);
  if (["off", "false", "0", "no"].includes(v)) return ok(false);
  return bad(`expected on or off, got ${quote(raw)}`);
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "a mapping" : typeof v === "string" ? quote(v) : String(v);
}

function must<T>(label: string, r: Parsed<T>): T {
  if (!r.ok) throw new ConfigError(`${label}: ${r.problem}`);
  return r.value;
}

// ------------------------------------------------------------- layers
// Every source is turned into a Layer; layers are then merged in order.

type Labeled<T> = { value: T; label: string };
type UpstreamDef = { name: string } & HttpUrl;
type CredentialsDef = { name: string; credentials: Credentials; label: string };

type Layer = {
  listen?: Listen;
  dataDir?: string;
  defaultUpstream?: Labeled<string>;
  publicUrl?: string;
  tagTtlSeconds?: number;
  upstreamTimeoutSeconds?: number;
  upstreamConcurrency?: number;
  clientTimeoutSeconds?: number;
  logLevel?: LogLevel;
  storage?: Storage;
  kv?: KvLocation;
  hashWorkers?: number;
  maxBlobBytes?: number;
  diskReserveBytes?: number;
  metricsListen?: Listen;
  /** Replaces the lower layers' list as a whole. */
  resolve?: ResolveOverride[];
  /** Only the config file can hold these. */
  s3Credentials?: Labeled<S3Credentials>;
  upstreams: UpstreamDef[];
  credentials: CredentialsDef[];
  /** Upstreams whose redirects may reach private addresses (config file only). */
  privateNetworkUpstreams?: string[];
  accessControl?: Labeled<boolean>;
  htpasswd?: Labeled<string>;
  tokenTtlSeconds?: number;
  tokenService?: string;
  /** Only the config file can hold these. */
  identities?: IdentityEntry[];
  rules?: Rule[];
  oidc?: OidcProvider[];
};

type ScalarKey =
  | "listen"
  | "dataDir"
  | "defaultUpstream"
  | "publicUrl"
  | "tagTtl"
  | "upstreamTimeout"
  | "upstreamConcurrency"
  | "clientTimeout"
  | "logLevel"
  | "storage"
  | "kv"
  | "hashWorkers"
  | "accessControl"
  | "htpasswd"
  | "tokenTtl"
  | "maxBlobSize"
  | "diskReserve"
  | "metricsListen"
  | "config";

type ListKey = "upstream" | "credentials" | "resolve";

/** Raw strings from flags or environment, before validation. */
type RawSettings = {
  scalars: Partial<Record<ScalarKey, string>>;
  upstreams: string[];
  credentials: string[];
  resolve: string[];
};

export const FLAGS: Readonly<Record<ScalarKey | ListKey, string>> = {
  listen: "--listen",
  dataDir: "--data-dir",
  upstream: "--upstream",
  credentials: "--upstream-credentials",
  defaultUpstream: "--default-upstream",
  publicUrl: "--public-url",
  tagTtl: "--tag-ttl",
  upstreamTimeout: "--upstream-timeout",
  upstreamConcurrency: "--upstream-concurrency",
  clientTimeout: "--client-timeout",
  logLevel: "--log-level",
  storage: "--storage",
  kv: "--kv",
  hashWorkers: "--hash-workers",
  accessControl: "--access-control",
  htpasswd: "--htpasswd",
  tokenTtl: "--token-ttl",
  maxBlobSize: "--max-blob-size",
  diskReserve: "--disk-reserve",
  metricsListen: "--metrics-listen",
  resolve: "--resolve",
  config: "--config",
};

export const ENV_VARS: Readonly<Record<ScalarKey | ListKey, string>> = {
  listen: "STOWAGE_LISTEN",
  dataDir: "STOWAGE_DATA_DIR",
  upstream: "STOWAGE_UPSTREAMS",
  credentials: "STOWAGE_UPSTREAM_CREDENTIALS",
  defaultUpstream: "STOWAGE_DEFAULT_UPSTREAM",
  publicUrl: "STOWAGE_PUBLIC_URL",
  tagTtl: "STOWAGE_TAG_TTL",
  upstreamTimeout: "STOWAGE_UPSTREAM_TIMEOUT",
  upstreamConcurrency: "STOWAGE_UPSTREAM_CONCURRENCY",
  clientTimeout: "STOWAGE_CLIENT_TIMEOUT",
  logLevel: "STOWAGE_LOG_LEVEL",
  storage: "STOWAGE_STORAGE",
  kv: "STOWAGE_KV",
  hashWorkers: "STOWAGE_HASH_WORKERS",
  accessControl: "STOWAGE_ACCESS_CONTROL",
  htpasswd: "STOWAGE_HTPASSWD",
  tokenTtl: "STOWAGE_TOKEN_TTL",
  maxBlobSize: "STOWAGE_MAX_BLOB_SIZE",
  diskReserve: "STOWAGE_DISK_RESERVE",
  metricsListen: "STOWAGE_METRICS_LISTEN",
  resolve: "STOWAGE_RESOLVE",
  config: "STOWAGE_CONFIG",
};

const FLAG_KEYS = new Map<string, ScalarKey | ListKey>(
  Object.entries(FLAGS).map(([key, flag]) => [flag, key as ScalarKey | ListKey]),
);

function readFlags(argv: string[]): RawSettings {
  const raw: RawSettings = { scalars: {}, upstreams: [], credentials: [], resolve: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (!arg.startsWith("-")) throw new ConfigError(`unexpected argument ${quote(arg)} (see stowage serve --help)`);
    const eq = arg.indexOf("=");
    const flag = eq < 0 ? arg : arg.slice(0, eq);
    const key = FLAG_KEYS.get(flag);
    if (key === undefined) throw new ConfigError(`unknown option ${flag} (see stowage serve --help)`);
    let value: string | undefined;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      // A following "--flag" means the operator forgot this flag's value.
      if (next !== undefined && !next.startsWith("--")) {
        value = next;
        i++;
      }
    }
    if (value === undefined || value === "") throw new ConfigError(`${flag} needs a value`);
    if (key === "upstream") raw.upstreams.push(value);
    else if (key === "credentials") raw.credentials.push(value);
    else if (key === "resolve") raw.resolve.push(value);
    else raw.scalars[key] = value; // repeated scalar flags: the last one wins
  }
  return raw;
}

function readEnv(env: Record<string, string | undefined>): RawSettings {
  // Empty variables count as unset, as compose files often declare them blank.
  const get = (key: ScalarKey | ListKey) => {
    const v = env[ENV_VARS[key]];
    return v === undefined || v.trim() === "" ? undefined : v;
  };
  const scalars: Partial<Record<ScalarKey, string>> = {};
  for (const key of Object.keys(FLAGS) as (ScalarKey | ListKey)[]) {
    if (key === "upstream" || key === "credentials" || key === "resolve") continue;
    const v = get(key);
    if (v !== undefined) scalars[key] = v;
  }
  return {
    scalars,
    upstreams: (get("upstream") ?? "").split(/[\s,]+/).filter((s) => s !== ""),
    // Whitespace only, so that passwords may contain commas.
    credentials: (get("credentials") ?? "").split(/\s+/).filter((s) => s !== ""),
    resolve: (get("resolve") ?? "").split(/[\s,]+/).filter((s) => s !== ""),
  };
}

function layerFromRaw(raw: RawSettings, names: Readonly<Record<ScalarKey | ListKey, string>>): Layer {
  const s = raw.scalars;
  const layer: Layer = { upstreams: [], credentials: [] };
  if (s.listen !== undefined) layer.listen = must(names.listen, parseListen(s.listen));
  if (s.dataDir !== undefined) layer.dataDir = must(names.dataDir, parseDataDir(s.dataDir));
  if (s.defaultUpstream !== undefined) {
    const value = must(names.defaultUpstream, parseUpstreamName(s.defaultUpstream));
    layer.defaultUpstream = { value, label: names.defaultUpstream };
  }
  if (s.publicUrl !== undefined) layer.publicUrl = must(names.publicUrl, parsePublicUrl(s.publicUrl));
  if (s.tagTtl !== undefined) {
    layer.tagTtlSeconds = must(names.tagTtl, parseDuration(s.tagTtl, 0, Number.MAX_SAFE_INTEGER));
  }
  if (s.upstreamTimeout !== undefined) {
    layer.upstreamTimeoutSeconds = must(
      names.upstreamTimeout,
      parseDuration(s.upstreamTimeout, 1, MAX_UPSTREAM_TIMEOUT_SECONDS),
    );
  }
  if (s.upstreamConcurrency !== undefined) {
    layer.upstreamConcurrency = must(names.upstreamConcurrency, parseConcurrency(s.upstreamConcurrency));
  }
  if (s.clientTimeout !== undefined) {
    layer.clientTimeoutSeconds = must(names.clientTimeout, parseDuration(s.clientTimeout, 1, MAX_UPSTREAM_TIMEOUT_SECONDS));
  }
  if (s.logLevel !== undefined) layer.logLevel = must(names.logLevel, parseLogLevel(s.logLevel));
  if (s.storage !== undefined) layer.storage = must(names.storage, parseStorage(s.storage));
  if (s.kv !== undefined) layer.kv = must(names.kv, parseKv(s.kv));
  if (s.hashWorkers !== undefined) layer.hashWorkers = must(names.hashWorkers, parseHashWorkers(s.hashWorkers));
  if (s.accessControl !== undefined) {
    layer.accessControl = { value: must(names.accessControl, parseOnOff(s.accessControl)), label: names.accessControl };
  }
  if (s.htpasswd !== undefined) layer.htpasswd = { value: must(names.htpasswd, parseDataDir(s.htpasswd)), label: names.htpasswd };
  if (s.tokenTtl !== undefined) {
    layer.tokenTtlSeconds = must(names.tokenTtl, parseDuration(s.tokenTtl, MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS));
  }

  if (s.maxBlobSize !== undefined) layer.maxBlobBytes = must(names.maxBlobSize, parseSize(s.maxBlobSize, MIN_MAX_BLOB_BYTES));
  if (s.diskReserve !== undefined) layer.diskReserveBytes = must(names.diskReserve, parseSize(s.diskReserve));
  if (s.metricsListen !== undefined) layer.metricsListen = must(names.metricsListen, parseListen(s.metricsListen));
  if (raw.resolve.length > 0) layer.resolve = raw.resolve.map((r) => must(names.resolve, parseResolve(r)));

  for (const entry of raw.upstreams) {
    const def = must(names.upstream, parseUpstreamEntry(entry));
    if (layer.upstreams.some((u) => u.name === def.name)) {
      throw new ConfigError(`${names.upstream}: upstream ${quote(def.name)} is given more than once`);
    }
    layer.upstreams.push(def);
  }
  for (const entry of raw.credentials) {
    const def = must(names.credentials, parseCredentialsEntry(entry));
    if (layer.credentials.some((c) => c.name === def.name)) {
      throw new ConfigError(`${names.credentials}: credentials for ${quote(def.name)} are given more than once`);
    }
    layer.credentials.push({ ...def, label: names.credentials });
  }
  return layer;
}

// -------------------------------------------------------- config file

/** Adapts a value parser to zod so file errors carry their path. */
function zValue<T>(parse: (raw: unknown) => Parsed<T>) {
  return z.unknown().transform((raw, ctx): T => {
    const r = parse(raw);
    if (r.ok) return r.value;
    ctx.addIssue({ code: "custom", message: r.problem });
    return z.NEVER;
  });
}

function fromString<T>(parse: (raw: string) => Parsed<T>) {
  return (raw: unknown): Parsed<T> =>
    typeof raw === "string" ? parse(raw) : bad(`expected a string, got ${describe(raw)}`);
}

// Secrets get a type check only: their value must never reach a message.
const secretString = z.string({ error: "expected a string (quote it in YAML)" }).min(1, { error: "must not be empty" });

const fileUpstreamSchema = z.strictObject({
  name: zValue(fromString(parseUpstreamName)),
  url: zValue(fromString(parseUpstreamUrl)),
  username: secretString.nullish(),
  password: secretString.nullish(),
  passwordEnv: z.string({ error: "expected the name of an environment variable" }).min(1).nullish(),
  passwordFile: z.string({ error: "expected a file path" }).min(1).nullish(),
  allowPrivateNetwork: z.boolean({ error: "expected true or false" }).nullish(),
});

const identityName = z
  .string({ error: "expected a name" })
  .regex(IDENTITY_NAME, { error: "use letters, digits, '.', '_', '@' or '-' (at most 128)" })
  .refine((n) => n !== "anonymous", { error: '"anonymous" is reserved for clients without credentials' });
// Never echo the value: a mistake here is often a plain password pasted in.
const bcryptHash = z.string({ error: "expected a bcrypt hash (create one with stowage user hash)" }).regex(BCRYPT_HASH, { error: "expected a bcrypt hash ($2y$/$2a$/$2b$; create one with stowage user hash)" });
const glob = z.string().min(1).max(256).regex(/^[A-Za-z0-9._\-/*?]+$/, { error: "expected a name pattern with * or ** wildcards" });

const fileUserSchema = z.strictObject({ name: identityName, passwordHash: bcryptHash });
const fileRobotSchema = z.strictObject({ name: identityName, secretHash: bcryptHash });
/** https, or plain http on the loopback interface (for a test issuer). */
function parseIssuerUrl(raw: string): Parsed<string> {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return bad(`expected an https:// URL, got ${quote(raw)}`);
  }
  const loopback = u.hostname === "127.0.0.1" || u.hostname === "localhost" || u.hostname === "[::1]";
  if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback)) return bad(`must be an https:// URL, got ${quote(raw)}`);
  if (u.username || u.password || u.search || u.hash) return bad(`must be a plain URL without credentials, query or fragment, got ${quote(raw)}`);
  return ok(raw);
}

const fileOidcSchema = z.strictObject({
  issuer: zValue(fromString(parseIssuerUrl)),
  audience: z.string().min(1).max(512),
  jwksUrl: zValue(fromString(parseIssuerUrl)).nullish(),
  identity: identityName,
  claims: z.record(z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/), z.string().min(1).max(512)).default({}),
  /** Accept every token of this issuer and audience; without it, claims must say whose. */
  allowAnyClaims: z.boolean({ error: "expected true or false" }).default(false),
});

const fileRuleSchema = z.strictObject({
  upstream: glob.default("*"),
  repository: glob,
  pull: z.array(z.string().min(1), { error: 'expected a list of identities, "anonymous" or "*"' }),
});

const fileS3Schema = z.strictObject({
  accessKeyId: secretString,
  secretAccessKey: secretString,
  sessionToken: secretString.nullish(),
});

const fileSchema = z.strictObject({
  listen: zValue(fromString(parseListen)).nullish(),
  dataDir: zValue(fromString(parseDataDir)).nullish(),
  defaultUpstream: zValue(fromString(parseUpstreamName)).nullish(),
  publicUrl: zValue(fromString(parsePublicUrl)).nullish(),
  tagTtl: zValue((raw) => parseDuration(raw, 0, Number.MAX_SAFE_INTEGER)).nullish(),
  upstreamTimeout: zValue((raw) => parseDuration(raw, 1, MAX_UPSTREAM_TIMEOUT_SECONDS)).nullish(),
  upstreamConcurrency: zValue(parseConcurrency).nullish(),
  clientTimeout: zValue((raw) => parseDuration(raw, 1, MAX_UPSTREAM_TIMEOUT_SECONDS)).nullish(),
  logLevel: zValue(fromString(parseLogLevel)).nullish(),
  upstreams: z.array(fileUpstreamSchema, { error: "expected a list of {name, url} entries" }).nullish(),
  accessControl: z.boolean({ error: "expected true or false" }).nullish(),
  htpasswd: zValue(fromString(parseDataDir)).nullish(),
  tokenTtl: zValue((raw) => parseDuration(raw, MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS)).nullish(),
  tokenService: z.string().regex(/^[\x21-\x7e]{1,128}$/, { error: "expected a short printable name" }).nullish(),
  users: z.array(fileUserSchema).nullish(),
  robots: z.array(fileRobotSchema).nullish(),
  rules: z.array(fileRuleSchema).nullish(),
  oidc: z.array(fileOidcSchema).nullish(),
  storage: zValue(fromString(parseStorage)).nullish(),
  kv: zValue(fromString(parseKv)).nullish(),
  hashWorkers: zValue(parseHashWorkers).nullish(),
  maxBlobSize: zValue((raw) => parseSize(raw, MIN_MAX_BLOB_BYTES)).nullish(),
  diskReserve: zValue((raw) => parseSize(raw)).nullish(),
  metricsListen: zValue(fromString(parseListen)).nullish(),
  resolve: z.array(zValue(fromString(parseResolve)), { error: "expected a list of HOST:PORT:ADDRESS entries" }).nullish(),
  s3: fileS3Schema.nullish(),
});

type FileUpstream = z.output<typeof fileUpstreamSchema>;


function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out;
}

function zodProblem(file: string, issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  const prefix = where === "" ? file : `${file}: ${where}`;
  if (issue.code === "unrecognized_keys") {
    const nested: Record<string, { shape: object }> = {
      upstreams: fileUpstreamSchema,
      users: fileUserSchema,
      robots: fileRobotSchema,
      rules: fileRuleSchema,
      oidc: fileOidcSchema,
      s3: fileS3Schema,
    };
    const allowed = Object.keys(where === "" ? fileSchema.shape : (nested[String(issue.path[0])] ?? fileUpstreamSchema).shape);
    const keys = issue.keys.map((k) => quote(k)).join(", ");
    return `${prefix}: unknown key ${keys} (allowed: ${allowed.join(", ")})`;
  }
  if (issue.code === "invalid_type" && issue.path.length === 0) {
    return `${file}: expected a mapping of settings at the top level`;
  }
  return `${prefix}: ${issue.message}`;
}

/** Parse JSON or YAML without ever echoing file content (it may hold passwords). */
function parseFileText(file: string, text: string): unknown {
  if (text.trimStart().startsWith("{")) {
    try {
      return JSON.parse(text);
    } catch (e) {
      const pos = /at position (\d+)/.exec(e instanceof Error ? e.message : "");
      throw new ConfigError(`${file}: invalid JSON${pos ? ` at character ${pos[1]}` : ""}; fix the syntax or use YAML`);
    }
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const err = doc.errors[0];
  if (err) {
    const at = err.linePos?.[0];
    // The parser's message can quote tokens from the file; keep only the description.
    const what = (err.message.split("\n")[0] ?? "")
      .replace(/ at line \d+, column \d+:?$/, "")
      .replace(/:\s*".*$/, "");
    throw new ConfigError(`${file}: invalid YAML${at ? ` at line ${at.line}, column ${at.col}` : ""}: ${what}`);
  }
  return doc.toJS() ?? {};
}

function fileCredentials(
  file: string,
  index: number,
  u: FileUpstream,
  src: ConfigSources,
): Credentials | undefined {
  const where = `${file}: upstreams[${index}]`;
  const sources = [u.password, u.passwordEnv, u.passwordFile].filter((v) => v != null).length;
  if (sources > 1) throw new ConfigError(`${where}: use only one of password, passwordEnv and passwordFile`);
  if (u.username == null) {
    if (sources > 0) throw new ConfigError(`${where}: a password is given without a username; add username`);
    return undefined;
  }
  if (sources === 0) {
    throw new ConfigError(`${where}: username is given without a password; add password, passwordEnv or passwordFile`);
  }
  let password: string;
  if (u.passwordEnv != null) {
    const v = src.env[u.passwordEnv];
    if (v === undefined || v === "") {
      throw new ConfigError(`${where}.passwordEnv: environment variable ${u.passwordEnv} is not set or empty`);
    }
    password = v;
  } else if (u.passwordFile != null) {
    password = readText(`${where}.passwordFile`, u.passwordFile, src).trim();
    if (password === "") throw new ConfigError(`${where}.passwordFile: file ${quote(u.passwordFile)} is empty`);
  } else {
    password = u.password ?? "";
  }
  return { username: u.username, password };
}

function readText(label: string, path: string, src: ConfigSources): string {
  try {
    return src.readFile(path);
  } catch (e) {
    const why = e instanceof Error ? (e.message.split("\n")[0] ?? "") : String(e);
    throw new ConfigError(`${label}: cannot read ${quote(path)} (${why})`);
  }
}

function fileLayer(label: string, file: string, src: ConfigSources): Layer {
  const text = readText(label, file, src);
  const result = fileSchema.safeParse(parseFileText(file, text));
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new ConfigError(issue ? zodProblem(file, issue) : `${file}: invalid configuration`);
  }
  const f = result.data;
  const layer: Layer = { upstreams: [], credentials: [] };
  if (f.listen != null) layer.listen = f.listen;
  if (f.dataDir != null) layer.dataDir = f.dataDir;
  if (f.defaultUpstream != null) layer.defaultUpstream = { value: f.defaultUpstream, label: `${file}: defaultUpstream` };
  if (f.publicUrl != null) layer.publicUrl = f.publicUrl;
  if (f.tagTtl != null) layer.tagTtlSeconds = f.tagTtl;
  if (f.upstreamTimeout != null) layer.upstreamTimeoutSeconds = f.upstreamTimeout;
  if (f.upstreamConcurrency != null) layer.upstreamConcurrency = f.upstreamConcurrency;
  if (f.clientTimeout != null) layer.clientTimeoutSeconds = f.clientTimeout;
  if (f.logLevel != null) layer.logLevel = f.logLevel;
  if (f.storage != null) layer.storage = f.storage;
  if (f.kv != null) layer.kv = f.kv;
  if (f.hashWorkers != null) layer.hashWorkers = f.hashWorkers;
  if (f.maxBlobSize != null) layer.maxBlobBytes = f.maxBlobSize;
  if (f.diskReserve != null) layer.diskReserveBytes = f.diskReserve;
  if (f.metricsListen != null) layer.metricsListen = f.metricsListen;
  if (f.resolve != null) layer.resolve = f.resolve;
  if (f.s3 != null) {
    const { accessKeyId, secretAccessKey, sessionToken } = f.s3;
    layer.s3Credentials = { value: { accessKeyId, secretAccessKey, ...(sessionToken != null ? { sessionToken } : {}) }, label: `${file}: s3` };
  }
  if (f.accessControl != null) layer.accessControl = { value: f.accessControl, label: `${file}: accessControl` };
  if (f.htpasswd != null) layer.htpasswd = { value: f.htpasswd, label: `${file}: htpasswd` };
  if (f.tokenTtl != null) layer.tokenTtlSeconds = f.tokenTtl;
  if (f.tokenService != null) layer.tokenService = f.tokenService;
  if (f.users != null || f.robots != null) {
    layer.identities = [
      ...(f.users ?? []).map((u) => ({ name: u.name, kind: "user" as const, hash: u.passwordHash, source: `${file}: users` })),
      ...(f.robots ?? []).map((r) => ({ name: r.name, kind: "robot" as const, hash: r.secretHash, source: `${file}: robots` })),
    ];
  }
  if (f.rules != null) layer.rules = f.rules;
  if (f.oidc != null) {
    f.oidc.forEach((o, i) => {
      if (Object.keys(o.claims).length === 0 && !o.allowAnyClaims) {
        // Without a condition, any job of that CI (on GitHub Actions: any repository's workflow) would pass.
        throw new ConfigError(
          `${file}: oidc[${i}] (issuer ${o.issuer}, identity ${o.identity}) has no claims: conditions, so every token that issuer signs for this audience would be accepted; ` +
            "add claims (e.g. repository_owner: my-org), or set allowAnyClaims: true if that is really meant",
        );
      }
    });
    layer.oidc = f.oidc.map((o) => ({ issuer: o.issuer, audience: o.audience, jwksUrl: o.jwksUrl ?? null, identity: o.identity, claims: o.claims }));
  }
  (f.upstreams ?? []).forEach((u, i) => {
    const first = layer.upstreams.findIndex((d) => d.name === u.name);
    if (first >= 0) {
      throw new ConfigError(`${file}: upstreams[${i}].name: duplicate upstream ${quote(u.name)} (also upstreams[${first}])`);
    }
    layer.upstreams.push({ name: u.name, ...u.url });
    if (u.allowPrivateNetwork) (layer.privateNetworkUpstreams ??= []).push(u.name);
    const credentials = fileCredentials(file, i, u, src);
    if (credentials) layer.credentials.push({ name: u.name, credentials, label: `${file}: upstreams[${i}]` });
  });
  return layer;
}

// -------------------------------------------------------------- merge

const DOCKER_HUB_HOSTS = ["docker.io", "index.docker.io", "registry-1.docker.io"];

function toUpstream(def: UpstreamDef, credentials: Credentials | undefined, allowPrivateNetwork: boolean): Upstream {
  const dockerHub = DOCKER_HUB_HOSTS.includes(def.host);
  const upstream: Upstream = {
    name: def.name,
    url: def.url,
    host: def.host,
    aliases: dockerHub ? [...DOCKER_HUB_HOSTS] : [def.host],
    dockerHub,
    allowPrivateNetwork,
  };
  if (credentials) upstream.credentials = credentials;
  return upstream;
}

/** Lowest-precedence layer first. */
function merge(layers: Layer[]): Config {
  const pick = <K extends keyof Layer>(key: K): Layer[K] | undefined => {
    let value: Layer[K] | undefined;
    for (const layer of layers) if (layer[key] !== undefined) value = layer[key];
    return value;
  };

  // Later sources replace the URL of a name in place; new names append.
  const defs = new Map<string, UpstreamDef>();
  for (const layer of layers) for (const def of layer.upstreams) defs.set(def.name, def);
  if (defs.size === 0) {
    const { name, url } = DEFAULTS.upstream;
    defs.set(name, { name, url, host: new URL(url).host });
  }
  const known = () => [...defs.keys()].join(", ");

  const creds = new Map<string, CredentialsDef>();
  for (const layer of layers) for (const c of layer.credentials) creds.set(c.name, c);
  for (const c of creds.values()) {
    if (!defs.has(c.name)) {
      throw new ConfigError(`${c.label}: credentials are given for ${quote(c.name)}, which is not a configured upstream (upstreams: ${known()})`);
    }
  }

  const privateNetwork = new Set(layers.flatMap((l) => l.privateNetworkUpstreams ?? []));
  const upstreams = [...defs.values()].map((d) => toUpstream(d, creds.get(d.name)?.credentials, privateNetwork.has(d.name)));
  const chosen = pick("defaultUpstream");
  if (chosen && !defs.has(chosen.value)) {
    throw new ConfigError(`${chosen.label}: ${quote(chosen.value)} is not a configured upstream (upstreams: ${known()})`);
  }

  const access = accessFrom(layers, pick);
  return {
    ...(access ? { access } : {}),
    listen: pick("listen") ?? must("default listen", parseListen(DEFAULTS.listen)),
    dataDir: pick("dataDir") ?? DEFAULTS.dataDir,
    upstreams,
    defaultUpstream: chosen?.value ?? upstreams[0]?.name ?? DEFAULTS.upstream.name,
    publicUrl: pick("publicUrl") ?? null,
    tagTtlSeconds: pick("tagTtlSeconds") ?? DEFAULTS.tagTtlSeconds,
    upstreamTimeoutSeconds: pick("upstreamTimeoutSeconds") ?? DEFAULTS.upstreamTimeoutSeconds,
    upstreamConcurrency: pick("upstreamConcurrency") ?? DEFAULTS.upstreamConcurrency,
    clientTimeoutSeconds: pick("clientTimeoutSeconds") ?? DEFAULTS.clientTimeoutSeconds,
    logLevel: pick("logLevel") ?? DEFAULTS.logLevel,
    storage: storageFrom(pick("storage"), pick("s3Credentials")),
    kv: pick("kv") ?? null,
    hashWorkers: pick("hashWorkers") ?? DEFAULTS.hashWorkers,
    resolve: pick("resolve") ?? [],
    maxBlobBytes: pick("maxBlobBytes") ?? DEFAULTS.maxBlobBytes,
    diskReserveBytes: pick("diskReserveBytes") ?? DEFAULTS.diskReserveBytes,
    metricsListen: pick("metricsListen") ?? null,
  };
}

function storageFrom(storage: Storage | undefined, credentials: Labeled<S3Credentials> | undefined): Storage {
  const chosen = storage ?? { kind: "fs" as const };
  if (!credentials) return chosen;
  if (chosen.kind !== "s3") {
    throw new ConfigError(`${credentials.label}: S3 credentials are given, but blobs are stored on the filesystem; set storage: s3://BUCKET (or --storage), or remove s3:`);
  }
  return { ...chosen, credentials: credentials.value };
}

/** Access control is on when asked for, or implied by --htpasswd; identities are read later (they need files). */
function accessFrom(layers: Layer[], pick: <K extends keyof Layer>(key: K) => Layer[K] | undefined): AccessConfig | undefined {
  const asked = pick("accessControl");
  const htpasswd = pick("htpasswd");
  if (asked && !asked.value && htpasswd) {
    throw new ConfigError(`${htpasswd.label} turns access control on, but ${asked.label} turns it off; remove one of them`);
  }
  if (!(asked?.value ?? htpasswd !== undefined)) {
    // Users or rules without access control would silently leave every pull anonymous.
    if (asked === undefined && (pick("identities") ?? pick("rules") ?? pick("oidc")) !== undefined) {
      throw new ConfigError(
        "the config file has users, robots, rules or oidc, but access control is off: add accessControl: true (or --access-control on); to turn it off on purpose, give --access-control off",
      );
    }
    return undefined;
  }
  const identities = [...(pick("identities") ?? [])];
  for (const [i, e] of identities.entries()) {
    if (identities.findIndex((o) => o.name === e.name) !== i) {
      throw new ConfigError(`${e.source}: ${quote(e.name)} is defined more than once (users and robots share one name space)`);
    }
  }
  return {
    service: pick("tokenService") ?? DEFAULTS.tokenService,
    issuer: DEFAULTS.tokenIssuer,
    tokenTtlSeconds: pick("tokenTtlSeconds") ?? DEFAULTS.tokenTtlSeconds,
    identities,
    rules: pick("rules") ?? [],
    oidc: pick("oidc") ?? [],
  };
}

function addHtpasswdUsers(access: AccessConfig, file: Labeled<string>, src: ConfigSources): void {
  const parsed = parseHtpasswd(readText(file.label, file.value, src));
  const first = parsed.problems[0];
  if (first) throw new ConfigError(`${file.label}: ${quote(file.value)} ${first}`);
  for (const e of parsed.entries) {
    if (access.identities.some((o) => o.name === e.name)) {
      throw new ConfigError(`${file.label}: user ${quote(e.name)} is also defined in the config file; keep one`);
    }
    access.identities.push({ name: e.name, kind: "user", hash: e.hash, source: file.value });
  }
}

// ------------------------------------------------------------- public

export function loadConfig(src: ConfigSources): Config {
  const flags = readFlags(src.argv);
  const env = readEnv(src.env);
  const layers: Layer[] = [];
  const file = flags.scalars.config ?? env.scalars.config;
  if (file !== undefined) {
    const label = flags.scalars.config !== undefined ? FLAGS.config : ENV_VARS.config;
    layers.push(fileLayer(label, file, src));
  }
  layers.push(layerFromRaw(env, ENV_VARS), layerFromRaw(flags, FLAGS));
  const config = merge(layers);
  let htpasswd: Labeled<string> | undefined;
  for (const layer of layers) if (layer.htpasswd) htpasswd = layer.htpasswd;
  if (config.access && htpasswd) addHtpasswdUsers(config.access, htpasswd, src);
  return config;
}

/** The configuration for the start-up log, with every password replaced. */
export function redactedConfig(c: Config): unknown {
  return {
    ...c,
    ...(c.access
      ? { access: { ...c.access, identities: c.access.identities.map((i) => `${i.kind} ${i.name} (${i.source})`) } }
      : {}),
    ...(c.storage.kind === "s3" && c.storage.credentials
      ? { storage: { ...c.storage, credentials: { accessKeyId: "***", secretAccessKey: "***" } } }
      : {}),
    upstreams: c.upstreams.map((u) =>
      u.credentials ? { ...u, credentials: { username: u.credentials.username, password: "***" } } : { ...u },
    ),
  };
}
