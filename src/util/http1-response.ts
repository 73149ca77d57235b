/**
 * HTTP/1.1 responses as an upstream sends them, parsed strictly (RFC 9112): the head (status
 * line and header fields) and the framing of the body, including the chunked coding. Pure: no
 * I/O. Anything ambiguous about where a body ends is an error, never a guess, so a hostile
 * upstream cannot make a response longer or shorter than it says.
 */

/** How the body of a response ends. */
export type Framing =
  | { kind: "none" } // HEAD, 204, 304
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | { kind: "close" }; // no length given: the body ends with the connection

export type ResponseHead = {
  status: number;
  /** Field lines in order, names in lower case, values trimmed. */
  headers: Array<[string, string]>;
  framing: Framing;
  /** The server will close the connection after this response (or HTTP/1.0 without keep-alive). */
  closes: boolean;
};

/** A response the client must not use: the connection is dropped and the request fails. */
export class ResponseParseError extends Error {
  override name = "ResponseParseError";
}

const CR = 0x0d;
const LF = 0x0a;

/** The index just past the blank line ending the head within `bytes[0, end)`, or -1 if it has not come yet. `from` skips what was searched before. */
export function headEnd(bytes: Uint8Array, end: number, from = 0): number {
  for (let i = Math.max(3, from); i < end; i++) {
    if (bytes[i] === LF && bytes[i - 1] === CR && bytes[i - 2] === LF && bytes[i - 3] === CR) return i + 1;
  }
  return -1;
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Field values: visible characters, obs-text, spaces and tabs; no other control character.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/** A token (RFC 9110): a method or a field name. */
export const isToken = (s: string): boolean => TOKEN.test(s);

/** Characters a field value (or a reason phrase) may hold: no CR, LF, NUL or other control but tab. */
export const isFieldValue = (s: string): boolean => FIELD_VALUE.test(s);

/**
 * Parses a response head: `head` is its bytes as latin1, without the blank line that ends it.
 * `method` is the request's (a HEAD response has no body whatever its fields say).
 */
export function parseResponseHead(head: string, method: string): ResponseHead {
  const lines = head.split("\r\n");
  const statusLine = lines[0]!;
  const m = STATUS_LINE.exec(statusLine);
  if (!m) throw new ResponseParseError(`malformed status line ${JSON.stringify(statusLine.slice(0, 80))}`);
  const minor = Number(m[1]);
  const status = Number(m[2]);
  if (status < 200 || status > 599) throw new ResponseParseError(`status ${status} is not a final response status (200-599)`);
  const headers: Array<[string, string]> = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.includes("\n") || line.includes("\r")) throw new ResponseParseError("a bare CR or LF in the response head");
    if (line.startsWith(" ") || line.startsWith("\t")) throw new ResponseParseError("a folded header line (obsolete line folding is refused)");
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!isToken(name)) throw new ResponseParseError(`malformed header line ${JSON.stringify(line.slice(0, 80))}`);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!isFieldValue(value)) throw new ResponseParseError(`header ${name} has a control character in its value`);
    headers.push([name.toLowerCase(), value]);
  }
  const values = (name: string) => headers.filter(([n]) => n === name).map(([, v]) => v);
  const connection = values("connection").flatMap((v) => v.toLowerCase().split(",").map((s) => s.trim()));
  const closes = connection.includes("close") || (minor === 0 && !connection.includes("keep-alive"));
  return { status, headers, framing: framingOf(status, method, values("transfer-encoding"), values("content-length")), closes };
}

