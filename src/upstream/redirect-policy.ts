/**
 * Which redirects of an upstream are followed. Pure: the address a host name
 * resolves to is checked separately, when connecting (network-guard.ts).
 */
export const MAX_REDIRECTS = 5;

/** null: follow it; else why not, for the operator. */
export function redirectRefusal(from: URL, to: URL, hop: number): string | null {
  if (hop >= MAX_REDIRECTS) return `more than ${MAX_REDIRECTS} redirects`;
  if (to.protocol !== "http:" && to.protocol !== "https:") return `a redirect to a ${to.protocol} URL`;
  if (from.protocol === "https:" && to.protocol === "http:") return `a redirect from https to plain http (${to.origin})`;
  if (to.username !== "" || to.password !== "") return "a redirect to a URL with embedded credentials";
  return null;
}
