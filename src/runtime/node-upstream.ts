import * as http from "node:http";
import type { Agent as HttpsAgent } from "node:https";
import { isIP, type Socket } from "node:net";
import type { Readable } from "node:stream";
import type { PeerCertificate } from "node:tls";
import { unbracketed } from "../util/ip.ts";
import { type PushedBody, pushedStream } from "../util/streams.ts";
import type { AddressGuard, Runtime } from "./runtime.ts";

/** Statuses whose responses have no body (Response refuses one for them). */
const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);

/**
 * Pools of connections per upstream host. Blob and manifest requests reuse idle connections;
 * an idle one is closed after `timeout` ms (or sooner if the server's Keep-Alive header says
 * so), before a typical server's own idle timeout (5 s for Node, 60-90 s for
 * registries behind load balancers) would close it under a request.
 */
const AGENT_OPTIONS: http.AgentOptions = {
  keepAlive: true,
  maxSockets: 64,
  maxFreeSockets: 16,
  timeout: 4_000,
  scheduling: "lifo",
};

/**
 * Bytes a response stream may hold for a body nobody takes right now (a paused blob download)
 * before Node stops reading the socket; the response stream takes its socket's mark. Larger
 * than Node's 16 KiB so a reader that waits now and then (a disk write) does not stop and
 * restart the socket for every chunk.
 */
const BODY_HIGH_WATER_MARK = 256 * 1024;

/** The most a response's status line and headers may take (real registries send 1-4 KiB). */
const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;

type ConnectOptions = http.RequestOptions & { host: string; port?: number | string; servername?: string; highWaterMark?: number };
type Connected = (err: Error | null, socket?: Socket) => void;
type CreateConnection = (options: ConnectOptions, callback?: Connected) => Socket | undefined;

/**
 * Makes `agent` open every connection where the guard says: the guard gets the name from the URL
 * (an IP literal too, which no DNS lookup would see) and answers with the one address to connect
 * to, so a DNS answer cannot change between the check and the connection. Node's Agent takes the
 * socket through the callback once the guard has answered. With TLS, SNI and the certificate
 * check still use the name in the URL (not for an IP literal: no SNI, the certificate must name
 * the address), against the CAs Node trusts (NODE_EXTRA_CA_CERTS included).
 */
function guardConnections(agent: http.Agent, guard: AddressGuard, defaultPort: number, tls: typeof import("node:tls") | null): void {
  const holder = agent as unknown as { createConnection: CreateConnection };
  // The agent's own: net.connect, or for https tls.connect with its TLS session cache.
  const open = holder.createConnection.bind(agent);
  holder.createConnection = (options, callback) => {
    // The URL's host name, as send() gave it (an IPv6 literal without its brackets).
    const name = options.host;
    const port = Number(options.port) || defaultPort;
    guard(name, port).then(
      (target) => {
        let socket: Socket | undefined;
        try {
          const tlsOptions = tls && {
            servername: isIP(name) ? "" : name,
            checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServerIdentity(name, cert),
          };
          socket = open({ ...options, host: target.address, highWaterMark: BODY_HIGH_WATER_MARK, ...tlsOptions });
        } catch (err) {
          callback?.(err as Error);
          return;
        }
        callback?.(null, socket);
      },
      (err: Error) => callback?.(err),
    );
    return undefined;
  };
}

/** A request that failed on a pooled connection before any response: the server had closed it meanwhile. */
class StaleConnection extends Error {}

/**
 * Upstream requests on Node: node:http / node:https (built into the binary, so none of a
 * client's source sits on the heap) through keep-alive agents that connect only where the guard
 * allows, as a fetch() (the Response and errors fetch would give). The body is a PushedBody,
 * which a blob download reads straight from the response stream (see util/streams.ts), and
 * others as a web stream. Redirects are never followed here (the upstream client follows them
 * itself). HTTP parsing is strict and response headers are limited to Node's default size,
 * whatever NODE_OPTIONS says.
 */
