// Stowage's own Headers, Request and Response for Node (src/runtime/node-fetch-classes.ts) against
// the ones Node ships (undici's), case by case: every case runs on both and must come out the same,
// errors included. Then a real server on @hono/node-server with them installed: it answers as
// before, and undici is never loaded.
import t from "tap";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { LeanHeaders, LeanRequest, LeanResponse } from "../../src/runtime/node-fetch-classes.ts";

type Classes = { H: typeof Headers; Req: typeof Request; Res: typeof Response };
const lean = { H: LeanHeaders, Req: LeanRequest, Res: LeanResponse } as unknown as Classes;
const node: Classes = { H: Headers, Req: Request, Res: Response };

/** What a case gives: its value as JSON, or the kind of error it threw. */
async function outcome(fn: (c: Classes) => unknown, c: Classes): Promise<string> {
  try {
    return JSON.stringify(await fn(c));
  } catch (err) {
    return `throws ${(err as Error).constructor.name}`;
  }
}

const all = (h: Headers) => [...h];

const cases: Array<[string, (c: Classes) => unknown]> = [
  // Headers
  ["record init, mixed-case names", ({ H }) => all(new H({ "Content-Type": "application/json", "X-Request-Id": "abc" }))],
  ["pairs init, repeated name joins with comma", ({ H }) => all(new H([["Accept", "a/b"], ["accept", "c/d"]]))],
  ["Headers init copies", ({ H }) => all(new H(new H({ a: "1" })))],
  ["iteration is sorted by name", ({ H }) => all(new H({ zeta: "1", alpha: "2", Mid: "3" }))],
  ["values are trimmed of HTTP whitespace", ({ H }) => new H({ a: " \t v \r\n" }).get("a")],
  ["inner spaces are kept", ({ H }) => new H({ a: "Bearer  x" }).get("a")],
  ["get is case-insensitive", ({ H }) => new H({ "WWW-Authenticate": "Bearer realm=x" }).get("www-authenticate")],
  ["get of a missing header is null", ({ H }) => new H().get("x")],
  ["has and delete", ({ H }) => {
    const h = new H({ a: "1", b: "2" });
    h.delete("A");
    return [h.has("a"), h.has("B"), all(h)];
  }],
  ["set replaces every value", ({ H }) => {
    const h = new H([["a", "1"], ["a", "2"]]);
    h.set("A", "3");
    return all(h);
  }],
  ["Set-Cookie stays separate", ({ H }) => {
    const h = new H();
    h.append("Set-Cookie", "a=1");
    h.append("set-cookie", "b=2");
    h.append("x", "y");
    return [all(h), h.get("set-cookie"), h.getSetCookie()];
  }],
  ["forEach gives value, name", ({ H }) => {
    const seen: string[] = [];
    new H({ B: "2", a: "1" }).forEach((v, k) => seen.push(`${k}=${v}`));
    return seen;
  }],
  ["keys and values", ({ H }) => {
    const h = new H({ b: "2", a: "1" });
    return [[...h.keys()], [...h.values()]];
  }],
  ["empty value is allowed", ({ H }) => new H({ a: "" }).get("a")],
  ["a name with a space throws", ({ H }) => new H({ "bad name": "x" })],
  ["a name with a colon throws", ({ H }) => new H({ "a:b": "x" })],
  ["an empty name throws", ({ H }) => new H({ "": "x" })],
  ["a non-ASCII name throws", ({ H }) => new H({ "ünï": "x" })],
  ["CRLF in a value throws (header injection)", ({ H }) => new H({ a: "x\r\nInjected: 1" })],
  ["LF in a value throws", ({ H }) => new H().append("a", "x\ny")],
  ["NUL in a value throws", ({ H }) => new H().set("a", "x\0y")],
  ["a pair of three throws", ({ H }) => new H([["a", "b", "c"]] as unknown as [string, string][])],
  ["a pair of one throws", ({ H }) => new H([["a"]] as unknown as [string, string][])],
  ["a string init throws", ({ H }) => new H("a: b" as unknown as HeadersInit)],
  ["toStringTag", ({ H }) => Object.prototype.toString.call(new H())],
  // Response
  ["default response", async ({ Res }) => {
    const r = new Res();
    return [r.status, r.ok, r.statusText, r.body, all(r.headers), r.type, r.url, r.redirected, await r.text()];
  }],
  ["string body gets text/plain", async ({ Res }) => {
    const r = new Res("héllo");
    return [r.headers.get("content-type"), await r.text()];
  }],
  ["explicit content-type wins", async ({ Res }) => {
    const r = new Res("{}", { headers: { "Content-Type": "application/json" } });
    return [all(r.headers), await r.json()];
  }],
  ["Uint8Array body, no content-type", async ({ Res }) => {
    const r = new Res(new Uint8Array([1, 2, 3]), { status: 206 });
    return [r.status, r.headers.get("content-type"), [...new Uint8Array(await r.arrayBuffer())]];
  }],
  ["a view on part of a buffer", async ({ Res }) => [...(await new Res(new Uint8Array([9, 1, 2, 9]).subarray(1, 3)).bytes())]],
  ["ArrayBuffer body", async ({ Res }) => [...(await new Res(new Uint8Array([4, 5]).buffer).bytes())]],
  ["URLSearchParams body", async ({ Res }) => {
    const r = new Res(new URLSearchParams({ grant_type: "password", scope: "repository:a/b:pull" }));
    return [r.headers.get("content-type"), await r.text()];
  }],
  ["Blob body takes its type", async ({ Res }) => {
    const r = new Res(new Blob(["abc"], { type: "application/octet-stream" }));
    return [r.headers.get("content-type"), await r.text()];
  }],
  ["stream body, read as text", async ({ Res }) => {
    const enc = new TextEncoder();
    const body = new ReadableStream({
      start(c) {
        c.enqueue(enc.encode("ab"));
        c.enqueue(enc.encode("cd"));
        c.close();
      },
    });
    const r = new Res(body);
    return [r.headers.get("content-type"), await r.text()];
  }],
  ["a stream body is the same object", ({ Res }) => {
    const body = new ReadableStream();
    return new Res(body).body === body;
  }],
  ["the body is a stream for a string too", async ({ Res }) => {
    const reader = new Res("xy").body!.getReader();
    const parts: number[][] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push([...value]);
    }
    return parts;
  }],
  ["reading twice throws", async ({ Res }) => {
    const r = new Res("x");
    await r.text();
    return [r.bodyUsed, await r.text()];
  }],
  ["bad JSON rejects", async ({ Res }) => await new Res("{").json()],
  ["status 199 throws", ({ Res }) => new Res(null, { status: 199 })],
  ["status 600 throws", ({ Res }) => new Res(null, { status: 600 })],
  ["status 1.5 throws", ({ Res }) => new Res(null, { status: 1.5 })],
  ["204 with a body throws", ({ Res }) => new Res("x", { status: 204 })],
  ["304 without a body", ({ Res }) => new Res(null, { status: 304 }).status],
  ["statusText with CR throws", ({ Res }) => new Res(null, { statusText: "a\rb" })],
  ["statusText kept", ({ Res }) => new Res(null, { status: 404, statusText: "Not Found" }).statusText],
  ["ok for 299 and not 300", ({ Res }) => [new Res(null, { status: 299 }).ok, new Res(null, { status: 300 }).ok]],
  ["Response.json", async ({ Res }) => {
    const r = Res.json({ errors: [{ code: "UNAUTHORIZED" }] }, { status: 401, headers: { "WWW-Authenticate": "Bearer x" } });
    return [r.status, all(r.headers), await r.json()];
  }],
  ["Response.json keeps a given content-type", ({ Res }) => all(Res.json(1, { headers: { "content-type": "application/vnd.x+json" } }).headers)],
  ["Response.json of undefined throws", ({ Res }) => Res.json(undefined)],
  ["Response.redirect", ({ Res }) => {
    const r = Res.redirect("https://cdn.example/blob?sig=1", 307);
    return [r.status, all(r.headers)];
  }],
  ["Response.redirect with 200 throws", ({ Res }) => Res.redirect("https://x/", 200)],
  ["Response.redirect of a relative URL throws", ({ Res }) => Res.redirect("/x")],
  ["Response.error", ({ Res }) => [Res.error().status, Res.error().type]],
  ["clone: both read the body", async ({ Res }) => {
    const a = new Res("body", { status: 202, headers: { x: "1" } });
    const b = a.clone();
    return [b.status, all(b.headers), await a.text(), await b.text()];
  }],
  ["clone of a stream body", async ({ Res }) => {
    const a = new Res(new Blob(["streamed"]).stream());
    const b = a.clone();
    return [await b.text(), await a.text()];
  }],
  ["clone after reading throws", async ({ Res }) => {
    const a = new Res("x");
    await a.text();
    return a.clone();
  }],
  ["blob() carries the content-type", async ({ Res }) => {
    const b = await new Res("x", { headers: { "content-type": "text/x" } }).blob();
    return [b.type, b.size];
  }],
  ["formData() of a urlencoded body", async ({ Res }) => {
    const f = await new Res(new URLSearchParams({ a: "1", b: "two" })).formData();
    return [...f.entries()];
  }],
  ["toStringTag", ({ Res }) => Object.prototype.toString.call(new Res())],
  // Request
  ["GET request", ({ Req }) => {
    const r = new Req("http://127.0.0.1:5000/v2/library/alpine/manifests/3.20?x=1#f", { headers: { Accept: "application/vnd.oci.image.index.v1+json" } });
    return [r.url, r.method, all(r.headers), r.body, r.bodyUsed, r.redirect, r.signal.aborted];
  }],
  ["a URL object", ({ Req }) => new Req(new URL("https://registry-1.docker.io/v2/")).url],
  ["lower-case methods are normalised", ({ Req }) => ["get", "head", "post", "put", "delete", "options"].map((m) => new Req("http://x/", { method: m }).method)],
  ["other methods keep their case", ({ Req }) => [new Req("http://x/", { method: "patch" }).method, new Req("http://x/", { method: "Purge" }).method]],
  ["CONNECT is refused", ({ Req }) => new Req("http://x/", { method: "CONNECT" })],
  ["TRACE is refused", ({ Req }) => new Req("http://x/", { method: "trace" })],
  ["a method with a space is refused", ({ Req }) => new Req("http://x/", { method: "G ET" })],
  ["a relative URL is refused", ({ Req }) => new Req("/v2/")],
  ["credentials in the URL are refused", ({ Req }) => new Req("http://user:pass@x/")],
  ["a GET with a body is refused", ({ Req }) => new Req("http://x/", { body: "x" })],
  ["a HEAD with a body is refused", ({ Req }) => new Req("http://x/", { method: "HEAD", body: "x" })],
  ["a POSTed token form", async ({ Req }) => {
    const r = new Req("http://127.0.0.1/token", { method: "POST", body: "grant_type=password&service=stowage&client_id=buildkit" });
    return [r.headers.get("content-type"), await r.text()];
  }],
  ["a streamed upload body", async ({ Req }) => {
    const r = new Req("http://x/", { method: "PUT", body: new Blob(["abc"]).stream(), duplex: "half" } as RequestInit);
    return await r.text();
  }],
  ["a request from a request", async ({ Req }) => {
    const a = new Req("http://x/a", { method: "POST", headers: { x: "1" }, body: "b" });
    const b = new Req(a, { headers: { y: "2" } });
    return [b.url, b.method, all(b.headers), await b.text()];
  }],
  ["the signal is passed on", ({ Req }) => {
    const ac = new AbortController();
    const r = new Req("http://x/", { signal: ac.signal });
    ac.abort();
    return r.signal.aborted;
  }],
  ["clone of a request", async ({ Req }) => {
    const a = new Req("http://x/", { method: "POST", body: "abc" });
    const b = a.clone();
    return [b.method, await b.text(), await a.text()];
  }],
  ["toStringTag", ({ Req }) => Object.prototype.toString.call(new Req("http://x/"))],
];

