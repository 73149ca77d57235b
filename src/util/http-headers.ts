/**
 * A message's Content-Length as a number, or null when it has none or it is not a plain
 * decimal (a length we cannot trust is treated as no length at all).
 */
export function contentLength(headers: Headers): number | null {
  const value = headers.get("content-length");
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}
