// The OCI side of tests: digests, error bodies as fake upstreams send them, and
// what a client checks of Stowage's answers (OCI JSON errors, whole bodies).
import type { Test } from "tap";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import type { ServerResponse } from "node:http";
import { connect } from "node:net";
import type { Digest } from "../../src/registry/reference.ts";

export const sha256 = (bytes: Uint8Array | string) => `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Digest;

/** The digest of a file, read in 4 MiB pieces (test layers reach 1 GiB). */
export async function fileSha256(path: string): Promise<Digest> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk as Buffer);
  return `sha256:${hash.digest("hex")}` as Digest;
}

/** Answers with an OCI error body ({"errors":[{code,message}]}), as registries do. */
export function sendOciError(res: ServerResponse, status: number, code: string, headers: Record<string, string> = {}, message = code.toLowerCase()): void {
  const body = JSON.stringify({ errors: [{ code, message }] });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** An answer as a client holds it once the body is read. */
export type Reply = { status: number; headers: Headers; body: Buffer };

export type OciErrorEntry = { code: string; message: string; detail?: Record<string, unknown> };

/**
 * Checks an answer is the OCI JSON error with `status` and `code` (never HTML, a
 * message present) and returns the body's text and its first error. A Response
 * is read here; `{ res, body }` and Reply are answers already read.
 */
export async function expectOciError(
  t: Test,
  got: Response | Reply | { res: Response; body: Buffer },
  status: number,
  code: string,
  what = "",
): Promise<{ text: string; error: OciErrorEntry | undefined }> {
  const said = what ? `${what}: ` : "";
  const [answer, text] = got instanceof Response
    ? [got, await got.text()]
    : "res" in got
    ? [got.res, got.body.toString("utf8")]
    : [got, got.body.toString("utf8")];
  t.equal(answer.status, status, `${said}status ${status}`);
  t.match(answer.headers.get("content-type") ?? "", /^application\/json/, `${said}a JSON error, never HTML`);
  let parsed: { errors?: OciErrorEntry[] } | null = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // left null: the assertion below shows the body
  }
  t.match(parsed, { errors: [{ code, message: String }] }, `${said}error code ${code}: ${text.slice(0, 300)}`);
  return { text, error: parsed?.errors?.[0] };
}

export type Outcome = Reply & {
  /** The request or the body read rejected (a broken response, as clients see it). */
  error: unknown;
  /** Nothing happened for 20 s: the response neither ended nor failed. */
  hung: boolean;
  ms: number;
};

/** Does what a client does: sends the request and reads the whole body, noting how it ended. */
export async function attempt(url: string, init: RequestInit = {}): Promise<Outcome> {
  const started = Date.now();
  const hang = AbortSignal.timeout(20_000);
  const out: Outcome = { status: 0, headers: new Headers(), body: Buffer.alloc(0), error: null, hung: false, ms: 0 };
  try {
    const res = await fetch(url, { ...init, signal: hang });
    out.status = res.status;
    out.headers = res.headers;
    const parts: Buffer[] = [];
    try {
      for await (const part of res.body ?? []) parts.push(Buffer.from(part));
    } finally {
      out.body = Buffer.concat(parts);
    }
  } catch (err) {
    out.error = err;
    out.hung = hang.aborted;
  }
  out.ms = Date.now() - started;
  return out;
}

/**
 * A client that sends a GET on a raw socket, takes the first bytes, then stops reading for
 * `pauseMs`; returns how many bytes still came once it read again, until the server closed
 * the connection or `closeWithinMs` passed (so a server that never closes fails the caller's
 * check instead of hanging the test).
 */
export async function stallingReader(url: string, path: string, pauseMs: number, closeWithinMs: number): Promise<number> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(`GET ${path} HTTP/1.1\r\nHost: stowage\r\n\r\n`);
  await new Promise<void>((resolve) => socket.once("data", () => resolve()));
  socket.pause();
  await new Promise((r) => setTimeout(r, pauseMs));
  let received = 0;
  const closed = new Promise<void>((resolve) => {
    socket.on("data", (chunk: Buffer) => (received += chunk.length));
    socket.once("close", () => resolve());
    socket.once("error", () => resolve());
  });
  socket.resume();
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, closeWithinMs)))]);
  clearTimeout(timer);
  socket.destroy();
  return received;
}
