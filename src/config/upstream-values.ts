/**
 * Value parsers for upstreams and URLs: names, registry and public URLs, NAME=URL and
 * NAME=USER:PASSWORD entries, --resolve overrides and OIDC issuer URLs. None of them
 * ever echoes a password.
 */
import { isIP } from "node:net";
import type { Credentials, ResolveOverride } from "../upstream/upstream.ts";
import { bad, ok, type Parsed, quote } from "./problems.ts";

/** The upstream used when none is configured. */
export const DEFAULT_UPSTREAM = { name: "docker.io", url: "https://registry-1.docker.io" } as const;

const NAME_PATTERN = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;

export function parseUpstreamName(raw: string): Parsed<string> {
  if (NAME_PATTERN.test(raw)) return ok(raw);
  return bad(
    `invalid upstream name ${quote(raw)}: use lowercase letters and digits separated by ".", "_", "__" or "-" (e.g. docker.io)`,
  );
}

export type HttpUrl = { url: string; host: string };

/** Shared checks for upstream, public and endpoint URLs; never echoes embedded credentials. */
export function parseHttpUrl(raw: string, example: string): Parsed<HttpUrl & { path: string }> {
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

export function parseUpstreamUrl(raw: string): Parsed<HttpUrl> {
  const r = parseHttpUrl(raw, DEFAULT_UPSTREAM.url);
  return r.ok ? ok({ url: r.value.url, host: r.value.host }) : r;
}

export function parsePublicUrl(raw: string): Parsed<string> {
  const r = parseHttpUrl(raw, "https://cache.example.com");
  if (!r.ok) return r;
  // Registry clients always call /v2/ at the host root, so a path prefix
  // would produce URLs no client can use.
  if (r.value.path !== "") {
    return bad(`must be an origin without a path (e.g. https://cache.example.com), got ${quote(raw)}`);
  }
  return ok(r.value.url);
}

export type UpstreamDef = { name: string } & HttpUrl;

/** "NAME=URL" as used by --upstream and STOWAGE_UPSTREAMS. */
export function parseUpstreamEntry(raw: string): Parsed<UpstreamDef> {
  const eq = raw.indexOf("=");
  if (eq <= 0) return bad(`expected NAME=URL (e.g. docker.io=${DEFAULT_UPSTREAM.url}), got ${quote(raw)}`);
  const name = parseUpstreamName(raw.slice(0, eq));
  if (!name.ok) return name;
  const url = parseUpstreamUrl(raw.slice(eq + 1));
  if (!url.ok) return bad(`upstream ${quote(name.value)}: URL ${url.problem}`);
  return ok({ name: name.value, ...url.value });
}

export type CredentialsDef = { name: string; credentials: Credentials };

/** "NAME=USER:PASSWORD"; split at the first "=" and the first ":" after it. */
export function parseCredentialsEntry(raw: string): Parsed<CredentialsDef> {
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

const RESOLVE_HINT = "expected HOST:PORT:ADDRESS (e.g. registry.internal:443:10.0.0.5, or [::1] for IPv6)";

export function parseResolve(raw: string): Parsed<ResolveOverride> {
  const m = /^([A-Za-z0-9.-]+):(\d+):(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+))$/.exec(raw.trim());
  if (!m) return bad(`${RESOLVE_HINT}, got ${quote(raw)}`);
  const port = Number(m[2]);
  if (!(port >= 1 && port <= 65535)) return bad(`port must be between 1 and 65535, got ${m[2]}`);
  const address = m[3] ?? m[4] ?? "";
  if (isIP(address) === 0) return bad(`${quote(address)} is not an IP address (${RESOLVE_HINT})`);
  return ok({ host: m[1]!.toLowerCase().replace(/\.$/, ""), port, address });
}

/** https, or plain http on the loopback interface (for a test issuer). */
export function parseIssuerUrl(raw: string): Parsed<string> {
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
