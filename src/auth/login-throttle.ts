/**
 * Failed sign-ins, counted per client address and per user name over a sliding window. Past the
 * limit, sign-ins are refused before any password is checked (so guessing gets no answer and costs
 * us nothing) until the oldest counted failure leaves the window. A user name is not locked for
 * an address that signed in as that user recently, so an attack on a name from elsewhere does not
 * lock its owner's machines out. Memory is bounded: the oldest records go first.
 */
import { ipv6Groups, unbracketed } from "../util/ip.ts";

export type ThrottleLimits = {
  /** Failures from one address (IPv6: one /64) within the window before it is refused. */
  perAddress: number;
  /** Failures for one user name, from addresses that have not signed in as it, within the window. */
  perUser: number;
  windowMs: number;
  /** Sign-ins one address may have waiting for a password check at once. */
  concurrentPerAddress: number;
  /** How long a successful sign-in exempts its (user, address) pair from the user name's limit. */
  trustedForMs: number;
  /** Records kept per kind (failures by address, by user, trusted pairs). */
  maxRecords: number;
};

export const DEFAULT_LIMITS: ThrottleLimits = {
  perAddress: 10,
  perUser: 5,
  windowMs: 60_000,
  concurrentPerAddress: 4,
  trustedForMs: 24 * 3600_000,
  maxRecords: 10_000,
};

export type Refusal = { retryAfterSeconds: number; message: string };

export class LoginThrottle {
  readonly #byAddress = new Map<string, number[]>();
  readonly #byUser = new Map<string, number[]>();
  readonly #trusted = new Map<string, number>();
  readonly #inFlight = new Map<string, number>();

  constructor(
    readonly limits: ThrottleLimits = DEFAULT_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Why a sign-in must be refused now, or null. `address` null: not known (in-process callers);
   * `user` null: no password of a user is being tried (a CI token, which cannot be guessed).
   */
  check(address: string | null, user: string | null): Refusal | null {
    const now = this.now();
    const client = address === null ? null : clientKey(address);
    if (client !== null) {
      const wait = this.#blockedFor(this.#byAddress, client, this.limits.perAddress, now);
      if (wait > 0) return { retryAfterSeconds: wait, message: `too many failed sign-ins from ${client}; try again in ${wait} s` };
    }
    if (user !== null && (client === null || !this.#isTrusted(user, client, now))) {
      const wait = this.#blockedFor(this.#byUser, user, this.limits.perUser, now);
      if (wait > 0) return { retryAfterSeconds: wait, message: `too many failed sign-ins as ${JSON.stringify(user.slice(0, 128))}; try again in ${wait} s` };
    }
    return null;
  }

  /** Holds one of the address's password-check slots; null when it has too many waiting. */
  enter(address: string | null): (() => void) | null {
    if (address === null) return () => {};
    const client = clientKey(address);
    const n = this.#inFlight.get(client) ?? 0;
    if (n >= this.limits.concurrentPerAddress) return null;
    this.#inFlight.set(client, n + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const m = (this.#inFlight.get(client) ?? 1) - 1;
      if (m <= 0) this.#inFlight.delete(client);
      else this.#inFlight.set(client, m);
    };
  }

  /** Sign-ins from this address now waiting for (or in) a password check. */
  inFlight(address: string | null): number {
    return address === null ? 0 : (this.#inFlight.get(clientKey(address)) ?? 0);
  }

  /** Counts a failure; says which limits it has just reached (for the log: once per block, not per refusal). */
  failed(address: string | null, user: string | null): { address: string | null; user: string | null } {
    const now = this.now();
    const client = address === null ? null : clientKey(address);
    const reached = { address: null as string | null, user: null as string | null };
    if (client !== null && this.#record(this.#byAddress, client, this.limits.perAddress, now)) reached.address = client;
    if (user !== null && this.#record(this.#byUser, user, this.limits.perUser, now)) reached.user = user;
    return reached;
  }

  succeeded(address: string | null, user: string | null): void {
    if (address === null || user === null) return;
    const key = `${user}\n${clientKey(address)}`;
    this.#trusted.delete(key);
    this.#trusted.set(key, this.now() + this.limits.trustedForMs);
    trim(this.#trusted, this.limits.maxRecords);
  }

  #isTrusted(user: string, client: string, now: number): boolean {
    const until = this.#trusted.get(`${user}\n${client}`);
    return until !== undefined && until > now;
  }

  /** Seconds until one more attempt is allowed, 0 if it is now. */
  #blockedFor(records: Map<string, number[]>, key: string, limit: number, now: number): number {
    const times = live(records.get(key), now - this.limits.windowMs);
    if (times.length < limit) return 0;
    return Math.max(1, Math.ceil((times[times.length - limit]! + this.limits.windowMs - now) / 1000));
  }

  /** Whether this failure reached the limit. */
  #record(records: Map<string, number[]>, key: string, limit: number, now: number): boolean {
    const times = live(records.get(key), now - this.limits.windowMs);
    times.push(now);
    // Only the newest `limit` failures decide anything.
    if (times.length > limit) times.splice(0, times.length - limit);
    records.delete(key);
    records.set(key, times);
    trim(records, this.limits.maxRecords);
    return times.length >= limit;
  }
}

function live(times: number[] | undefined, since: number): number[] {
  return (times ?? []).filter((t) => t > since);
}

/** Maps keep insertion order, and records are re-inserted when touched: the first is the stalest. */
function trim(map: Map<string, unknown>, max: number): void {
  while (map.size > max) {
    const oldest = map.keys().next().value;
    if (oldest === undefined) return;
    map.delete(oldest);
  }
}

/**
 * What one client is: an IPv4 address (IPv4-mapped IPv6 unwrapped), or an IPv6 /64, since one
 * host usually holds a whole /64 and could otherwise rotate through it.
 */
export function clientKey(address: string): string {
  let a = unbracketed(address.trim().toLowerCase());
  const zone = a.indexOf("%");
  if (zone >= 0) a = a.slice(0, zone);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (mapped) return mapped[1]!;
  if (!a.includes(":")) return a;
  const groups = ipv6Groups(a);
  return groups === null ? a : `${groups.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}
