// A recording reverse proxy: counts what reaches an upstream, and can corrupt blob bodies.
import { createServer as createHttpServer, request as httpRequest, Agent, type IncomingHttpHeaders } from "node:http";
import { Transform, type TransformCallback, pipeline } from "node:stream";
import type { Proc } from "./processes.ts";

export type RecordedRequest = { method: string; path: string; status: number; bytes: number };

const BLOB_PATH = /\/blobs\/[a-z0-9]+:[a-f0-9]+$/;
// Per-connection headers that must not be forwarded (RFC 9110 §7.6.1), plus Expect (node answers 100 itself).
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "expect"]);

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/**
 * Counts body bytes on their way to the client and, when asked, flips one byte at `flipAt`
 * (same length, so only a digest check can notice).
 */
class Tap extends Transform {
  private offset = 0;
  constructor(
    private readonly onBytes: (n: number) => void,
    private readonly flipAt?: number,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let out = chunk;
    const at = this.flipAt;
    if (at !== undefined && at >= this.offset && at < this.offset + chunk.length) {
      out = Buffer.from(chunk);
      out[at - this.offset] = (out[at - this.offset] ?? 0) ^ 0xff;
    }
    this.offset += chunk.length;
    this.onBytes(chunk.length);
    done(null, out);
  }
}

/**
 * A transparent, streaming reverse proxy in front of `targetUrl` that records every request
 * (path is the URL path without the query). Location headers that point at the target are
 * rewritten to the proxy. With corruptBlobs, every blob GET body has its middle byte flipped.
 */
export async function startRecordingProxy(
  targetUrl: string,
  opts: { corruptBlobs?: boolean } = {},
): Promise<Proc & { url: string; requests: RecordedRequest[]; reset(): void }> {
  const target = new URL(targetUrl);
  const agent = new Agent({ keepAlive: true });
  const requests: RecordedRequest[] = [];
  let log = "";
  let proxyOrigin = "";

  const server = createHttpServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const method = req.method ?? "GET";
    const headers = forwardable(req.headers);
    headers.host = target.host;
    const upReq = httpRequest({ host: target.hostname, port: target.port, method, path: req.url, headers, agent }, (upRes) => {
      const status = upRes.statusCode ?? 502;
      // Recorded as soon as the response starts, so a client that has finished sees it counted.
      const rec: RecordedRequest = { method, path, status, bytes: 0 };
      requests.push(rec);
      const outHeaders = forwardable(upRes.headers);
      const loc = outHeaders.location;
      if (typeof loc === "string" && loc.startsWith(target.origin)) outHeaders.location = proxyOrigin + loc.slice(target.origin.length);
      const length = Number(upRes.headers["content-length"]);
      const corrupt = opts.corruptBlobs && method === "GET" && BLOB_PATH.test(path) && (status === 200 || status === 206) && length > 0;
      res.writeHead(status, upRes.statusMessage, outHeaders);
      pipeline(upRes, new Tap((n) => (rec.bytes += n), corrupt ? Math.floor(length / 2) : undefined), res, (err) => {
        if (err) log += `${method} ${req.url}: response stream: ${err.message}\n`;
      });
    });
    upReq.on("error", (err) => {
      log += `${method} ${req.url}: upstream: ${err.message}\n`;
      if (res.headersSent) return void res.destroy();
      const body = JSON.stringify({ errors: [{ code: "UNKNOWN", message: `recording proxy: upstream unreachable: ${err.message}` }] });
      requests.push({ method, path, status: 502, bytes: Buffer.byteLength(body) });
      res.writeHead(502, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
    });
    // A client that goes away mid-request must not leave the upstream request hanging.
    res.on("close", () => {
      if (!res.writableFinished) upReq.destroy();
    });
    req.pipe(upReq);
  });
  // TLS probes (skopeo tries https first) and other garbage land here; not recorded as requests.
  server.on("clientError", (err, socket) => {
    log += `client error: ${err.message}\n`;
    socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  proxyOrigin = `http://127.0.0.1:${port}`;

  let stopping: Promise<void> | undefined;
  return {
    url: proxyOrigin,
    requests,
    reset: () => void requests.splice(0),
    logs: () => log,
    stop: () =>
      (stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      })),
  };
}
