/**
 * Who can sign in: static users and robot tokens from the config file, and
 * users from an Apache htpasswd file. Secrets are only ever held as bcrypt
 * hashes; successful checks are remembered briefly because bcrypt is slow by
 * design and clients ask for a token several times per pull.
 */
import bcrypt from "bcryptjs";
import { hex } from "../util/encoding.ts";
import { PasswordChecks } from "./password-checks.ts";

export type IdentityKind = "user" | "robot";

export type IdentityEntry = { name: string; kind: IdentityKind; hash: string; source: string };

export type HtpasswdResult = { entries: Array<{ name: string; hash: string }>; problems: string[] };

/** User and robot names: also the `sub` of their tokens. */
export const IDENTITY_NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;

/** The subject of tokens issued to clients without credentials; no user may take it. */
export const RESERVED_NAME = "anonymous";

export const BCRYPT_HASH = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;

/** `name:hash` lines; only bcrypt hashes are accepted (the others are weak or unsupported). */
export function parseHtpasswd(text: string): HtpasswdResult {
  const entries: Array<{ name: string; hash: string }> = [];
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const colon = line.indexOf(":");
    const where = `line ${i + 1}`;
    if (colon <= 0) {
      problems.push(`${where}: expected USER:HASH`);
      return;
    }
    const name = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    // The same rules as users in the config file: the name becomes a token subject and a rule entry.
    if (!IDENTITY_NAME.test(name)) {
      problems.push(`${where}: user name ${JSON.stringify(name.slice(0, 80))} is not allowed: use letters, digits, '.', '_', '@' or '-' (at most 128, starting with a letter or digit)`);
      return;
    }
    if (name === RESERVED_NAME) {
      problems.push(`${where}: user name "${RESERVED_NAME}" is reserved for clients without credentials; choose another name`);
      return;
    }
    if (!BCRYPT_HASH.test(hash)) {
      // Never echo the hash field: a misformatted line may be a plain password.
      problems.push(`${where}: user ${JSON.stringify(name)} does not have a bcrypt hash (create entries with htpasswd -B)`);
      return;
    }
    if (entries.some((e) => e.name === name)) {
      problems.push(`${where}: user ${JSON.stringify(name)} appears more than once`);
      return;
    }
    entries.push({ name, hash });
  });
  return { entries, problems };
}

/** Someone signed in: a configured user or robot, or a CI job through OIDC federation. */
export type Identity = { subject: string; kind: IdentityKind | "oidc" };

const VERIFIED_TTL_MS = 60_000;
const VERIFIED_MAX = 1_000;

export class IdentityStore {
  #byName: Map<string, IdentityEntry>;
  /** sha256(name, password, hash) → expiry; a changed hash invalidates naturally. */
  readonly #verified = new Map<string, number>();

  constructor(
    entries: readonly IdentityEntry[],
    private readonly passwords: PasswordChecks = PasswordChecks.inline(),
  ) {
    this.#byName = new Map(entries.map((e) => [e.name, e]));
  }

  /**
   * Replaces the identities (e.g. a re-read htpasswd file). Remembered checks need no flushing:
   * they are keyed by the hash, so a changed password or a removed user no longer matches them.
   */
  update(entries: readonly IdentityEntry[]): void {
    this.#byName = new Map(entries.map((e) => [e.name, e]));
  }

  get size(): number {
    return this.#byName.size;
  }

  has(subject: string): boolean {
    return this.#byName.has(subject);
  }

  /**
   * The identity for a name and secret, or null. An unknown name takes as long and waits in the
   * same queue as a real check (PasswordChecks.pretend), without bcrypt's CPU, so timing does not
   * tell names apart. Throws PasswordChecksBusy when too many checks are waiting.
   */
  async verify(name: string, secret: string, now = Date.now()): Promise<Identity | null> {
    const entry = this.#byName.get(name);
    if (!entry) return this.passwords.pretend().then(() => null);
    const key = await cacheKey(name, secret, entry.hash);
    const until = this.#verified.get(key);
    if (until !== undefined && until > now) return { subject: entry.name, kind: entry.kind };
    const ok = await this.passwords.compare(secret, entry.hash);
    if (!ok) return null;
    if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
    this.#verified.set(key, now + VERIFIED_TTL_MS);
    return { subject: entry.name, kind: entry.kind };
  }
}

async function cacheKey(name: string, secret: string, hash: string): Promise<string> {
  const data = new TextEncoder().encode(`${name}\u0000${secret}\u0000${hash}`);
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", data)));
}

export async function hashSecret(secret: string, rounds = 10): Promise<string> {
  return bcrypt.hash(secret, rounds);
}
