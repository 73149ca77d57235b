/**
 * A message's Content-Length as a number, or null when it has none or it is not a plain
 * decimal (a length we cannot trust is treated as no length at all).
 */
export function contentLength(headers: Headers): number | null {
  const value = headers.get("content-length");
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}

/** Retry-After in whole seconds, from either of its forms (delta-seconds or an HTTP date); undefined when absent or unreadable. */
export function retryAfterSeconds(value: string | null, now: number = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds);
  // HTTP dates name a day or month ("Wed, 02 Dec 2026 12:01:00 GMT"); Date.parse would also take "-5" as a year.
  const date = /[A-Za-z]/.test(value) ? Date.parse(value) : NaN;
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}
