/**
 * Recognises distribution API paths. Repository names contain slashes, so the
 * name is everything between /v2/ and the last /manifests/, /blobs/ or /tags/.
 * Pure: no I/O, tested on tables.
 */
export type Route =
  | { kind: "base" }
  | { kind: "manifest"; name: string; reference: string }
  | { kind: "blob"; name: string; digest: string }
  | { kind: "blob-upload"; name: string }
  | { kind: "tags"; name: string }
  | { kind: "referrers"; name: string; digest: string }
  | { kind: "catalog" }
  | { kind: "healthz" }
  | { kind: "readyz" }
  | { kind: "metrics" }
  | { kind: "token" }
  | { kind: "jwks" }
  /** The operator's page and everything under /-/ (src/admin/). */
  | { kind: "admin" }
  | { kind: "not-found" };

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;
const BLOB_UPLOAD = /^\/v2\/(.+)\/blobs\/uploads(?:\/[^/]*)?$/;
const BLOB = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
const TAGS = /^\/v2\/(.+)\/tags\/list$/;
const REFERRERS = /^\/v2\/(.+)\/referrers\/([^/]+)$/;

export function matchRoute(pathname: string): Route {
  if (pathname === "/v2" || pathname === "/v2/") return { kind: "base" };
  if (pathname === "/healthz") return { kind: "healthz" };
  if (pathname === "/readyz") return { kind: "readyz" };
  if (pathname === "/metrics") return { kind: "metrics" };
  if (pathname === "/v2/_catalog") return { kind: "catalog" };
  if (pathname === "/token") return { kind: "token" };
  if (pathname === "/token/jwks.json") return { kind: "jwks" };
  if (pathname === "/-" || pathname.startsWith("/-/")) return { kind: "admin" };
  let m = BLOB_UPLOAD.exec(pathname);
  if (m) return { kind: "blob-upload", name: m[1]! };
  m = MANIFEST.exec(pathname);
  if (m) return { kind: "manifest", name: m[1]!, reference: decodeSafe(m[2]!) };
  m = BLOB.exec(pathname);
  if (m) return { kind: "blob", name: m[1]!, digest: decodeSafe(m[2]!) };
  m = TAGS.exec(pathname);
  if (m) return { kind: "tags", name: m[1]! };
  m = REFERRERS.exec(pathname);
  if (m) return { kind: "referrers", name: m[1]!, digest: decodeSafe(m[2]!) };
  return { kind: "not-found" };
}

/** `sha256%3Aabc` is what some clients send; a bad escape stays as is (and then fails validation). */
function decodeSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
