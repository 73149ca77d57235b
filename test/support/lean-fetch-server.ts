// Run by test/unit/node-fetch-classes.test.ts in a process of its own: Stowage's Headers, Request
// and Response installed as the Node adapter does, a @hono/node-server on them, a GET and a POST
// through node:http, then one JSON line: what came back, and whether undici was loaded.
import { installLeanFetchClasses } from "../../src/runtime/node-fetch-classes.ts";

installLeanFetchClasses();
const { serve } = await import("@hono/node-server");
const http = await import("node:http");

const server = serve({
  hostname: "127.0.0.1",
  port: 0,
  overrideGlobalObjects: false,
  fetch: async (request: Request) => {
    const url = new URL(request.url);
    if (request.method === "POST") {
      // Through the body stream, as Stowage reads a request body (util/streams.ts readLimited).
      const text = await new Response(request.body).text();
      const res = new Response(`got ${text.length} bytes: ${text}`, { status: 201 });
      res.headers.append("set-cookie", "a=1");
      res.headers.append("set-cookie", "b=2");
      return res;
    }
    return Response.json({ path: url.pathname, accept: request.headers.get("accept") });
  },
});
await new Promise((r) => server.once("listening", r));
const port = (server.address() as { port: number }).port;

function call(method: string, body?: string): Promise<{ status: number; type: string; body: string; cookies: string[] }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: "/v2/", headers: { accept: "application/json", ...(body ? { "content-type": "application/x-www-form-urlencoded" } : {}) } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body: text, cookies: res.headers["set-cookie"] ?? [] }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

const get = await call("GET");
const post = await call("POST", "grant_type=password&service=stowage&x");
server.close();
console.log(JSON.stringify({
  get: { status: get.status, type: get.type, body: get.body },
  post: { status: post.status, type: post.type, body: post.body },
  cookies: post.cookies,
  // Node's list of the internal modules it loaded (not in @types/node).
  undiciLoaded: (process as unknown as { moduleLoadList: string[] }).moduleLoadList.some((m) => m.includes("undici")),
}));
