import { serve } from "@hono/node-server";
import { openKv } from "@deno/kv";
import { access, constants, mkdir } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { type Server as HttpServer, ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Kv } from "../kv/kv.ts";
import { takeDirect } from "../storage/direct-body.ts";
import { processIdleCollector } from "./node-idle-gc.ts";
import { takeWholeBody } from "./node-fetch-classes.ts";
import { sendDirect, sendWhole } from "./node-send.ts";
import { nodeUpstreamFetch } from "./node-upstream.ts";
import { spawnNodeWorker } from "./node-workers.ts";
import type { Runtime } from "./runtime.ts";

/** The Node adapter; its worker threads (node-workers.ts) and upstream HTTP client (node-upstream.ts) are next to it. */

/** What @hono/node-server is handed for a response Stowage sent itself: one for all, it only reads the header. */
let sent: Response | undefined;
const alreadySent = (): Response => (sent ??= new Response(null, { headers: { "x-hono-already-sent": "1" } }));

export const nodeRuntime: Runtime = {
  name: "node",
  serve(handler, listen, opts) {
    return new Promise((resolve, reject) => {
      const server = serve({
        // @hono/node-server passes { incoming, outgoing } as the second argument: the peer address is the socket's.
        fetch: async (request: Request, env: { incoming?: { socket?: { remoteAddress?: string } }; outgoing?: unknown }) => {
          const response = await handler(request, { remoteAddress: env?.incoming?.socket?.remoteAddress ?? null });
          // Bytes in memory go out with the head in one write; a blob body goes to the socket from
          // its source (node-send.ts). Either way @hono/node-server is told it was sent.
          const outgoing = env?.outgoing instanceof ServerResponse ? env.outgoing : null;
          if (!outgoing) return response;
          const whole = takeWholeBody(response);
          if (whole) {
            sendWhole(outgoing, response, whole);
            return alreadySent();
          }
          const direct = takeDirect(response.body);
          if (!direct) return response;
          sendDirect(outgoing, response, direct).catch((err) => outgoing.destroy(err));
          return alreadySent();
        },
        hostname: listen.hostname,
        port: listen.port,
        overrideGlobalObjects: false,
      });
      // What a burst of requests left on the heap is collected once the process has been quiet a
      // while: one collector for every listener (a metrics scrape must not count as quiet for blobs).
      const idle = processIdleCollector();
      // Connections with a request in progress: only those can hold up a client.
      const busy = new WeakSet<Socket>();
      server.on("request", (req: { socket: Socket }, res: ServerResponse) => {
        idle.begin();
        busy.add(req.socket);
        res.once("close", () => {
          idle.end();
          busy.delete(req.socket);
        });
      });
      // Socket inactivity: a client that stops reading leaves its socket idle once the buffers fill.
      // The same event ends a kept-alive connection idle between requests (Node's keepAliveTimeout)
      // and, in some Node versions, every connection when the server closes: neither is to log.
      let closing = false;
      (server as HttpServer).setTimeout(opts.clientTimeoutMs, (socket: Socket) => {
        if (!closing && busy.has(socket)) opts.onClientTimeout?.();
        socket.destroy();
      });
      server.once("error", reject);
      server.once("listening", () => {
        const address = server.address() as AddressInfo;
        resolve({
          hostname: address.address,
          port: address.port,
          close: () =>
            new Promise<void>((done) => {
              closing = true;
              idle.stop();
              server.close(() => done());
              (server as { closeAllConnections?: () => void }).closeAllConnections?.();
            }),
        });
      });
    });
  },
  async openKv(path) {
    return (await openKv(path)) as unknown as Kv;
  },
  hasPlatformKv: false,
  spawnWorker: spawnNodeWorker,
  async canWrite(path) {
    try {
      await mkdir(path, { recursive: true });
      await access(path, constants.W_OK);
      return true;
    } catch {
      return false;
    }
  },
  onSignal(signal, fn) {
    process.on(signal, fn);
  },
  args: () => process.argv.slice(2),
  env: () => process.env,
  setEnv: (name, value) => void (process.env[name] = value),
  nodeVersion: process.version,
  readTextFile: (path) => readFileSync(path, "utf8"),
  async readStdin() {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  },
  exit: (code) => process.exit(code),
  upstreamFetch: nodeUpstreamFetch,
  pinsUpstreamAddresses: true,
};
