// Small https servers for the registry-shape tests: each binds its own loopback address (so
// each host name has its own address, as on the Internet) and keeps its own request log.
import { type IncomingMessage, type ServerResponse, request as httpRequest, Agent } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Issued } from "./tls-ca.ts";

export type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export type HttpsServer = {
  /** https://HOST:PORT with the host name the certificate is for. */
  origin: string;
  address: string;
  port: number;
  stop(): Promise<void>;
};

/** An https server on `address` (port 0: any free one) for `hostname`, with the given certificate. */
export async function startHttpsServer(opts: { hostname: string; address: string; tls: Issued; handler: Handler; port?: number }): Promise<HttpsServer> {
  const server = createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, (req, res) => {
    Promise.resolve(opts.handler(req, res)).catch((err: Error) => {
      if (res.headersSent) return void res.destroy();
      const body = JSON.stringify({ errors: [{ code: "UNKNOWN", message: `test server ${opts.hostname}: ${err.message}` }] });
      res.writeHead(500, { "content-type": "application/json" }).end(body);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, opts.address, () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  let stopping: Promise<void> | undefined;
  return {
    origin: `https://${opts.hostname}:${port}`,
    address: opts.address,
    port,
    stop: () =>
      (stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}

/** What an Authorization header carried, without the secret: scheme, and the user for Basic. */
export function describeAuthorization(header: string | undefined): { scheme: string; user?: string } {
  if (!header) return { scheme: "none" };
  const [scheme = "", value = ""] = header.split(/\s+/, 2);
  const lower = scheme.toLowerCase();
  if (lower === "basic") {
    const decoded = Buffer.from(value, "base64").toString("utf8");
    return { scheme: "basic", user: decoded.slice(0, Math.max(0, decoded.indexOf(":"))) };
  }
  if (lower === "bearer") {
    // The subject is read without verifying: this only describes what arrived.
    try {
      const claims = JSON.parse(Buffer.from(value.split(".")[1] ?? "", "base64url").toString("utf8")) as { sub?: unknown };
      return { scheme: "bearer", user: typeof claims.sub === "string" ? claims.sub : "" };
    } catch {
      return { scheme: "bearer" };
    }
  }
  return { scheme: lower };
}

const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "transfer-encoding"]);

/**
 * Proxies to a plain-http backend (a distribution on 127.0.0.1), as a TLS-terminating load
 * balancer would: the Host header is kept, so the backend builds its URLs for the public name.
 */
export function proxyTo(backendUrl: string): Handler {
  const target = new URL(backendUrl);
  const agent = new Agent({ keepAlive: true });
  return (req, res) =>
    new Promise<void>((resolve) => {
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
      headers["x-forwarded-proto"] = "https";
      const up = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent }, (upRes) => {
        const out: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
        res.writeHead(upRes.statusCode ?? 502, out);
        upRes.pipe(res);
        upRes.on("end", resolve);
        upRes.on("error", () => (res.destroy(), resolve()));
      });
      up.on("error", (err) => {
        if (!res.headersSent) {
          res.writeHead(502, { "content-type": "application/json" }).end(JSON.stringify({ errors: [{ code: "UNKNOWN", message: `front: backend unreachable: ${err.message}` }] }));
        } else res.destroy();
        resolve();
      });
      res.on("close", () => {
        if (!res.writableFinished) up.destroy();
      });
      req.pipe(up);
    });
}
