/**
 * What kind of network an IP address belongs to, for deciding where an
 * upstream's redirects and token realms may lead. Pure: no I/O, the caller
 * resolves names first (so a DNS name pointing at 127.0.0.1 counts as loopback).
 */
import { ipv4Number, ipv6Groups, unbracketed } from "../util/ip.ts";

export type AddressClass =
  | "public"
  | "loopback" // 127/8, ::1
  | "private" // RFC 1918, carrier-grade NAT, IPv6 unique-local
  | "link-local" // 169.254/16 (cloud metadata services live here), fe80::/10
  | "unspecified" // 0.0.0.0, :: (reaches the local host on most systems)
  | "reserved"; // multicast, broadcast, documentation and other non-routable ranges

type V4Range = readonly [base: string, bits: number, cls: Exclude<AddressClass, "public">];

// Longest prefixes need no order here: the ranges do not overlap.
const V4_RANGES: readonly V4Range[] = [
  ["0.0.0.0", 32, "unspecified"],
  ["0.0.0.0", 8, "reserved"], // "this network": 0.x.y.z is routed to the local host by Linux
  ["10.0.0.0", 8, "private"],
  ["100.64.0.0", 10, "private"], // carrier-grade NAT, also used inside clouds
  ["127.0.0.0", 8, "loopback"],
  ["169.254.0.0", 16, "link-local"],
  ["172.16.0.0", 12, "private"],
  ["192.0.0.0", 24, "reserved"],
  ["192.0.2.0", 24, "reserved"],
  ["192.168.0.0", 16, "private"],
  ["198.18.0.0", 15, "reserved"],
  ["198.51.100.0", 24, "reserved"],
  ["203.0.113.0", 24, "reserved"],
  ["224.0.0.0", 4, "reserved"], // multicast
  ["240.0.0.0", 4, "reserved"], // incl. 255.255.255.255
];

function classifyV4(n: number): AddressClass {
  // Most specific first: 0.0.0.0/32 inside 0.0.0.0/8.
  let best: { bits: number; cls: AddressClass } | null = null;
  for (const [base, bits, cls] of V4_RANGES) {
    const size = 2 ** (32 - bits);
    const start = ipv4Number(base)!;
    if (n >= start && n < start + size && (best === null || bits > best.bits)) best = { bits, cls };
  }
  return best?.cls ?? "public";
}


function classifyV6(g: number[]): AddressClass {
  const [a = 0, b = 0] = g;
  if (g.every((x) => x === 0)) return "unspecified";
  if (g.slice(0, 7).every((x) => x === 0) && g[7] === 1) return "loopback";
  const embeddedV4 = (hi: number, lo: number) => classifyV4(hi * 65536 + lo);
  // ::ffff:a.b.c.d (IPv4-mapped) and ::a.b.c.d (deprecated IPv4-compatible) reach the IPv4 address.
  if (g.slice(0, 5).every((x) => x === 0) && (g[5] === 0xffff || g[5] === 0)) return embeddedV4(g[6]!, g[7]!);
  // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address a gateway will reach.
  if (a === 0x64 && b === 0xff9b && g.slice(2, 6).every((x) => x === 0)) return embeddedV4(g[6]!, g[7]!);
  if (a === 0x2002) return embeddedV4(b, g[2]!);
  if ((a & 0xfe00) === 0xfc00) return "private"; // fc00::/7
  if ((a & 0xffc0) === 0xfe80) return "link-local"; // fe80::/10
  if ((a & 0xff00) === 0xff00) return "reserved"; // multicast
  if (a === 0x2001 && b === 0x0db8) return "reserved"; // documentation
  if (a === 0x100 && g.slice(1, 4).every((x) => x === 0)) return "reserved"; // discard-only
  return "public";
}

/** The class of an IP literal (IPv4, or IPv6 with or without brackets), or null if it is not one. */
export function classifyAddress(address: string): AddressClass | null {
  const text = unbracketed(address);
  const v4 = ipv4Number(text);
  if (v4 !== null) return classifyV4(v4);
  if (!text.includes(":")) return null;
  const groups = ipv6Groups(text);
  return groups ? classifyV6(groups) : null;
}

export function isIpLiteral(host: string): boolean {
  return classifyAddress(host) !== null;
}
