/**
 * Reading an Authorization header. Pure; every malformed shape is a refusal
 * with a reason, never an exception.
 */
export type Presented =
  | { kind: "none" }
  | { kind: "basic"; username: string; password: string }
  | { kind: "bearer"; token: string }
  | { kind: "invalid"; reason: string };

// Bounded so a huge header cannot make us decode or verify megabytes.
const MAX_HEADER = 8192;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function readAuthorization(header: string | null): Presented {
  if (header === null) return { kind: "none" };
  if (header.length > MAX_HEADER) return { kind: "invalid", reason: "the Authorization header is too long" };
  const m = /^([A-Za-z]+)(?: +(.*))?$/.exec(header.trim());
  if (!m) return { kind: "invalid", reason: "the Authorization header is malformed" };
  const scheme = m[1]!.toLowerCase();
  const value = (m[2] ?? "").trim();
  if (scheme === "bearer") {
    if (!JWT_SHAPE.test(value)) return { kind: "invalid", reason: "the bearer token is malformed" };
    return { kind: "bearer", token: value };
  }
  if (scheme === "basic") {
    const decoded = decodeBasic(value);
    return decoded ?? { kind: "invalid", reason: "the Basic credentials are malformed (expected base64 of USER:PASSWORD in UTF-8)" };
  }
  return { kind: "invalid", reason: `the ${JSON.stringify(m[1])} authorization scheme is not supported; use Basic or Bearer` };
}

function decodeBasic(value: string): { kind: "basic"; username: string; password: string } | null {
  if (!BASE64.test(value)) return null;
  let text: string;
  try {
    const bytes = Uint8Array.from(atob(value), (c) => c.charCodeAt(0));
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
  const colon = text.indexOf(":");
  if (colon <= 0) return null;
  return { kind: "basic", username: text.slice(0, colon), password: text.slice(colon + 1) };
}