for (const [name, fn] of cases) {
  t.test(name, async (t) => {
    const want = await outcome(fn, node);
    t.equal(await outcome(fn, lean), want, `as Node's own: ${want}`);
  });
}

t.test("a request's body stream is the one it was given", async (t) => {
  const body = new ReadableStream();
  t.equal(new LeanRequest("http://x/", { method: "POST", body }).body, body);
});

t.test("served through @hono/node-server with them installed: same answers, undici never loaded", async (t) => {
  const script = fileURLToPath(new URL("../support/lean-fetch-server.ts", import.meta.url));
  const run = spawnSync(process.execPath, ["--import", "tsx", script], { encoding: "utf8", timeout: 60_000 });
  t.equal(run.status, 0, `the script ran: ${run.stderr}`);
  const report = JSON.parse(run.stdout.trim().split("\n").pop() ?? "{}") as Record<string, unknown>;
  t.same(report.get, { status: 200, type: "application/json", body: '{"path":"/v2/","accept":"application/json"}' }, "a GET");
  t.same(report.post, { status: 201, type: "text/plain;charset=UTF-8", body: "got 37 bytes: grant_type=password&service=stowage&x" }, "a POST with a form body");
  t.same(report.cookies, ["a=1", "b=2"], "two Set-Cookie headers stay two");
  t.equal(report.undiciLoaded, false, "undici was not loaded");
});
