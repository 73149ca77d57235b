/**
 * Value parsers for settings that are not about upstreams: addresses, durations, sizes,
 * counts, storage and KV locations. Each returns a problem without the setting's name.
 */
import type { LogLevel } from "../log.ts";
import type { Listen } from "../runtime/runtime.ts";
import type { KvLocation } from "../kv/location.ts";
import type { Storage } from "../storage/storage-config.ts";
import { parseHttpUrl } from "./upstream-values.ts";
import { bad, describe, ok, type Parsed, quote } from "./problems.ts";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

// Clients refetch tokens below a minute; a day bounds the harm of a leaked token.
export const MIN_TOKEN_TTL_SECONDS = 60;
export const MAX_TOKEN_TTL_SECONDS = 86_400;
// Node's setTimeout fires immediately for delays above 2^31-1 ms (~24.8 days),
// so an unbounded timeout would silently become no timeout at all.
export const MAX_TIMEOUT_SECONDS = 86_400;
const MAX_UPSTREAM_CONCURRENCY = 1024;
const MAX_HASH_WORKERS = 16;
// Below this, ordinary base image layers would not fit: almost certainly a unit mistake.
export const MIN_MAX_BLOB_BYTES = 1024 ** 2;

export function parseListen(raw: string): Parsed<Listen> {
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

const DURATION_HINT = "expected a duration like 90, 90s, 5m, 1h30m or 90d";

/** Seconds, from a number or text like 90, 90s, 5m, 1h30m, 90d, within [min, max]. */
export function parseDuration(raw: unknown, min: number, max: number): Parsed<number> {
  let seconds: number;
  if (typeof raw === "number") {
    if (!Number.isSafeInteger(raw)) return bad(`${DURATION_HINT}, got ${raw}`);
    seconds = raw;
  } else if (typeof raw === "string") {
    const text = raw.trim();
    const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text);
    if (/^\d+$/.test(text)) {
      seconds = Number(text);
    } else if (m && text !== "") {
      seconds = Number(m[1] ?? 0) * 86_400 + Number(m[2] ?? 0) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0);
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

export function parseLogLevel(raw: string): Parsed<LogLevel> {
  const level = LOG_LEVELS.find((l) => l === raw.trim().toLowerCase());
  return level ? ok(level) : bad(`expected one of ${LOG_LEVELS.join(", ")}, got ${quote(raw)}`);
}

/** A directory or file name (--data-dir, --htpasswd): anything but blank. */
export function parsePath(raw: string): Parsed<string> {
  return raw.trim() === "" ? bad("must not be empty") : ok(raw);
}

export function parseConcurrency(raw: unknown): Parsed<number> {
  const text = String(raw).trim();
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= MAX_UPSTREAM_CONCURRENCY)) {
    return bad(`expected a whole number from 1 to ${MAX_UPSTREAM_CONCURRENCY} (e.g. 32), got ${quote(text)}`);
  }
  return ok(n);
}

export function parseHashWorkers(raw: unknown): Parsed<number> {
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

/** A duration, or `off` (also 0 and false in the file) for none: --cache-ttl. */
export function parseDurationOrOff(raw: unknown, min: number, max: number): Parsed<number | null> {
  if (raw === false || raw === 0 || (typeof raw === "string" && ["off", "0"].includes(raw.trim().toLowerCase()))) return ok(null);
  return parseDuration(raw, min, max);
}

/** A size, or `off` (also 0 and false in the file) for no limit: --max-size. */
export function parseSizeOrOff(raw: unknown, min: number): Parsed<number | null> {
  if (raw === false || raw === 0 || (typeof raw === "string" && ["off", "0"].includes(raw.trim().toLowerCase()))) return ok(null);
  return parseSize(raw, min);
}

export const ADMIN_PAGE_MODES = ["off", "loopback", "open"] as const;
export type AdminPageMode = (typeof ADMIN_PAGE_MODES)[number];

export function parseAdminPage(raw: string): Parsed<AdminPageMode> {
  const mode = ADMIN_PAGE_MODES.find((m) => m === raw.trim().toLowerCase());
  return mode ? ok(mode) : bad(`expected one of ${ADMIN_PAGE_MODES.join(", ")}, got ${quote(raw)}`);
}

export function parseOnOff(raw: string): Parsed<boolean> {
  const v = raw.trim().toLowerCase();
  if (["on", "true", "1", "yes"].includes(v)) return ok(true);
  if (["off", "false", "0", "no"].includes(v)) return ok(false);
  return bad(`expected on or off, got ${quote(raw)}`);
}

/** The file's form of a switch: YAML/JSON true or false only. */
export function parseBoolean(raw: unknown): Parsed<boolean> {
  return typeof raw === "boolean" ? ok(raw) : bad("expected true or false");
}

const STORAGE_HINT = "expected fs or s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]";
const DEFAULT_S3_REGION = "us-east-1";

/** `fs`, or `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`; credentials never come from here. */
export function parseStorage(raw: string): Parsed<Storage> {
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

const KV_HINT = "expected a file path, :memory:, default (Deno Deploy's KV) or a KV Connect URL (https://…)";

export function parseKv(raw: string): Parsed<KvLocation> {
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
