// Upstream requests on Node (src/runtime/node-upstream.ts) against real servers on 127.0.0.1
// that answer byte by byte as the test says: which connections were opened, where the guard
// refused, how a broken or aborted body ends for its reader, and that a fetch-shaped caller
// sees what fetch would give.
import t, { type Test } from "tap";
import { createServer, type Server, type Socket } from "node:net";
import { nodeUpstreamFetch } from "../../src/runtime/node-upstream.ts";
import { createConnectGuard, NetworkRefused } from "../../src/upstream/network-guard.ts";
import type { Upstream } from "../../src/upstream/upstream.ts";
import { takePushed } from "../../src/util/streams.ts";

/** What the server got on one connection: the request heads, in order. */
type Conn = { socket: Socket; heads: string[] };
type Raw = { port: number; origin: string; conns: Conn[] };

/**
 * A server that hands each request head (up to the blank line) to `answer`, which writes
 * whatever bytes it likes on the socket. Request bodies are not expected.
 */
async function rawServer(t: Test, answer: (socket: Socket, head: string, conn: Conn) => void): Promise<Raw> {
  const conns: Conn[] = [];
  const server: Server = createServer((socket) => {
    const conn: Conn = { socket, heads: [] };
    conns.push(conn);
    let buffered = "";
    socket.on("error", () => {});
    socket.on("data", (data) => {
      buffered += data.toString("latin1");
      for (let end = buffered.indexOf("\r\n\r\n"); end !== -1; end = buffered.indexOf("\r\n\r\n")) {
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        conn.heads.push(head);
        answer(socket, head, conn);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  t.teardown(() => {
    for (const c of conns) c.socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port, origin: `http://127.0.0.1:${port}`, conns };
}

const respond = (socket: Socket, status: string, headers: string[], body = "") =>
  socket.write(`HTTP/1.1 ${status}\r\n${[...headers, `content-length: ${Buffer.byteLength(body)}`].join("\r\n")}\r\n\r\n${body}`);

/** A guard that allows loopback (the upstream lives there), as the tests' upstreams do. */
const loopbackUpstream = (port: number): Upstream => ({ name: "local", url: `http://127.0.0.1:${port}` }) as Upstream;
const allowAll = async (host: string) => ({ address: host, family: 4 as const });

t.test("two requests in a row go over one connection", async (t) => {
  const srv = await rawServer(t, (socket) => respond(socket, "200 OK", ["content-type: text/plain"], "hello"));
  const fetch = nodeUpstreamFetch(allowAll);
  for (let i = 0; i < 2; i++) {
    const res = await fetch(`${srv.origin}/v2/`);
    t.equal(res.status, 200);
    t.equal(await res.text(), "hello");
  }
  const head = await fetch(`${srv.origin}/v2/`, { method: "HEAD" });
  t.equal(head.status, 200);
  t.equal(head.body, null, "a HEAD response has no body");
  t.equal(srv.conns.length, 1, "one connection for all three requests");
  t.equal(srv.conns[0]!.heads.length, 3);
});

t.test("the guard decides the address of an IP-literal host too; a refusal opens no connection", async (t) => {
  const srv = await rawServer(t, (socket) => respond(socket, "200 OK", [], "secret"));
  // The upstream lives on a public address: a redirect to loopback is refused.
  const upstream = { name: "hub", url: "https://registry.example" } as Upstream;
  const guard = createConnectGuard(upstream, [], async () => [{ address: "203.0.114.7", family: 4 }]);
  const asked: string[] = [];
  const fetch = nodeUpstreamFetch(async (host, port) => {
    asked.push(`${host}:${port}`);
    return guard(host, port);
  });
  const err = await fetch(`${srv.origin}/metadata`).then(
    () => null,
    (e: unknown) => e,
  );
  t.type(err, TypeError, "rejects as fetch does");
  t.type((err as Error).cause, NetworkRefused, "with the guard's refusal as the cause");
  t.match(((err as Error).cause as Error).message, /loopback/);
  t.same(asked, [`127.0.0.1:${srv.port}`]);
  t.equal(srv.conns.length, 0, "nothing connected to the refused address");
  const v6 = await fetch("http://[::1]:1/").catch((e: Error) => e);
  t.type((v6 as Error).cause, NetworkRefused, "an IPv6 literal is asked about too");
  t.same(asked.at(-1), "::1:1", "the guard gets the address without brackets");
});

t.test("the guard's address is where the connection goes, with the URL's name in the Host header", async (t) => {
  const srv = await rawServer(t, (socket, head) => respond(socket, "200 OK", [], /^host: (.*)$/im.exec(head)?.[1] ?? ""));
  const fetch = nodeUpstreamFetch(async () => ({ address: "127.0.0.1", family: 4 }));
  const res = await fetch(`http://registry.invalid:${srv.port}/v2/`);
  t.equal(await res.text(), `registry.invalid:${srv.port}`);
});

t.test("a body cut short (Content-Length not met) rejects, and its connection is not reused", async (t) => {
  let n = 0;
  const srv = await rawServer(t, (socket) => {
    if (n++ === 0) {
      socket.write("HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n");
      socket.end(Buffer.alloc(30_000, 1));
    } else respond(socket, "200 OK", [], "whole");
  });
  const fetch = nodeUpstreamFetch(allowAll);
  const res = await fetch(`${srv.origin}/blob`);
  t.equal(res.status, 200);
  await t.rejects(res.arrayBuffer(), "the web stream errors, not ends");
  const again = await fetch(`${srv.origin}/blob`);
  t.equal(await again.text(), "whole");
  t.equal(srv.conns.length, 2);
});

t.test("a connection reset in the middle of a pushed body rejects its pipe", async (t) => {
  const srv = await rawServer(t, (socket) => {
    socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    socket.write("4000\r\n" + "x".repeat(0x4000) + "\r\n", () => setTimeout(() => socket.resetAndDestroy(), 20));
  });
  const fetch = nodeUpstreamFetch(allowAll);
  const res = await fetch(`${srv.origin}/blob`);
  const body = takePushed(res.body);
  t.ok(body, "the body is a pushed body");
  let got = 0;
  await t.rejects(body!.pipe((chunk) => void (got += chunk.byteLength)));
  t.equal(got, 0x4000, "what came before the reset was handed on");
});

t.test("a broken chunked encoding rejects the body (strict parsing)", async (t) => {
  const srv = await rawServer(t, (socket) => {
    socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n");
  });
  const res = await nodeUpstreamFetch(allowAll)(`${srv.origin}/blob`);
  await t.rejects(res.text());
});

t.test("aborting mid-body rejects the read with the signal's reason; before the headers, the fetch", async (t) => {
  const srv = await rawServer(t, (socket, head) => {
    if (head.includes("/slow-head")) return; // never answers
    socket.write("HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n");
    socket.write(Buffer.alloc(1000, 2)); // and then nothing
  });
  const fetch = nodeUpstreamFetch(allowAll);

  const mid = new AbortController();
  const res = await fetch(`${srv.origin}/blob`, { signal: mid.signal });
  const reading = res.arrayBuffer();
  const reason = new Error("client went away");
  setTimeout(() => mid.abort(reason), 50);
  await t.rejects(reading, reason);

  const early = new AbortController();
  const pending = fetch(`${srv.origin}/slow-head`, { signal: early.signal });
  setTimeout(() => early.abort(), 50);
  const err = await pending.catch((e: unknown) => e);
  t.equal((err as Error).name, "AbortError", "the signal's own reason (a DOMException AbortError)");
  t.equal(err, early.signal.reason);

  const already = AbortSignal.abort(new Error("too late"));
  await t.rejects(fetch(`${srv.origin}/blob`, { signal: already }), { message: "too late" });
});

t.test("response headers as fetch gives them; a status outside 200-599 or an oversize or ambiguous head is 'fetch failed'", async (t) => {
  const srv = await rawServer(t, (socket, head) => {
    const path = head.split(" ")[1];
    if (path === "/headers") {
      respond(socket, "200 OK", ["X-Multi: a", "x-multi: b", "Set-Cookie: c=1", "Set-Cookie: d=2", "Docker-Content-Digest: sha256:00"], "{}");
    } else if (path === "/status") {
      respond(socket, "700 Odd", []);
    } else if (path === "/big") {
      respond(socket, "200 OK", [`x-big: ${"y".repeat(20 * 1024)}`]);
    } else if (path === "/smuggle") {
      socket.write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    } else if (path === "/empty") {
      socket.write("HTTP/1.1 204 No Content\r\n\r\n");
    }
  });
  const fetch = nodeUpstreamFetch(allowAll);
  const res = await fetch(`${srv.origin}/headers`);
  t.equal(res.headers.get("x-multi"), "a, b");
  t.same(res.headers.getSetCookie(), ["c=1", "d=2"]);
  t.equal(res.headers.get("docker-content-digest"), "sha256:00");
  t.ok([...res.headers.keys()].every((k) => k === k.toLowerCase()), "names in lower case");
  await res.text();

  for (const path of ["/status", "/big", "/smuggle"]) {
    const err = await fetch(`${srv.origin}${path}`).catch((e: unknown) => e);
    t.type(err, TypeError, path);
    t.equal((err as Error).message, "fetch failed", path);
  }
  const empty = await fetch(`${srv.origin}/empty`);
  t.equal(empty.status, 204);
  t.equal(empty.body, null);
});

t.test("a pooled connection the server closed meanwhile is replaced, not reported", async (t) => {
  let n = 0;
  const srv = await rawServer(t, (socket, _head, conn) => {
    n++;
    if (conn.heads.length === 2) {
      socket.resetAndDestroy(); // closed just as the second request came
      return;
    }
    respond(socket, "200 OK", [], `answer ${n}`);
  });
  const fetch = nodeUpstreamFetch(allowAll);
  t.equal(await (await fetch(`${srv.origin}/a`)).text(), "answer 1");
  t.equal(await (await fetch(`${srv.origin}/b`)).text(), "answer 3");
  t.equal(srv.conns.length, 2);
});

t.test("a refused connection is TypeError('fetch failed') with the socket error as the cause", async (t) => {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  const fetch = nodeUpstreamFetch(createConnectGuard(loopbackUpstream(port), []));
  const err = await fetch(`http://127.0.0.1:${port}/v2/`).catch((e: unknown) => e);
  t.type(err, TypeError);
  t.equal((err as Error).message, "fetch failed");
  t.equal(((err as Error).cause as { code?: string }).code, "ECONNREFUSED");
});

t.test("a large body comes in batches read in place, paced by its reader, byte for byte (length and chunked)", async (t) => {
  const body = Buffer.alloc(3 * 1024 * 1024 + 12345);
  for (let i = 0; i < body.length; i++) body[i] = (i * 7 + (i >> 13)) & 0xff;
  const srv = await rawServer(t, (socket, head) => {
    if (head.includes("/chunked")) {
      socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
      for (let at = 0; at < body.length; at += 40_000) {
        const piece = body.subarray(at, at + 40_000);
        socket.write(`${piece.length.toString(16)}\r\n`);
        socket.write(piece);
        socket.write("\r\n");
      }
      socket.write("0\r\n\r\n");
    } else {
      socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`);
      socket.write(body);
    }
  });
  const fetch = nodeUpstreamFetch(allowAll);
  for (const path of ["/length", "/chunked", "/length"]) {
    const res = await fetch(`${srv.origin}${path}`);
    const pushed = takePushed(res.body)!;
    const chunks: Uint8Array[] = [];
    await pushed.pipe(async (chunk) => {
      chunks.push(Uint8Array.from(chunk)); // a copy: what it held when handed on
      await new Promise((resolve) => setTimeout(resolve, 2)); // a reader that paces
    });
    t.ok(Buffer.concat(chunks).equals(body), `${path}: every byte, in order`);
    t.ok(chunks.every((c) => c.byteLength <= 1024 * 1024), `${path}: no chunk beyond a batch`);
  }
  t.equal(srv.conns.length, 1, "all three over one kept-alive connection");
});

t.test("a handed-on chunk its reader holds is never written again while the rest of the body arrives", async (t) => {
  const { holdBatch } = await import("../../src/util/batch-pool.ts");
  const body = Buffer.alloc(2 * 1024 * 1024, 0x61);
  body.fill(0x62, 1024 * 1024);
  const srv = await rawServer(t, (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`);
    socket.write(body);
  });
  const res = await nodeUpstreamFetch(allowAll)(`${srv.origin}/blob`);
  const held: Array<{ view: Uint8Array; copy: Buffer; hold: ReturnType<typeof holdBatch> }> = [];
  // Kept past the call: held, as every keeper of a batch must (util/batch-pool.ts).
  await takePushed(res.body)!.pipe((chunk) => void held.push({ view: chunk, copy: Buffer.from(chunk), hold: holdBatch(chunk) }));
  t.ok(held.every(({ hold }) => hold !== null), "a body this large comes in pooled batches");
  t.ok(held.every(({ view, copy }) => copy.equals(view)), "each chunk still holds what it held when handed on");
  t.ok(Buffer.concat(held.map((h) => h.copy)).equals(body));
  for (const h of held) h.hold!.release();
});

t.test("a body without a length ends with the connection, whole, also for a reader that paces", async (t) => {
  const body = Buffer.alloc(300_000);
  for (let i = 0; i < body.length; i++) body[i] = i % 251;
  const srv = await rawServer(t, (socket) => {
    socket.write("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
    socket.write(body.subarray(0, 100_000));
    setTimeout(() => socket.end(body.subarray(100_000)), 30);
  });
  const fetch = nodeUpstreamFetch(allowAll);
  for (const pacing of [false, true]) {
    const res = await fetch(`${srv.origin}/blob`);
    const got: Buffer[] = [];
    await takePushed(res.body)!.pipe((chunk) => {
      got.push(Buffer.from(chunk));
      return pacing ? new Promise((resolve) => setTimeout(resolve, 40)) : undefined;
    });
    t.ok(Buffer.concat(got).equals(body), pacing ? "paced reader" : "reader that keeps up");
  }
  t.equal(srv.conns.length, 2, "such a connection is never reused");
});

t.test("a header value a server could split on is refused before anything is sent", async (t) => {
  const srv = await rawServer(t, (socket) => respond(socket, "200 OK", []));
  const fetch = nodeUpstreamFetch(allowAll);
  for (const value of ["a\r\nx-injected: 1", "a\nb", "nul\0", "snowman \u2603"]) {
    await t.rejects(fetch(`${srv.origin}/v2/`, { headers: { "x-token": value } }), TypeError, JSON.stringify(value));
  }
  t.equal(srv.conns.reduce((n, c) => n + c.heads.length, 0), 0, "no request reached the server");
});

t.test("over TLS: the body read in place, the certificate checked against the URL's name, and a new connection resumes the session", async (t) => {
  const { mkdtemp, rm } = await import("node:fs/promises");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { createServer: createTlsServer } = await import("node:tls");
  const { makeTestCa } = await import("../e2e/tls-ca.ts");
  const { Http1Client } = await import("../../src/runtime/node-http1.ts");
  const dir = await mkdtemp(join(tmpdir(), "stowage-tls-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ca = await makeTestCa(dir);
  const issued = await ca.issue("registry", ["registry.test"]);
  const body = Buffer.alloc(2 * 1024 * 1024 + 7);
  for (let i = 0; i < body.length; i++) body[i] = (i * 13) & 0xff;
  const resumed: boolean[] = [];
  const server = createTlsServer({ key: issued.key, cert: issued.cert }, (socket) => {
    resumed.push(socket.isSessionReused());
    socket.on("error", () => {});
    socket.once("data", () => {
      // Each answer closes its connection, so every request needs a new one.
      socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`);
      socket.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;
  const client = new Http1Client(async () => ({ address: "127.0.0.1", family: 4 }), [ca.caPem]);
  for (let i = 0; i < 3; i++) {
    const res = await client.request(new URL(`https://registry.test:${port}/v2/blob`), "GET", {});
    const got: Buffer[] = [];
    await res.body!.pipe((chunk) => void got.push(Buffer.from(chunk)));
    t.ok(Buffer.concat(got).equals(body), `request ${i + 1}: every byte`);
  }
  t.same(resumed, [false, true, true], "the second and third connections resumed the first one's session");
  const wrongName = await client.request(new URL(`https://elsewhere.test:${port}/v2/blob`), "GET", {}).catch((e: Error) => e);
  t.match(String((wrongName as Error).message), /elsewhere\.test|altnames|certificate/i, "a certificate for another name is refused");
});
