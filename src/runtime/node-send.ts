/**
 * Node's way of sending a blob body (see storage/direct-body.ts): its source written straight to
 * the response, instead of through the web stream layers @hono/node-server would read. Each
 * chunk is one write; a chunk goes back to the source once the socket has taken it, so a stored
 * file is sent through a few reused buffers.
 */
import type { ServerResponse } from "node:http";
import type { DirectBody } from "../storage/direct-body.ts";

/**
 * Sends `response`'s head and `bytes`, its whole body, in one write, with its length (never
 * chunked) and, as @hono/node-server would give a body without one, a content type.
 */
export function sendWhole(outgoing: ServerResponse, response: Response, bytes: Uint8Array): void {
  const headers = headersOf(response);
  headers["content-length"] ??= String(bytes.byteLength);
  headers["content-type"] ??= "text/plain; charset=UTF-8";
  outgoing.writeHead(response.status, headers);
  outgoing.end(bytes);
}

/** The head's fields for node:http; each Set-Cookie stays a field of its own. */
function headersOf(response: Response): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  response.headers.forEach((value, name) => {
    if (name !== "set-cookie") headers[name] = value;
  });
  const cookies = response.headers.getSetCookie();
  if (cookies.length) headers["set-cookie"] = cookies;
  return headers;
}

/** Sends `response`'s head and then `body`; resolves when the response has ended either way. */
export async function sendDirect(outgoing: ServerResponse, response: Response, body: DirectBody): Promise<void> {
  const { source, hooks } = body;
  const stallMs = Math.min(...hooks.map((h) => h.stall?.ms ?? Infinity));
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    for (const h of hooks) h.onEnd?.();
  };
  let finished = false;
  const stop = (reason: unknown) => {
    if (finished) return;
    finished = true;
    source.cancel(reason);
  };
  // The client left (or a timeout destroyed the socket): stop reading, release the source.
  outgoing.once("close", () => {
    stop(new Error("the client closed the connection"));
    end();
  });
  outgoing.writeHead(response.status, headersOf(response));
  try {
    for (;;) {
      const chunk = await source.read();
      if (outgoing.destroyed) {
        if (chunk) stop(new Error("the client closed the connection"));
        return;
      }
      if (!chunk) {
        finished = true;
        outgoing.end();
        break;
      }
      for (const h of hooks) h.onChunk?.(chunk.byteLength);
      const flushed = outgoing.write(chunk, (err) => {
        if (!err) source.recycle?.(chunk);
      });
      if (!flushed) await drained(outgoing, stallMs, () => hooks.forEach((h) => h.stall?.onStall()));
    }
  } catch (err) {
    // As when a web stream body fails: the response is cut short, and the client sees it broken.
    stop(err);
    outgoing.destroy(err instanceof Error ? err : new Error(String(err)));
    end();
  }
}

/** Until the socket takes more (or goes away); a client that takes nothing for `stallMs` is cut off. */
function drained(outgoing: ServerResponse, stallMs: number, onStall: () => void): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      outgoing.off("drain", done);
      outgoing.off("close", done);
      resolve();
    };
    const timer = Number.isFinite(stallMs)
      ? setTimeout(() => {
        onStall();
        outgoing.destroy();
        done();
      }, stallMs)
      : undefined;
    outgoing.once("drain", done);
    outgoing.once("close", done);
  });
}
