// A pass-through HTTP proxy between a peer and the upstream that can break one download: the
// first GET of `path` whose body is streaming gets its connection destroyed once `cutAt` body
// bytes have gone through, as if the upstream (or the network) dropped it mid-blob. Every other
// request, retries and Range requests for the same blob included, passes through untouched.
// It records what the peer asked for, so the report can show how the peer recovered.
import { type IncomingHttpHeaders, createServer, request, Agent } from "node:http";

export type ProxiedRequest = { method: string; path: string; range: string | null; status: number; bytes: number; cut: boolean };

export type FaultProxy = {
  url: string;
  requests: ProxiedRequest[];
  stop(): Promise<void>;
};

// Per-connection headers (RFC 9110 §7.6.1) are the proxy's own business, not forwarded.
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "expect"]);

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/** `cut` null: a clean pass-through, the reference the faulty run is compared with. */
export async function startFaultProxy(targetUrl: string, cut: { path: string; cutAt: number } | null): Promise<FaultProxy> {
  const target = new URL(targetUrl);
  const agent = new Agent({ keepAlive: true });
  const requests: ProxiedRequest[] = [];
  let armed = cut !== null;
  let origin = "";

  const server = createServer((req, res) => {
    const method = req.method ?? "GET";
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const headers = forwardable(req.headers);
    headers.host = target.host;
    const upReq = request({ host: target.hostname, port: target.port, method, path: req.url, headers, agent }, (upRes) => {
      const status = upRes.statusCode ?? 502;
      const rec: ProxiedRequest = { method, path, range: typeof req.headers.range === "string" ? req.headers.range : null, status, bytes: 0, cut: false };
      requests.push(rec);
      const outHeaders = forwardable(upRes.headers);
      const loc = outHeaders.location;
      if (typeof loc === "string" && loc.startsWith(target.origin)) outHeaders.location = origin + loc.slice(target.origin.length);
      res.writeHead(status, upRes.statusMessage, outHeaders);
      const breakThis = armed && cut !== null && method === "GET" && path === cut.path && status === 200;
      if (breakThis) armed = false;
      // Hand-rolled pipe: it has to stop at an exact byte, and counts as it goes.
      upRes.on("data", (chunk: Buffer) => {
        if (breakThis && cut && rec.bytes + chunk.length >= cut.cutAt) {
          const head = chunk.subarray(0, cut.cutAt - rec.bytes);
          rec.bytes += head.length;
          rec.cut = true;
          upRes.destroy();
          // Let the first half reach the peer, then drop the connection without an end.
          res.write(head, () => res.destroy());
          return;
        }
        rec.bytes += chunk.length;
        if (!res.write(chunk)) upRes.pause();
      });
      res.on("drain", () => upRes.resume());
      upRes.on("end", () => res.end());
      upRes.on("error", () => res.destroy());
    });
    // A stuck upstream must not hold the bench: no bytes for 5 minutes ends the request.
    upReq.setTimeout(300_000, () => upReq.destroy(new Error("no answer from the upstream for 300 s")));
    upReq.on("error", (err) => {
      if (res.headersSent) return void res.destroy();
      res.writeHead(502, { "content-type": "text/plain" }).end(`fault proxy: upstream unreachable: ${err.message}`);
    });
    res.on("close", () => {
      if (!res.writableFinished) upReq.destroy();
    });
    req.pipe(upReq);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  origin = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`;
  return {
    url: origin,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      }),
  };
}
