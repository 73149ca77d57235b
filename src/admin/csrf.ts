/**
 * Cross-site request protection for the admin page's forms. A change (a purge) is accepted
 * only as a POST that
 * - carries, in a hidden field, an HMAC of the signed-in identity and the browser's session
 *   cookie under a secret this process made at start (another site can read neither), and
 * - does not come from another site by the browser's own word (Origin, Sec-Fetch-Site).
 * The session cookie is SameSite=Strict and HttpOnly, so it is not sent with a cross-site
 * request in the first place, and page scripts cannot read it.
 */
import { base64url } from "../util/encoding.ts";
import { AdminRefusal } from "./admin-access.ts";

export const SESSION_COOKIE = "stowage_admin_session";
const SESSION_SHAPE = /^[A-Za-z0-9_-]{22,64}$/;

export class CsrfGuard {
  private readonly key: Promise<CryptoKey>;

  constructor(secret: Uint8Array = crypto.getRandomValues(new Uint8Array(32))) {
    this.key = crypto.subtle.importKey("raw", secret as Uint8Array<ArrayBuffer>, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
  }

  /** The browser's session id from its cookie, or null when it has none (or a malformed one). */
  session(request: Request): string | null {
    const cookies = request.headers.get("cookie") ?? "";
    for (const part of cookies.split(";")) {
      const [name, ...rest] = part.trim().split("=");
      if (name === SESSION_COOKIE) {
        const value = rest.join("=");
        return SESSION_SHAPE.test(value) ? value : null;
      }
    }
    return null;
  }

  newSession(): string {
    return base64url(crypto.getRandomValues(new Uint8Array(18)));
  }

  /** The Set-Cookie header value for a new session: this path only, never sent cross-site. `secure` on HTTPS. */
  cookie(session: string, secure: boolean): string {
    return `${SESSION_COOKIE}=${session}; Path=/-/; HttpOnly; SameSite=Strict${secure ? "; Secure" : ""}`;
  }

  async token(identity: string, session: string): Promise<string> {
    const mac = await crypto.subtle.sign("HMAC", await this.key, new TextEncoder().encode(`stowage-admin\u0000${identity}\u0000${session}`));
    return base64url(new Uint8Array(mac));
  }

  /** Throws AdminRefusal (403) unless the POST is same-origin and its token matches identity and session. */
  async check(request: Request, url: URL, identity: string, presented: string | null): Promise<void> {
    const fetchSite = request.headers.get("sec-fetch-site");
    if (fetchSite !== null && fetchSite !== "same-origin") {
      throw new AdminRefusal(403, `refused: the browser says this form was sent from ${fetchSite === "none" ? "outside any page" : `a ${fetchSite} page`}; use the buttons on the admin page`);
    }
    const origin = request.headers.get("origin");
    // The scheme is not compared: behind a TLS-terminating proxy this server sees http for an https page.
    if (origin !== null && hostOf(origin) !== url.host) {
      throw new AdminRefusal(403, `refused: the form was sent from another site (${origin}); use the buttons on the admin page`);
    }
    const session = this.session(request);
    if (session === null || presented === null || presented === "") {
      throw new AdminRefusal(403, "refused: the form has no valid session (cookies off, or the page is too old); reload the admin page and try again");
    }
    if (!timingSafeEqual(presented, await this.token(identity, session))) {
      throw new AdminRefusal(403, "refused: the form's token does not match this sign-in (the page is from an earlier session or another Stowage instance); reload the admin page and try again");
    }
  }
}

function hostOf(origin: string): string | null {
  try {
    return new URL(origin).host;
  } catch {
    return null;
  }
}

function timingSafeEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
