// A Docker token service like auth.docker.io or ghcr.io/token, just big enough for distribution
// to accept its tokens: ES256 JWTs whose x5c certificate is in distribution's rootcertbundle.
// Public repositories get pull for anyone; private ones only with the right Basic credentials;
// wrong credentials are a 401. Every request is logged with what its Authorization carried.
import { randomUUID, sign } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { describeAuthorization, type Handler } from "./https-server.ts";

export type TokenLogEntry = {
  method: string;
  path: string;
  /** "none", "basic", "bearer", …: what the request's Authorization header carried. */
  authorization: string;
  /** The Basic user name, when there was one. */
  user?: string;
  /** The Basic password matched the configured one. */
  authenticated: boolean;
  scopes: string[];
  status: number;
  /** Repositories the issued token grants pull on. */
  granted: string[];
};

export type TokenIssuer = {
  handler: Handler;
  log: TokenLogEntry[];
};

const b64url = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");

export function makeTokenIssuer(opts: {
  service: string;
  issuer: string;
  signer: { key: string; der: Buffer };
  user: { name: string; password: string };
  publicRepos: string[];
}): TokenIssuer {
  const log: TokenLogEntry[] = [];
  const header = b64url({ typ: "JWT", alg: "ES256", x5c: [opts.signer.der.toString("base64")] });

  const jwt = (sub: string, access: Array<{ type: string; name: string; actions: string[] }>): string => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: opts.issuer, sub, aud: opts.service, exp: now + 300, nbf: now - 5, iat: now, jti: randomUUID(), access };
    const input = `${header}.${b64url(claims)}`;
    // JWS ES256 wants the raw r||s signature, not DER.
    const sig = sign("sha256", Buffer.from(input), { key: opts.signer.key, dsaEncoding: "ieee-p1363" });
    return `${input}.${sig.toString("base64url")}`;
  };

  const reply = (res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(text)), ...extra }).end(text);
  };

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "https://token.invalid");
    const method = req.method ?? "GET";
    const auth = describeAuthorization(req.headers.authorization);
    let authenticated = false;
    if (auth.scheme === "basic") {
      const decoded = Buffer.from((req.headers.authorization ?? "").split(/\s+/)[1] ?? "", "base64").toString("utf8");
      authenticated = decoded === `${opts.user.name}:${opts.user.password}`;
    }
    // OAuth2 POST form (containerd) as well as GET with query parameters (Docker, containers/image).
    let params = url.searchParams;
    if (method === "POST") {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      params = new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
      if (params.get("grant_type") === "password") {
        authenticated = params.get("username") === opts.user.name && params.get("password") === opts.user.password;
      }
    }
    const scopes = params.getAll("scope").flatMap((s) => s.split(" ")).filter((s) => s !== "");
    const entry: TokenLogEntry = { method, path: url.pathname, authorization: auth.scheme, authenticated, scopes, status: 0, granted: [] };
    if (auth.user !== undefined) entry.user = auth.user;
    log.push(entry);

    if (url.pathname !== "/token") {
      entry.status = 404;
      return reply(res, 404, { errors: [{ code: "NOT_FOUND", message: "no such endpoint" }] });
    }
    if (params.get("service") !== opts.service) {
      entry.status = 400;
      return reply(res, 400, { errors: [{ code: "UNSUPPORTED", message: `unknown service ${params.get("service")}` }] });
    }
    // Wrong credentials are refused outright (as Docker Hub does); none at all mean anonymous.
    const triedCredentials = auth.scheme === "basic" || params.get("grant_type") === "password";
    if (triedCredentials && !authenticated) {
      entry.status = 401;
      return reply(res, 401, { details: "incorrect username or password" }, { "www-authenticate": `Basic realm="${opts.issuer}"` });
    }
    const access: Array<{ type: string; name: string; actions: string[] }> = [];
    for (const scope of scopes) {
      const [type, name, actions] = scope.split(":");
      if (type !== "repository" || !name || !actions?.split(",").includes("pull")) continue;
      if (opts.publicRepos.includes(name) || authenticated) {
        access.push({ type: "repository", name, actions: ["pull"] });
        entry.granted.push(name);
      }
    }
    entry.status = 200;
    const token = jwt(authenticated ? opts.user.name : "", access);
    reply(res, 200, { token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() });
  };

  return { handler, log };
}
