/**
 * Headers, Request and Response for Stowage on Node, in place of the ones Node 20 gets from its
 * bundled undici. The first touch of any of those globals loads and compiles all of undici (its
 * fetch, WebSocket, FormData...): about 9 MiB of resident memory for the life of the process and
 * ~25 ms of every start, though the server only needs the three classes (it serves with
 * @hono/node-server and fetches upstream with node:http). Deno has its own, and keeps them.
 *
 * They follow the Fetch standard's behaviour wherever Stowage, @hono/node-server or a library may
 * look: header names and values are checked and normalised as in undici (a CR or LF in a value
 * throws), `Set-Cookie` stays separate, bodies are web streams whose identity is kept, and the
 * body readers (text, json, arrayBuffer, bytes, blob) and clone work. What a server never needs
 * is handed to undici on first use: `formData()` and `Response.error()` build undici's own
 * object then (the original globals stay reachable), so nothing is missing, only loaded late.
 *
 * (Blob, ReadableStream and AbortController are Node's own, not undici's: they stay as they are.)
 */

import { concatBytes } from "../util/buffers.ts";
import { isFieldValue, isToken } from "../util/http1-response.ts";

/** What a header value may not contain once trimmed (undici refuses the same). */
const BAD_VALUE = /[\0\r\n]/;
const HTTP_WHITESPACE = /^[\t\n\r ]+|[\t\n\r ]+$/g;
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const encoder = new TextEncoder();

type Bytes = Uint8Array<ArrayBuffer>;
type HeadersInput = HeadersInit | Headers | Iterable<Iterable<string>> | Record<string, string>;

function headerName(name: string): string {
  const s = String(name);
  if (!isToken(s)) throw new TypeError(`Headers: invalid header name ${JSON.stringify(s)}`);
  return s.toLowerCase();
}

function headerValue(name: string, value: string): string {
  const v = String(value).replace(HTTP_WHITESPACE, "");
  if (BAD_VALUE.test(v)) throw new TypeError(`Headers: invalid value for header ${name}`);
  return v;
}

export class LeanHeaders implements Headers {
  /** Lower-case name to its values joined with ", " (Set-Cookie apart, in `cookies`). */
  #fields = new Map<string, string>();
  #cookies: string[] = [];

  constructor(init?: HeadersInput) {
    if (init === undefined || init === null) return;
    if (typeof init !== "object") throw new TypeError("Headers: the init must be an object, a Headers or a list of pairs");
    // An object may have this prototype without being one (@hono/node-server's request headers
    // do): only a real one has the fields to copy, any other is read through its iterator.
    if (#fields in init) {
      init.#fields.forEach((v, k) => this.#fields.set(k, v));
      this.#cookies = [...init.#cookies];
    } else if (Symbol.iterator in init) {
      for (const pair of init as Iterable<Iterable<string>>) {
        const [name, value, ...rest] = [...pair];
        if (value === undefined || rest.length > 0) throw new TypeError("Headers: each pair must have exactly a name and a value");
        this.append(name!, value);
      }
    } else {
      for (const name of Object.keys(init)) this.append(name, (init as Record<string, string>)[name]!);
    }
  }

  append(name: string, value: string): void {
    const key = headerName(name);
    const v = headerValue(key, value);
    if (key === "set-cookie") this.#cookies.push(v);
    else {
      const had = this.#fields.get(key);
      this.#fields.set(key, had === undefined ? v : `${had}, ${v}`);
    }
  }

  set(name: string, value: string): void {
    const key = headerName(name);
    const v = headerValue(key, value);
    if (key === "set-cookie") this.#cookies = [v];
    else this.#fields.set(key, v);
  }

  get(name: string): string | null {
    const key = headerName(name);
    if (key === "set-cookie") return this.#cookies.length ? this.#cookies.join(", ") : null;
    return this.#fields.get(key) ?? null;
  }

