// The strict HTTP/1.1 response parsing of src/util/http1-response.ts, on tables of heads and
// chunked bodies as real servers (and hostile ones) send them.
import t from "tap";
import { ChunkedDecoder, headEnd, parseResponseHead, ResponseParseError } from "../../src/util/http1-response.ts";

const bytes = (s: string) => Buffer.from(s, "latin1");

t.test("headEnd finds the blank line, also when the search resumes mid-way", async (t) => {
  const b = bytes("HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody");
  t.equal(headEnd(b, b.length), 25);
  t.equal(headEnd(b, 24), -1, "not all of it yet");
  t.equal(headEnd(b, b.length, 23), 25, "resumed three bytes before the end of the last search");
});

t.test("heads real registries and CDNs send", async (t) => {
  const cases: Array<[string, string, string, number, unknown, boolean]> = [
    ["Docker Hub blob redirect", "GET", "HTTP/1.1 307 Temporary Redirect\r\nContent-Type: text/html; charset=utf-8\r\nDocker-Distribution-Api-Version: registry/2.0\r\nLocation: https://production.cloudflare.docker.com/registry-v2/x\r\nContent-Length: 0", 307, { kind: "length", length: 0 }, false],
    ["CDN blob", "GET", "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 31425683\r\nConnection: keep-alive\r\nAccept-Ranges: bytes", 200, { kind: "length", length: 31425683 }, false],
    ["chunked manifest", "GET", "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.index.v1+json\r\ntransfer-encoding: Chunked", 200, { kind: "chunked" }, false],
    ["no length: ends with the connection", "GET", "HTTP/1.1 200 OK\r\nConnection: close", 200, { kind: "close" }, true],
    ["HEAD ignores the length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 529", 200, { kind: "none" }, false],
    ["304 has no body", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"", 304, { kind: "none" }, false],
    ["HTTP/1.0 closes unless kept alive", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 2", 200, { kind: "length", length: 2 }, true],
    ["HTTP/1.0 kept alive", "GET", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2", 200, { kind: "length", length: 2 }, false],
    ["no reason phrase", "GET", "HTTP/1.1 404\r\nContent-Length: 0", 404, { kind: "length", length: 0 }, false],
    ["identical duplicate lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7", 200, { kind: "length", length: 7 }, false],
  ];
  for (const [name, method, head, status, framing, closes] of cases) {
    const r = parseResponseHead(head, method);
    t.equal(r.status, status, name);
    t.same(r.framing, framing, name);
    t.equal(r.closes, closes, name);
  }
  const h = parseResponseHead("HTTP/1.1 200 OK\r\nX-Multi:  a \r\nx-multi: b\r\nWWW-Authenticate: Bearer realm=\"https://auth.docker.io/token\"", "GET");
  t.same(h.headers, [["x-multi", "a"], ["x-multi", "b"], ["www-authenticate", 'Bearer realm="https://auth.docker.io/token"']], "names lower-cased, values trimmed, order kept");
});

t.test("heads that are refused: ambiguous framing, malformed lines, non-final statuses", async (t) => {
  const bad: Array<[string, string]> = [
    ["smuggling: both framings", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"],
    ["two different lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4"],
    ["a length list that disagrees", "HTTP/1.1 200 OK\r\nContent-Length: 3, 4"],
    ["a signed length", "HTTP/1.1 200 OK\r\nContent-Length: +3"],
    ["a length past 2^53", "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999"],
    ["a coding other than chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked"],
    ["chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"],
    ["obsolete line folding", "HTTP/1.1 200 OK\r\nX-A: one\r\n two"],
    ["space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 3"],
    ["no colon", "HTTP/1.1 200 OK\r\nnonsense"],
    ["a control character in a value", "HTTP/1.1 200 OK\r\nX-A: a\u0001b"],
    ["a bare LF", "HTTP/1.1 200 OK\nContent-Length: 0"],
    ["a status outside 200-599", "HTTP/1.1 700 Odd"],
    ["an interim status", "HTTP/1.1 100 Continue"],
    ["HTTP/2 in an HTTP/1 head", "HTTP/2 200 OK"],
    ["not HTTP", "SSH-2.0-OpenSSH_9.6"],
  ];
  for (const [name, head] of bad) t.throws(() => parseResponseHead(head, "GET"), ResponseParseError, name);
});

/** Feeds `wire` to a decoder in pieces of `step` bytes; returns the data and the bytes left over. */
function decode(wire: string, step: number): { data: string; taken: number; done: boolean } {
  const d = new ChunkedDecoder();
  const buf = bytes(wire);
  let data = "";
  let taken = 0;
  for (let at = 0; at < buf.length && !d.done; at += step) {
    const end = Math.min(buf.length, at + step);
    taken += d.feed(buf, at, end, (from, to) => (data += buf.subarray(from, to).toString("latin1")));
  }
  return { data, taken, done: d.done };
}

t.test("the chunked coding, whole or a byte at a time", async (t) => {
  const wire = "5\r\nhello\r\n7;ext=1\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
  for (const step of [1, 2, 3, 7, wire.length]) {
    const r = decode(wire, step);
    t.equal(r.data, "hello, world0123456789", `step ${step}`);
    t.ok(r.done, `step ${step}: complete`);
    t.equal(r.taken, wire.length, `step ${step}: every byte taken`);
  }
  const extra = decode("1\r\na\r\n0\r\n\r\nHTTP/1.1 200", 100);
  t.equal(extra.taken, 11, "bytes after the body are not taken");
  t.notOk(decode("5\r\nhel", 100).done, "cut short: not complete");
});

t.test("broken chunked codings are refused", async (t) => {
  const bad: Array<[string, string]> = [
    ["a size that is not hex", "zz\r\nab\r\n"],
    ["an empty size", "\r\n"],
    ["a negative size", "-1\r\n"],
    ["a size beyond 12 hex digits", "1000000000000\r\n"],
    ["data longer than its size", "2\r\nabc\r\n"],
    ["a bare LF after the size", "2\nab\r\n"],
    ["a malformed trailer", "0\r\nno colon here\r\n\r\n"],
    ["an endless size line", "1;" + "x".repeat(5000)],
  ];
  for (const [name, wire] of bad) t.throws(() => decode(wire, 1), ResponseParseError, name);
});
