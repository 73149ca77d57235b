import type { Readable } from "node:stream";
import { type PushedBody, pushedStream } from "../util/streams.ts";
import type { Runtime } from "./runtime.ts";

/** Statuses whose responses have no body (Response refuses one for them). */
const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);

/**
 * Bytes undici may hold for a response nobody takes right now (a paused blob download) before
 * it stops reading the socket.
 */
const BODY_HIGH_WATER_MARK = 256 * 1024;

/**
 * Upstream requests on Node: undici's `request` through an Agent that connects only where the
 * guard allows, as a fetch() (the Response and errors fetch would give). Not undici's fetch: its
 * body is a web stream that copies every chunk; here the body is a PushedBody, which a blob
 * download reads straight from undici (see util/streams.ts), and others as a web stream.
 * Redirects are never followed here (the upstream client follows them itself).
 */
export const nodeUpstreamFetch: Runtime["upstreamFetch"] = (guard) => {
  // undici is loaded at the first upstream request, not at start-up (~0.15 s and ~20 MiB here).
  let ready: Promise<typeof fetch> | null = null;
  const load = async (): Promise<typeof fetch> => {
    const { Agent, buildConnector, request } = await import("undici");
    // undici's own connector does TLS (SNI and certificate checks against the name in
    // the URL); we only choose the address it connects to.
    const connectTo = buildConnector({});
    const agent = new Agent({
      connect: (opts, callback) => {
        const port = Number(opts.port) || (opts.protocol === "https:" ? 443 : 80);
        guard(opts.hostname, port).then(
          (target) => connectTo({ ...opts, hostname: target.address }, callback),
          (err: Error) => callback(err, null),
        );
      },
    });
    return (async (input: string | URL | Request, init?: RequestInit) => {
      if (input instanceof Request) throw new TypeError("the upstream fetch takes a URL, not a Request");
      const method = (init?.method ?? "GET").toUpperCase();
      const headers: Record<string, string> = {};
      new Headers(init?.headers).forEach((value, name) => (headers[name] = value));
      const signal = init?.signal ?? undefined;
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(input, { method: method as "GET", headers, signal, dispatcher: agent, highWaterMark: BODY_HIGH_WATER_MARK });
      } catch (err) {
        // As fetch: an abort rejects with the signal's reason, anything else is "fetch failed" with the cause.
        if (signal?.aborted) throw signal.reason;
        throw new TypeError("fetch failed", { cause: err });
      }
      const responseHeaders = new Headers();
      for (const [name, value] of Object.entries(res.headers)) {
        if (Array.isArray(value)) for (const v of value) responseHeaders.append(name, v);
        else if (value !== undefined) responseHeaders.set(name, value);
      }
      const status = res.statusCode;
      if (status < 200 || status > 599) {
        res.body.destroy();
        throw new TypeError("fetch failed", { cause: new Error(`invalid HTTP status ${status}`) });
      }
      if (method === "HEAD" || NULL_BODY_STATUSES.has(status)) {
        res.body.dump().catch(() => {});
        return new Response(null, { status, headers: responseHeaders });
      }
      return new Response(pushedStream(pushedReadable(res.body)), { status, headers: responseHeaders });
    }) as typeof fetch;
  };
  return (async (input: string | URL | Request, init?: RequestInit) => (await (ready ??= load()))(input, init)) as typeof fetch;
};

/** undici's body stream as a PushedBody: 'data' events handed on as they come, paused while the reader waits. */
function pushedReadable(readable: Readable): PushedBody {
  // Errors reach a reader through pipe(); one nobody reads (a body cancelled unread) is no crash.
  readable.on("error", () => {});
  return {
    pipe(onChunk) {
      return new Promise<void>((resolve, reject) => {
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