export const nodeUpstreamFetch: Runtime["upstreamFetch"] = (guard) => {
  let httpAgent: http.Agent | null = null;
  // node:https (and TLS) is loaded at the first https request.
  let httpsReady: Promise<{ agent: HttpsAgent; request: typeof http.request }> | null = null;
  const loadHttps = async () => {
    const [https, tls] = await Promise.all([import("node:https"), import("node:tls")]);
    const agent = new https.Agent(AGENT_OPTIONS);
    guardConnections(agent, guard, 443, tls);
    return { agent, request: https.request as typeof http.request };
  };

  return (async (input: string | URL | Request, init?: RequestInit) => {
    if (input instanceof Request) throw new TypeError("the upstream fetch takes a URL, not a Request");
    if (init?.body != null) throw new TypeError("the upstream fetch sends no request body");
    const url = new URL(input);
    const method = (init?.method ?? "GET").toUpperCase();
    const signal = init?.signal ?? undefined;
    if (signal?.aborted) throw signal.reason;
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, name) => (headers[name] = value));

    let client: { agent: http.Agent; request: typeof http.request };
    if (url.protocol === "http:") {
      if (!httpAgent) guardConnections((httpAgent = new http.Agent(AGENT_OPTIONS)), guard, 80, null);
      client = { agent: httpAgent, request: http.request };
    } else if (url.protocol === "https:") {
      client = await (httpsReady ??= loadHttps());
    } else {
      throw new TypeError("fetch failed", { cause: new Error(`unsupported URL scheme ${url.protocol}`) });
    }

    let res: http.IncomingMessage;
    for (let attempt = 0; ; attempt++) {
      try {
        res = await send(client, url, method, headers, signal);
        break;
      } catch (err) {
        // As fetch: an abort rejects with the signal's reason, anything else is "fetch failed" with the cause.
        if (signal?.aborted) throw signal.reason;
        // GET and HEAD change nothing: sent again once, on a new connection.
        if (err instanceof StaleConnection && attempt === 0) continue;
        throw new TypeError("fetch failed", { cause: err instanceof StaleConnection ? err.cause : err });
      }
    }

    const status = res.statusCode ?? 0;
    const responseHeaders = new Headers();
    try {
      if (status < 200 || status > 599) throw new Error(`invalid HTTP status ${status}`);
      const raw = res.rawHeaders;
      for (let i = 0; i + 1 < raw.length; i += 2) responseHeaders.append(raw[i]!, raw[i + 1]!);
    } catch (err) {
      res.destroy();
      throw new TypeError("fetch failed", { cause: err });
    }
    if (method === "HEAD" || NULL_BODY_STATUSES.has(status)) {
      res.resume(); // read to its end, so the connection goes back to the pool
      return new Response(null, { status, headers: responseHeaders });
    }
    return new Response(pushedStream(pushedReadable(res)), { status, headers: responseHeaders });
  }) as typeof fetch;
};

/**
 * Sends the request; resolves with the response once its headers are in. The signal cuts the
 * request off with its reason, before the headers or later in the body.
 */
function send(
  client: { agent: http.Agent; request: typeof http.request },
  url: URL,
  method: string,
  headers: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    let req: http.ClientRequest;
    try {
      req = client.request({
        protocol: url.protocol,
        hostname: unbracketed(url.hostname),
        port: url.port || undefined,
        path: url.pathname + url.search,
        method,
        headers,
        agent: client.agent,
        insecureHTTPParser: false,
        // Node's default, stated: --max-http-header-size in NODE_OPTIONS must not raise it for upstream answers.
        maxHeaderSize: MAX_RESPONSE_HEAD_BYTES,
      });
    } catch (err) {
      reject(err); // a header value Node refuses
      return;
    }
    let response: http.IncomingMessage | null = null;
    const onAbort = () => {
      // The reason as it is: the body's reader rejects with it, as fetch's would.
      const reason = signal!.reason as Error;
      if (response) response.destroy(reason);
      else req.destroy(reason);
    };
    const done = () => signal?.removeEventListener("abort", onAbort);
    signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", (err) => {
      if (response) {
        // A socket or parse error in the middle of the body: the body ends with it.
        if (!response.destroyed) response.destroy(err);
        return;
      }
      done();
      const code = (err as { code?: string }).code;
      if (req.reusedSocket && (code === "ECONNRESET" || code === "EPIPE")) reject(new StaleConnection("stale connection", { cause: err }));
      else reject(err);
    });
    req.once("response", (res) => {
      response = res;
      res.once("close", done);
      resolve(res);
    });
    req.end();
  });
}

/** A response body stream as a PushedBody: 'data' events handed on as they come, paused while the reader waits. */
function pushedReadable(readable: Readable): PushedBody {
  // Errors reach a reader through pipe(); one nobody reads (a body cancelled unread) is no crash.
  readable.on("error", () => {});
  return {
    pipe(onChunk) {
      return new Promise<void>((resolve, reject) => {
        // Broken (or aborted) before anyone started reading: its 'error' and 'close' are past.
        if (readable.destroyed && !readable.readableEnded) {
          reject(readable.errored ?? new Error("the response body was cut off"));
          return;
        }
        let over = false;
        // The reader's promise for the last chunk: the body has ended for it only once that settles.
        let paced: Promise<void> | null = null;
        const ended = () => {
          const last = paced;
          if (last) last.then(() => finish(null), () => {});
          else finish(null);
        };
        const finish = (err: unknown) => {
          if (over) return;
          over = true;
          readable.off("data", onData);
          if (err === null) resolve();
          else {
            // Cut off: the connection is not reused for the rest of this body.
            if (!readable.destroyed) readable.destroy();
            reject(err);
          }
        };
        const onData = (chunk: Uint8Array) => {
          let wait: void | Promise<void>;
          try {
            wait = onChunk(chunk);
          } catch (err) {
            finish(err);
            return;
          }
          if (!wait) return;
          readable.pause();
          const current = (paced = wait.then(
            () => {
              if (paced === current) paced = null;
              if (!over) readable.resume();
            },
            (err: unknown) => finish(err),
          ));
        };
        readable.on("data", onData);
        readable.once("end", ended);
        readable.once("error", (err) => finish(err));
        readable.once("close", () => (readable.readableEnded ? ended() : finish(new Error("the response body was cut off"))));
      });
    },
    cancel(reason) {
      readable.destroy(reason instanceof Error ? reason : undefined);
    },
  };
}
