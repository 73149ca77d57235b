/**
 * Where an upstream's configured credentials may go. Pure: decided from URLs
 * alone, with the Public Suffix List (through tldts) for what counts as one site.
 *
 * - The upstream's own origin always.
 * - A token realm on another host only over https and only on the same
 *   registrable domain (registry-1.docker.io -> auth.docker.io), never across a
 *   public suffix (x.dkr.ecr.us-east-1.amazonaws.com -> evil.s3.amazonaws.com).
 * - Plain http only when the upstream itself is configured as http, and then
 *   only to the upstream's own host.
 * - IP-address hosts have no siblings: host and port must match.
 * Redirect targets never get credentials unless they are the same origin
 * (blob CDNs use signed URLs); the client enforces that separately.
 */
import { isIpLiteral } from "./address-class.ts";

/**
 * Registry services where every subdomain is another customer, but which the
 * Public Suffix List does not (yet) list as suffixes. Checked in addition to it.
 */
const MULTI_TENANT_REGISTRY_DOMAINS: readonly RegExp[] = [
  /(^|\.)azurecr\.(io|cn|us)$/, // Azure Container Registry: NAME.azurecr.io
  /(^|\.)dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$/, // Amazon ECR: ACCOUNT.dkr.ecr.REGION.amazonaws.com
];

export type CredentialDecision = { ok: true } | { ok: false; reason: string };

export async function credentialsMayGo(upstreamUrl: string, target: string): Promise<CredentialDecision> {
  let up: URL, to: URL;
  try {
    up = new URL(upstreamUrl);
    to = new URL(target);
  } catch {
    return { ok: false, reason: "it is not a valid URL" };
  }
  if (up.origin === to.origin) return { ok: true };
  const a = up.hostname.toLowerCase();
  const b = to.hostname.toLowerCase();
  if (to.protocol !== "https:" && to.protocol !== "http:") return { ok: false, reason: `its scheme is ${to.protocol}` };
  if (to.protocol === "http:" && up.protocol !== "http:") return { ok: false, reason: "it is plain http" };
  // An IP has no sibling hosts, and another port on it may be another service.
  if (isIpLiteral(a) || isIpLiteral(b)) {
    return up.host.toLowerCase() === to.host.toLowerCase() ? { ok: true } : { ok: false, reason: "it is another address or port" };
  }
  // The Public Suffix List is loaded when first needed, not at start-up (~0.1 s and ~15 MiB here).
  const { getDomain } = await import("tldts");
  const siteA = getDomain(a, { allowPrivateDomains: true });
  const siteB = getDomain(b, { allowPrivateDomains: true });
  // No registrable domain (localhost, single-label names): like an IP, host and port must match.
  if (siteA === null || siteB === null) {
    return up.host.toLowerCase() === to.host.toLowerCase() ? { ok: true } : { ok: false, reason: "it is another host or port" };
  }
  if (to.protocol === "http:") return a === b ? { ok: true } : { ok: false, reason: "it is plain http to another host" };
  if (a === b) return { ok: true }; // same host, another port or http -> https
  if (MULTI_TENANT_REGISTRY_DOMAINS.some((re) => re.test(a) || re.test(b))) {
    return { ok: false, reason: "it is another host of a registry service shared by many customers" };
  }
  if (siteA !== siteB) return { ok: false, reason: "it is on another site (registrable domain)" };
  return { ok: true };
}
