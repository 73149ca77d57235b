/**
 * Decides which address a connection made for one upstream may go to: the
 * operator's --resolve overrides first, then the system resolver, and the
 * address policy. A redirect or token realm must not lead Stowage into the
 * network it runs in (cloud metadata at 169.254.169.254, internal services),
 * so loopback, private, link-local, unspecified and reserved addresses are
 * refused, unless the upstream itself lives on such a network (then the same
 * kind of address is allowed: a registry on the LAN redirecting to its LAN
 * storage) or the operator allowed it for that upstream (allowPrivateNetwork).
 * Link-local, unspecified and reserved addresses need that explicit allowance.
 *
 * The runtime adapter calls `resolve` when it opens a connection and connects
 * to the address it returns, so a DNS answer cannot change between the check
 * and the connection.
 */
import { lookup as dnsLookup } from "node:dns/promises";
import type { ResolveOverride, Upstream } from "./upstream.ts";
import { unbracketed } from "../util/ip.ts";
import { type AddressClass, classifyAddress } from "./address-class.ts";

export type Resolved = { address: string; family: 4 | 6 };
export type Lookup = (host: string) => Promise<Resolved[]>;

/** Resolves HOST:PORT for a new connection, or throws NetworkRefused. */
export type ConnectGuard = (host: string, port: number) => Promise<Resolved>;

export class NetworkRefused extends Error {
  override name = "NetworkRefused";
}

/** The address policy's refusal, wherever the fetch implementation wrapped it (as a cause). */
export function networkRefusal(err: unknown): NetworkRefused | null {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    if (e instanceof NetworkRefused) return e;
  }
  return null;
}

/** The system resolver (getaddrinfo: /etc/hosts included), on Node and on Deno. */
export const systemLookup: Lookup = async (host) => {
  const found = await dnsLookup(host, { all: true, verbatim: true });
  return found.map((r) => ({ address: r.address, family: r.family === 6 ? 6 : 4 }));
};

// Kinds of network that an upstream living there may also redirect into.
const SHAREABLE: ReadonlySet<AddressClass> = new Set(["loopback", "private"]);

const bare = (host: string) => unbracketed(host).toLowerCase();
const familyOf = (address: string): 4 | 6 => (address.includes(":") ? 6 : 4);

export function createConnectGuard(upstream: Upstream, overrides: readonly ResolveOverride[], lookup: Lookup = systemLookup): ConnectGuard {
  const own = new URL(upstream.url);
  const ownHost = bare(own.hostname);
  const ownPort = Number(own.port) || (own.protocol === "https:" ? 443 : 80);
  let ownClasses: Promise<Set<AddressClass>> | null = null;

  const addressesOf = async (host: string, port: number): Promise<Resolved[]> => {
    const name = bare(host);
    const forced = overrides.find((o) => o.host === name && o.port === port);
    if (forced) return [{ address: forced.address, family: familyOf(forced.address) }];
    if (classifyAddress(name) !== null) return [{ address: name, family: familyOf(name) }];
    return lookup(name);
  };

  const classesOfUpstream = (): Promise<Set<AddressClass>> => {
    ownClasses ??= addressesOf(ownHost, ownPort).then(
      (list) => new Set(list.map((r) => classifyAddress(r.address) ?? "reserved")),
      (err) => {
        ownClasses = null; // a DNS hiccup is not remembered
        throw err;
      },
    );
    return ownClasses;
  };

  return async (host, port) => {
    const name = bare(host);
    const candidates = await addressesOf(name, port);
    if (candidates.length === 0) throw new NetworkRefused(`${name} has no address`);
    // The upstream's own host is where the operator pointed us: always allowed.
    if (name === ownHost || upstream.allowPrivateNetwork) return candidates[0]!;
    let upstreamClasses: Set<AddressClass> | null = null;
    for (const candidate of candidates) {
      const cls = classifyAddress(candidate.address) ?? "reserved";
      if (cls === "public") return candidate;
      if (SHAREABLE.has(cls)) {
        upstreamClasses ??= await classesOfUpstream();
        if (upstreamClasses.has(cls)) return candidate;
      }
    }
    const first = candidates[0]!;
    const cls = classifyAddress(first.address) ?? "reserved";
    throw new NetworkRefused(
      `${name} resolves to ${first.address}, a ${cls} address, and upstream ${upstream.name} may not lead Stowage there` +
        ` (set allowPrivateNetwork: true for this upstream in the config file if it really serves from your own network)`,
    );
  };
}
