// An HTTP pass-through that answers chosen requests with an error of its own and forwards the
// rest unchanged (Host included, so S3 signatures still verify): for a server that fails some
// requests with 5xx on cue, which no real server does.
import { createServer, request, type IncomingMessage } from "node:http";

export type HttpFaultProxy = {
  /** host:port of the proxy. */
  address: string;
  /** Requests answered by the proxy itself, by method, since start. */
  failed: Map<string, number>;
  /** null: forward everything. */
  failWhen(rule: ((req: IncomingMessage) => boolean) | null): void;
  stop(): Promise<void>;
};

/** The body S3 sends with 503 SlowDown. */
const SLOW_DOWN = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';

export async function startHttpFaultProxy(targetHost: string, targetPort: number): Promise<HttpFaultProxy> {
  let rule: ((req: IncomingMessage) => boolean) | null = null;
  const failed = new Map<string, number>();
  const server = createServer((req, res) => {
    if (rule?.(req)) {
      failed.set(req.method ?? "?", (failed.get(req.method ?? "?") ?? 0) + 1);
      req.resume();
      res.writeHead(503, { "content-type": "application/xml", "content-length": Buffer.byteLength(SLOW_DOWN) });
      res.end(SLOW_DOWN);
      return;
    }
    const out = request({ host: targetHost, port: targetPort, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    out.on("error", () => res.destroy());
    req.pipe(out);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    address: `127.0.0.1:${port}`,
    failed,
    failWhen(next) {
      rule = next;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
