import { pushedStream } from "../util/streams.ts";
import { Http1Client, type Http1Response } from "./node-http1.ts";
import type { Runtime } from "./runtime.ts";

/** Statuses whose responses have no body (Response refuses one for them). */
const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);

/**
 * Upstream requests on Node through the in-place HTTP/1.1 client (node-http1.ts), as a fetch()
 * (the Response and errors fetch would give): connections only where the guard allows, kept
 * alive per origin. The body is a PushedBody, which a blob download takes whole (batches read in
 * place, see util/streams.ts), and others read as a web stream. Redirects are never followed here
 * (the upstream client follows them itself). Parsing is strict and a response head is limited to
 * 16 KiB.
 */
export const nodeUpstreamFetch: Runtime["upstreamFetch"] = (guard) => {
  const client = new Http1Client(guard);
  return (async (input: string | URL | Request, init?: RequestInit) => {
    if (input instanceof Request) throw new TypeError("the upstream fetch takes a URL, not a Request");
    if (init?.body != null) throw new TypeError("the upstream fetch sends no request body");
    const url = new URL(input);
    const method = (init?.method ?? "GET").toUpperCase();
    const signal = init?.signal ?? undefined;
    if (signal?.aborted) throw signal.reason;
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, name) => (headers[name] = value));
    let res: Http1Response;
    try {
      res = await client.request(url, method, headers, signal);
    } catch (err) {
      // As fetch: an abort rejects with the signal's reason, anything else is "fetch failed" with the cause.
      if (signal?.aborted) throw signal.reason;
      throw new TypeError("fetch failed", { cause: err });
    }
    const responseHeaders = new Headers();
    for (const [name, value] of res.head.headers) responseHeaders.append(name, value);
    const status = res.head.status;
    if (!res.body || NULL_BODY_STATUSES.has(status)) {
      res.body?.cancel();
      return new Response(null, { status, headers: responseHeaders });
    }
    return new Response(pushedStream(res.body), { status, headers: responseHeaders });
  }) as typeof fetch;
};
