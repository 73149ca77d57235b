// Label values must come from closed sets: every distinct value is a series
// kept for the life of the process, so a value a client or upstream controls
// (a made-up HTTP method, an odd status) would grow memory without bound.

const METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** The request method, or "other" for anything outside the usual seven (methods are case-sensitive). */
export function methodLabel(method: string): string {
  return METHODS.has(method) ? method : "other";
}

/** An HTTP status code 100-599 as is; anything else is "other". */
export function statusLabel(status: number | string): string {
  const n = typeof status === "number" ? status : /^\d{3}$/.test(status) ? Number(status) : NaN;
  return Number.isInteger(n) && n >= 100 && n <= 599 ? String(n) : "other";
}

const GC_REASONS: ReadonlySet<string> = new Set(["ttl", "size", "purge", "orphan", "missing"]);

/** Why the collector removed something (see src/gc/collector.ts), or "other". */
export function gcReasonLabel(reason: string): string {
  return GC_REASONS.has(reason) ? reason : "other";
}