function framingOf(status: number, method: string, te: string[], cl: string[]): Framing {
  if (method === "HEAD" || status === 204 || status === 304) return { kind: "none" };
  if (te.length > 0) {
    // Both framings at once is how responses are smuggled: refused, as Node's strict parser does.
    if (cl.length > 0) throw new ResponseParseError("both Transfer-Encoding and Content-Length");
    const codings = te.flatMap((v) => v.split(",")).map((s) => s.trim().toLowerCase());
    if (codings.length !== 1 || codings[0] !== "chunked") throw new ResponseParseError(`unsupported Transfer-Encoding ${JSON.stringify(te.join(", "))}`);
    return { kind: "chunked" };
  }
  if (cl.length > 0) {
    const all = cl.flatMap((v) => v.split(",")).map((s) => s.trim());
    if (!all.every((v) => /^[0-9]{1,15}$/.test(v)) || new Set(all).size !== 1) throw new ResponseParseError(`invalid Content-Length ${JSON.stringify(cl.join(", "))}`);
    return { kind: "length", length: Number(all[0]) };
  }
  return { kind: "close" };
}

/** Longest chunk-size line accepted (size, extensions): real servers send a few bytes. */
const MAX_CHUNK_LINE = 4096;
/** Most trailer bytes accepted after the last chunk. */
const MAX_TRAILER_BYTES = 16 * 1024;

/**
 * Decodes the chunked transfer coding as bytes arrive, in place: each `feed` reports the data
 * bytes among the ones given as ranges of the same buffer, so the caller can keep them where
 * they are (or move them together) without a copy through another buffer.
 */
export class ChunkedDecoder {
  private state: "size" | "data" | "data-cr" | "data-lf" | "trailer" = "size";
  private line = "";
  private left = 0;
  private trailerBytes = 0;
  private ended = false;

  /** The last chunk and the trailer section have been read: the body is complete. */
  get done(): boolean {
    return this.ended;
  }

  /**
   * Takes `bytes[start, end)`; calls `data(from, to)` for each run of body bytes in it, in order.
   * Returns how many bytes it took: fewer than given only once the body is done (the rest
   * belongs to no response).
   */
  feed(bytes: Uint8Array, start: number, end: number, data: (from: number, to: number) => void): number {
    let i = start;
    while (i < end && !this.ended) {
      switch (this.state) {
        case "data": {
          const to = Math.min(end, i + this.left);
          data(i, to);
          this.left -= to - i;
          i = to;
          if (this.left === 0) this.state = "data-cr";
          break;
        }
        case "data-cr":
          if (bytes[i++] !== CR) throw new ResponseParseError("chunk data not followed by CRLF");
          this.state = "data-lf";
          break;
        case "data-lf":
          if (bytes[i++] !== LF) throw new ResponseParseError("chunk data not followed by CRLF");
          this.state = "size";
          break;
        case "size":
        case "trailer": {
          const b = bytes[i++]!;
          if (this.state === "trailer" && ++this.trailerBytes > MAX_TRAILER_BYTES) throw new ResponseParseError("chunked trailer section too large");
          if (b !== LF) {
            if (this.line.length >= MAX_CHUNK_LINE) throw new ResponseParseError("chunk-size line too long");
            this.line += String.fromCharCode(b);
            break;
          }
          if (!this.line.endsWith("\r")) throw new ResponseParseError("a bare LF in the chunked coding");
          const line = this.line.slice(0, -1);
          this.line = "";
          if (this.state === "trailer") {
            const colon = line.indexOf(":");
            if (line === "") this.ended = true;
            else if (colon < 1 || !isToken(line.slice(0, colon)) || !isFieldValue(line.slice(colon + 1))) throw new ResponseParseError("malformed trailer field");
            break;
          }
          this.left = chunkSize(line);
          this.state = this.left === 0 ? "trailer" : "data";
          break;
        }
      }
    }
    return i - start;
  }
}

/** The size in a chunk-size line (hex, then optional `;extensions`). */
function chunkSize(line: string): number {
  const semi = line.indexOf(";");
  const hex = (semi === -1 ? line : line.slice(0, semi)).replace(/[ \t]+$/, "");
  if (!/^[0-9A-Fa-f]{1,12}$/.test(hex)) throw new ResponseParseError(`malformed chunk size ${JSON.stringify(line.slice(0, 40))}`);
  if (semi !== -1 && /[\r\n\0]/.test(line.slice(semi))) throw new ResponseParseError("malformed chunk extension");
  return parseInt(hex, 16);
}