  has(name: string): boolean {
    const key = headerName(name);
    return key === "set-cookie" ? this.#cookies.length > 0 : this.#fields.has(key);
  }

  delete(name: string): void {
    const key = headerName(name);
    if (key === "set-cookie") this.#cookies = [];
    else this.#fields.delete(key);
  }

  getSetCookie(): string[] {
    return [...this.#cookies];
  }

  forEach(callback: (value: string, name: string, parent: Headers) => void, thisArg?: unknown): void {
    for (const [name, value] of this) callback.call(thisArg, value, name, this);
  }

  /** Sorted by name, Set-Cookie once per cookie, as the standard iterates. */
  *entries(): HeadersIterator<[string, string]> {
    const names = [...this.#fields.keys()];
    if (this.#cookies.length) names.push("set-cookie");
    for (const name of names.sort()) {
      if (name === "set-cookie") for (const c of this.#cookies) yield [name, c];
      else yield [name, this.#fields.get(name)!];
    }
  }

  *keys(): HeadersIterator<string> {
    for (const [name] of this.entries()) yield name;
  }

  *values(): HeadersIterator<string> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): HeadersIterator<[string, string]> {
    return this.entries();
  }

  get [Symbol.toStringTag](): string {
    return "Headers";
  }
}

/** A body as the standard extracts it: bytes known at once, or a stream; and the type it implies. */
type Extracted = { bytes: Bytes | null; stream: ReadableStream<Bytes> | null; type: string | null };

function extractBody(body: BodyInit | null | undefined): Extracted | null {
  if (body === null || body === undefined) return null;
  if (typeof body === "string") return { bytes: encoder.encode(body), stream: null, type: "text/plain;charset=UTF-8" };
  if (body instanceof ReadableStream) return { bytes: null, stream: body as ReadableStream<Bytes>, type: null };
  if (body instanceof URLSearchParams) return { bytes: encoder.encode(body.toString()), stream: null, type: "application/x-www-form-urlencoded;charset=UTF-8" };
  if (body instanceof ArrayBuffer) return { bytes: new Uint8Array(body.slice(0)), stream: null, type: null };
  if (ArrayBuffer.isView(body)) return { bytes: new Uint8Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)), stream: null, type: null };
  if (body instanceof Blob) return { bytes: null, stream: (body as Blob).stream() as ReadableStream<Bytes>, type: body.type || null };
  // Anything else is taken as text, as WebIDL converts it.
  return { bytes: encoder.encode(String(body)), stream: null, type: "text/plain;charset=UTF-8" };
}

function streamOf(bytes: Bytes): ReadableStream<Bytes> {
  return new ReadableStream<Bytes>({
    start(controller) {
      if (bytes.byteLength) controller.enqueue(bytes);
      controller.close();
    },
  }, { highWaterMark: 0 });
}

/** Reads a lean body's bytes for the server (see takeWholeBody); set by LeanBody. */
let takeBytes: (body: LeanBody) => Bytes | null;

/** The body half of Request and Response (the standard's Body mixin). */
class LeanBody {
  /** Set by Request and Response (the body's type is read from it). */
  declare readonly headers: Headers;
  #bytes: Bytes | null = null;
  #stream: ReadableStream<Bytes> | null = null;
  #used = false;

  static {
    takeBytes = (body) => {
      if (body.#used || body.#stream || !body.#bytes) return null;
      body.#used = true;
      return body.#bytes;
    };
  }

  protected setBody(extracted: Extracted | null): void {
    this.#bytes = extracted?.bytes ?? null;
    this.#stream = extracted?.stream ?? null;
  }

  get body(): ReadableStream<Bytes> | null {
    if (!this.#stream && this.#bytes) this.#stream = streamOf(this.#bytes);
    return this.#stream;
  }

  get bodyUsed(): boolean {
    return this.#used;
  }

  async bytes(): Promise<Bytes> {
    if (this.#used) throw new TypeError("Body is unusable: it has already been read");
    this.#used = true;
    if (!this.#stream) {
      const b = this.#bytes;
      return b ? new Uint8Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)) : new Uint8Array(0);
    }
    if (this.#stream.locked) throw new TypeError("Body is unusable: its stream is locked");
    const reader = this.#stream.getReader();
    const parts: Bytes[] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!(value instanceof Uint8Array)) throw new TypeError("Body stream gave a chunk that is not a Uint8Array");
      parts.push(value);
    }
    return concatBytes(parts);
  }

  async arrayBuffer(): Promise<ArrayBuffer> {
    return (await this.bytes()).buffer;
  }

  async text(): Promise<string> {
    return new TextDecoder().decode(await this.bytes());
  }

  async json(): Promise<unknown> {
    return JSON.parse(await this.text());
  }

  async blob(): Promise<Blob> {
    const type = this.headers.get("content-type") ?? "";
    return new Blob([await this.bytes()], { type });
  }

  /** Parsed by undici (loaded now): a server has no use for it, so it is not written twice. */
  async formData(): Promise<FormData> {
    const Undici = undiciResponse();
    return new Undici(await this.bytes(), { headers: this.headers }).formData();
  }

  /** Splits the body for a clone: this one keeps a branch, the clone gets the other. */
  protected teeBody(): Extracted | null {
    if (this.#used) throw new TypeError("Body is unusable: it has already been read");
    if (!this.#stream) return this.#bytes ? { bytes: this.#bytes, stream: null, type: null } : null;
    const [mine, theirs] = this.#stream.tee();
    this.#stream = mine;
    return { bytes: null, stream: theirs, type: null };
  }
}

/**
 * Node 20's own Response (undici's), for what these leave to it; loaded only when asked for. Until
 * `installLeanFetchClasses` ran, the global is still Node's own.
 */
let undiciResponse = (): typeof Response => globalThis.Response;

export class LeanResponse extends LeanBody implements Response {
  readonly status: number;
  readonly statusText: string;
  readonly headers: Headers;
  readonly type: ResponseType = "default";
  readonly url: string = "";
  readonly redirected = false;

  constructor(body?: BodyInit | null, init: ResponseInit = {}) {
    super();
    const status = init.status ?? 200;
    if (!Number.isInteger(status) || status < 200 || status > 599) throw new RangeError(`Response: status ${status} is outside 200-599`);
    const statusText = init.statusText ?? "";
    if (!isFieldValue(statusText)) throw new TypeError("Response: invalid statusText");
    this.status = status;
    this.statusText = statusText;
    this.headers = new LeanHeaders(init.headers as HeadersInput);
    const extracted = extractBody(body);
    if (extracted && NULL_BODY_STATUS.has(status)) throw new TypeError(`Response: a ${status} response cannot have a body`);
    if (extracted?.type && !this.headers.has("content-type")) this.headers.set("content-type", extracted.type);
    this.setBody(extracted);
  }

  get ok(): boolean {
    return this.status >= 200 && this.status < 300;
  }

  clone(): Response {
    const copy = new LeanResponse(null, { status: this.status, statusText: this.statusText, headers: this.headers });
    copy.setBody(this.teeBody());
    return copy;
  }

  static json(data: unknown, init: ResponseInit = {}): Response {
    const body = JSON.stringify(data);
    if (body === undefined) throw new TypeError("Response.json: the data is not JSON serializable");
    const headers = new LeanHeaders(init.headers as HeadersInput);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new LeanResponse(body, { ...init, headers });
  }

  static redirect(url: string | URL, status = 302): Response {
    if (!REDIRECT_STATUS.has(status)) throw new RangeError(`Response.redirect: ${status} is not a redirect status`);
    return new LeanResponse(null, { status, headers: { location: new URL(String(url)).href } });
  }

  static error(): Response {
    return undiciResponse().error();
  }

  get [Symbol.toStringTag](): string {
    return "Response";
  }
}

const NORMALISED_METHODS = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]);
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

type RequestLike = { url: string; method: string; headers: Headers; body: ReadableStream<Bytes> | null; signal?: AbortSignal };

export class LeanRequest extends LeanBody implements Request {
  readonly url: string;
  readonly method: string;
  readonly headers: Headers;
  readonly signal: AbortSignal;
  readonly cache: RequestCache = "default";
  readonly credentials: RequestCredentials = "same-origin";
  readonly destination: RequestDestination = "";
  readonly integrity: string = "";
  readonly keepalive: boolean = false;
  readonly mode: RequestMode = "cors";
  readonly redirect: RequestRedirect;
  readonly referrer: string = "about:client";
  readonly referrerPolicy: ReferrerPolicy = "";
  readonly duplex = "half";

  constructor(input: RequestInfo | URL, init: RequestInit = {}) {
    super();
    const from = typeof input === "object" && !(input instanceof URL) ? input as unknown as RequestLike : null;
    let url: URL;
    try {
      url = new URL(from ? from.url : String(input));
    } catch {
      throw new TypeError(`Request: ${JSON.stringify(from ? from.url : String(input))} is not an absolute URL`);
    }
    if (url.username || url.password) throw new TypeError("Request: the URL may not carry credentials");
    this.url = url.href;
    let method = init.method ?? from?.method ?? "GET";
    if (!isToken(method)) throw new TypeError(`Request: invalid method ${JSON.stringify(method)}`);
    const upper = method.toUpperCase();
    if (FORBIDDEN_METHODS.has(upper)) throw new TypeError(`Request: method ${upper} is forbidden`);
    if (NORMALISED_METHODS.has(upper)) method = upper;
    this.method = method;
    this.headers = new LeanHeaders((init.headers ?? from?.headers) as HeadersInput | undefined);
    this.signal = init.signal ?? from?.signal ?? new AbortController().signal;
    this.redirect = init.redirect ?? "follow";
    const extracted = init.body !== undefined ? extractBody(init.body) : from?.body ? { bytes: null, stream: from.body, type: null } : null;
    if (extracted && (method === "GET" || method === "HEAD")) throw new TypeError(`Request: a ${method} request cannot have a body`);
    if (extracted?.type && !this.headers.has("content-type")) this.headers.set("content-type", extracted.type);
    this.setBody(extracted);
  }

  clone(): Request {
    const copy = new LeanRequest(this.url, { method: this.method, headers: this.headers, signal: this.signal, redirect: this.redirect });
    copy.setBody(this.teeBody());
    return copy;
  }

  get [Symbol.toStringTag](): string {
    return "Request";
  }
}

/**
 * The bytes of a response made here with bytes for its body (a manifest, a JSON answer), taken
 * as read, so the server writes them with the head in one call; null for a stream, no body, a
 * body already read, or a response of another class. Asking for `.body` would make a stream of them.
 */
export function takeWholeBody(response: Response): Uint8Array | null {
  return response instanceof LeanBody ? takeBytes(response) : null;
}

/**
 * Makes these the process's Headers, Request and Response. Call it before anything touches those
 * globals (a module that reads them as it loads, such as @hono/node-server, keeps what it saw).
 * Node's own stay reachable for `formData()` and `Response.error()`.
 */
export function installLeanFetchClasses(): void {
  // Node defines them as getters that load undici when first read: look at the descriptor, never
  // the value, and keep the getter.
  const current = Object.getOwnPropertyDescriptor(globalThis, "Response");
  if (current?.value === LeanResponse) return;
  const responseGetter = current?.get;
  undiciResponse = () => {
    if (!responseGetter) throw new TypeError("this Node has no built-in Response to hand formData() to");
    return responseGetter.call(globalThis);
  };
  for (const [name, value] of [["Headers", LeanHeaders], ["Request", LeanRequest], ["Response", LeanResponse]] as const) {
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  }
}
