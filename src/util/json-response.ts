/**
 * A JSON response with its Content-Length. `head`: the answer to a HEAD
 * request, the same headers without the body.
 */
export function jsonResponse(value: unknown, opts: JsonResponseOptions = {}): Response {
  return jsonTextResponse(JSON.stringify(value), opts);
}

/** The same for JSON that is already text. */
export function jsonTextResponse(text: string, { status = 200, headers = {}, head = false }: JsonResponseOptions = {}): Response {
  return new Response(head ? null : text, {
    status,
    headers: { ...headers, "content-type": "application/json", "content-length": String(new TextEncoder().encode(text).byteLength) },
  });
}

export type JsonResponseOptions = { status?: number; headers?: Record<string, string>; head?: boolean };
