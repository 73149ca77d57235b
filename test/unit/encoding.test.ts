// The byte encodings behind digests, Basic credentials, robot secrets and refresh tokens.
import t from "tap";
import { base64, base64url, hex } from "../../src/util/encoding.ts";
import { retryAfterSeconds } from "../../src/util/http-headers.ts";

const utf8 = (s: string) => new TextEncoder().encode(s);

t.test("hex: two lower-case digits a byte", async (t) => {
  t.equal(hex(new Uint8Array([0, 15, 16, 171, 255])), "000f10abff");
  t.equal(hex(new Uint8Array()), "");
});

t.test("base64: RFC 4648 test vectors, with padding", async (t) => {
  const vectors: Array<[string, string]> = [["", ""], ["f", "Zg=="], ["fo", "Zm8="], ["foo", "Zm9v"], ["foob", "Zm9vYg=="], ["fooba", "Zm9vYmE="], ["foobar", "Zm9vYmFy"]];
  for (const [text, encoded] of vectors) t.equal(base64(utf8(text)), encoded, JSON.stringify(text));
  t.equal(base64(utf8("user:pässword")), "dXNlcjpww6Rzc3dvcmQ=", "UTF-8 bytes, as Basic credentials send them");
});

t.test("base64url: URL-safe alphabet, no padding", async (t) => {
  t.equal(base64url(new Uint8Array([0xfb, 0xff])), "-_8", "+ and / become - and _; = is dropped");
  t.equal(base64url(utf8("foobar")), "Zm9vYmFy");
  t.match(base64url(new Uint8Array(32).fill(0xff)), /^[A-Za-z0-9_-]{43}$/, "32 bytes: the 43 characters refresh tokens are checked against");
});

t.test("Retry-After in both of its forms, as upstreams send it", async (t) => {
  const now = Date.parse("2026-12-02T12:00:00Z");
  const table: Array<[string | null, number | undefined, string]> = [
    ["120", 120, "delta-seconds"],
    ["0", 0, "zero"],
    ["1.5", 2, "a fraction is rounded up"],
    ["Wed, 02 Dec 2026 12:01:00 GMT", 60, "an HTTP date a minute ahead"],
    ["Wed, 02 Dec 2026 11:59:00 GMT", 0, "a date in the past means now"],
    ["-5", undefined, "negative"],
    ["soon", undefined, "not a number or a date"],
    ["", undefined, "empty"],
    [null, undefined, "absent"],
  ];
  for (const [value, expected, what] of table) t.equal(retryAfterSeconds(value, now), expected, what);
});
