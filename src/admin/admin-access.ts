/**
 * Who may open the admin page. With access control on: the identities listed under `admins:`,
 * signed in with HTTP Basic (a browser asks for the name and password itself). With it off:
 * clients on loopback only, unless --admin-page open; --admin-page off hides the page.
 */
import { type AccessControl, LoginThrottled } from "../auth/access.ts";
import { readAuthorization } from "../auth/credentials.ts";
import { classifyAddress } from "../upstream/address-class.ts";

export type AdminPageMode = "off" | "loopback" | "open";

/** A refusal, shown as an HTML page with this status (and headers, e.g. the Basic challenge). */
export class AdminRefusal extends Error {
  override name = "AdminRefusal";
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

export const BASIC_CHALLENGE = 'Basic realm="Stowage admin", charset="UTF-8"';

export class AdminGate {
  constructor(
    private readonly mode: AdminPageMode,
    private readonly access: AccessControl | undefined,
  ) {}

  /**
   * Who is asking, as purges are logged ("alice", "loopback 127.0.0.1", "anyone (--admin-page open) from 10.1.2.3");
   * throws AdminRefusal otherwise. `client`: the peer address (null: unknown, e.g. a Unix socket).
   */
  async identify(request: Request, client: string | null): Promise<string> {
    if (this.mode === "off") throw new AdminRefusal(404, "no such page: the admin page is off (--admin-page off)");
    if (this.access) return this.signIn(this.access, request, client);
    if (this.mode === "open") return `anyone (--admin-page open) from ${client ?? "an unknown address"}`;
    if (client !== null && isLoopback(client)) return `loopback ${client}`;
    throw new AdminRefusal(
      403,
      "the admin page answers only clients on this host (loopback), as access control is off: open it from the host (e.g. through an SSH tunnel), " +
        "turn on access control and list admins: in the config file, or allow every client with --admin-page open",
    );
  }

  private async signIn(access: AccessControl, request: Request, client: string | null): Promise<string> {
    const refuse = (why: string) => new AdminRefusal(401, `${why}: sign in as one of the admins listed in the config file (admins:)`, { "www-authenticate": BASIC_CHALLENGE });
    const presented = readAuthorization(request.headers.get("authorization"));
    if (presented.kind === "none") throw refuse("the admin page needs a sign-in");
    if (presented.kind !== "basic") throw refuse(presented.kind === "invalid" ? presented.reason : "the admin page takes a Basic sign-in (a user or robot), not a token");
    // The identity store remembers a good password for a minute, so the page's polling costs no bcrypt per request.
    let identity;
    try {
      identity = await access.authenticate(presented.username, presented.password, client);
    } catch (err) {
      if (!(err instanceof LoginThrottled)) throw err;
      throw new AdminRefusal(429, err.message, { "retry-after": String(err.retryAfterSeconds) });
    }
    if (!identity) throw refuse("invalid username or password");
    const subject = identity.subject;
    if (!access.config.admins.includes(subject)) {
      throw new AdminRefusal(403, `${subject} is not an admin: only the identities listed under admins: in the config file may use the admin page`);
    }
    return subject;
  }
}

export function isLoopback(address: string): boolean {
  return classifyAddress(address) === "loopback";
}
