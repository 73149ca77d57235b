/** Byte encodings, each written once. */

/** Lower-case hex, two digits a byte (as in digests). */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Standard base64 with padding (RFC 4648 §4), as in Basic credentials. */
export function base64(bytes: Uint8Array): string {
  // btoa takes a "binary string": one character per byte.
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** base64url without padding (RFC 4648 §5): safe in URLs, headers and file names. */
export function base64url(bytes: Uint8Array): string {
  return base64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** JSON from bytes, or undefined (never a JSON value) when they are not valid UTF-8 JSON. */
export function parseJsonBytes(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
}
