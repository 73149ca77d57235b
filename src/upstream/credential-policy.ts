/**
 * Decides whether an upstream's configured credentials may be sent to a URL
 * the upstream pointed us at (a token realm or a redirect). A credential must
 * never leave for a host it was not configured for, but real registries keep
 * their token service on a sibling host (registry-1.docker.io → auth.docker.io,
 * registry.gitlab.com → gitlab.com), so siblings under the same parent domain
 * are allowed over https. IP-address hosts must match exactly, port included.
 */
export function mayReceiveCredentials(upstreamUrl: string, target: string): boolean {
  let up: URL, to: URL;
  try {
    up = new URL(upstreamUrl);
    to = new URL(target);
  } catch {
    return false;
  }
  if (up.origin === to.origin) return true;
  if (to.protocol !== "https:") return false;
  const a = up.hostname.toLowerCase();
  const b = to.hostname.toLowerCase();
  // An IP has no sibling hosts, and another port on it may be another service: compare host and port.
  if (isIpLiteral(a) || isIpLiteral(b)) return up.host.toLowerCase() === to.host.toLowerCase();
  const parentA = parentDomain(a);
  return parentA !== null && parentA === parentDomain(b);
}

function parentDomain(host: string): string | null {
  const labels = host.split(".");
  // Country domains with a second level (co.uk, com.au) need one label more,
  // or every host under them would count as a sibling.
  const tld = labels.at(-1) ?? "";
  const second = labels.at(-2) ?? "";
  const width = tld.length === 2 && ["co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"].includes(second) ? 3 : 2;
  return labels.length >= width ? labels.slice(-width).join(".") : null;
}

function isIpLiteral(host: string): boolean {
  return host.startsWith("[") || host.includes(":") || /^\d+\.\d+\.\d+\.\d+$/.test(host);
}
