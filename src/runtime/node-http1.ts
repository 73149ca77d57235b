/**
 * An HTTP/1.1 client for upstream requests on Node that reads response bodies straight into
 * batch buffers: each socket read lands in the free tail of the current 1 MiB batch (net's
 * `onread` with a buffer per read, TLS included), and full batches are handed on as they are.
 * node:http read into a fresh 64 KiB buffer per read, copied every body chunk once more in its
 * parser and again into a batch: about 1.6 s of main-thread CPU per GiB here, against 0.2 s for
 * reads into one reused buffer. Heads and the chunked coding are parsed strictly by
 * util/http1-response.ts; connections go only where the guard says and are kept alive per origin.
 */
import * as net from "node:net";
import type { PeerCertificate } from "node:tls";
import { ChunkedDecoder, headEnd, parseResponseHead, ResponseParseError, type Framing, type ResponseHead } from "../util/http1-response.ts";
import { batchPool, type BatchHold } from "../util/batch-pool.ts";
import { BATCH_BYTES, markBatch, unzeroedBytes } from "../util/buffers.ts";
import { unbracketed } from "../util/ip.ts";
import type { PushedBody } from "../util/streams.ts";
import type { AddressGuard } from "./runtime.ts";

/** The most a response's status line and headers may take (real registries send 1-4 KiB). */
export const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;
/** Where reads land while a head is awaited: room for a whole head and the start of its body. */
const HEAD_SCRATCH_BYTES = 64 * 1024;
/** The first batch of a body of unknown length: most such bodies are small (a chunked manifest). */
const FIRST_UNKNOWN_BATCH_BYTES = 64 * 1024;
/** A partly filled batch older than this is handed on anyway, so a slow upstream still reaches clients promptly. */
const BATCH_MAX_AGE_MS = 25;
/**
 * An idle connection is closed after this long, before a typical server's own idle timeout (5 s
 * for Node, 60-90 s for registries behind load balancers) would close it under a request.
 */
const IDLE_TIMEOUT_MS = 4_000;
/** Idle connections kept per origin. */
const MAX_IDLE_PER_ORIGIN = 16;
/** Origins whose TLS session is kept for resumption, as Node's https agent kept 100. */
const MAX_TLS_SESSIONS = 100;

/** A request that failed on a reused connection before any response byte: the server had closed it meanwhile. */
export class StaleConnection extends Error {}

export type Http1Response = { head: ResponseHead; body: PushedBody | null };

type Origin = { tls: boolean; name: string; port: number; key: string };

/** Connections per origin, opened where the guard allows and kept alive between requests. */
export class Http1Client {
  private readonly idle = new Map<string, Connection[]>();
  private tls: Promise<typeof import("node:tls")> | null = null;
  /** The latest TLS session per origin: a new connection resumes it instead of a full handshake. */
  private readonly sessions = new Map<string, Buffer>();

  /** `extraCa`: certificates trusted besides Node's own (tests; operators use NODE_EXTRA_CA_CERTS). */
  constructor(
    private readonly guard: AddressGuard,
    private readonly extraCa: string[] = [],
  ) {}

  /**
   * Sends a request without a body; resolves once the response head is in. The signal cuts the
   * request off with its reason, before the head or later in the body. A reused connection the
   * server had closed is replaced once (GET and HEAD change nothing).
   */
  async request(url: URL, method: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Http1Response> {
    const origin = originOf(url);
    const head = requestHead(method, url, headers);
    for (let attempt = 0; ; attempt++) {
      const reused = this.takeIdle(origin.key);
      const conn = reused ?? (await this.connect(origin));
      try {
        return await conn.exchange(head, method, signal, !!reused);
      } catch (err) {
        if (err instanceof StaleConnection && attempt === 0) continue;
        throw err instanceof StaleConnection ? err.cause : err;
      }
    }
  }

  private takeIdle(key: string): Connection | null {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const conn = list.pop()!; // the most recently used: least likely to have been closed by the server
      if (conn.takeFromIdle()) return conn;
    }
    return null;
  }

  private release(key: string, conn: Connection): void {
    const list = this.idle.get(key) ?? [];
    if (list.length >= MAX_IDLE_PER_ORIGIN) return conn.destroy();
    list.push(conn);
    this.idle.set(key, list);
    conn.idleFor(IDLE_TIMEOUT_MS, () => {
      const at = list.indexOf(conn);
      if (at !== -1) list.splice(at, 1);
      if (list.length === 0 && this.idle.get(key) === list) this.idle.delete(key);
    });
  }

  private async connect(origin: Origin): Promise<Connection> {
    // The guard gets the name from the URL (an IP literal too, which no DNS lookup would see) and
    // answers with the one address to connect to, so a DNS answer cannot change in between.
    const target = await this.guard(origin.name, origin.port);
    const conn = new Connection((conn) => this.release(origin.key, conn));
    const onread = { buffer: () => conn.nextReadBuffer(), callback: (n: number) => conn.onRead(n) };
    let socket: net.Socket;
    if (origin.tls) {
      const tls = await (this.tls ??= import("node:tls"));
      const name = origin.name;
      // SNI and the certificate check use the name in the URL (for an IP literal, no SNI and the
      // certificate must name the address), against the CAs Node trusts (NODE_EXTRA_CA_CERTS too).
      socket = tls.connect({
        host: target.address,
        port: origin.port,
        servername: net.isIP(name) ? "" : name,
        checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServerIdentity(name, cert),
        ALPNProtocols: ["http/1.1"],
        session: this.sessions.get(origin.key),
        ...(this.extraCa.length > 0 ? { ca: [...tls.rootCertificates, ...this.extraCa] } : {}),
        onread,
      } as import("node:tls").ConnectionOptions);
      socket.on("session", (session: Buffer) => {
        // One per origin: the map never grows beyond the upstreams (and their CDNs) in use.
        if (this.sessions.size >= MAX_TLS_SESSIONS && !this.sessions.has(origin.key)) this.sessions.delete(this.sessions.keys().next().value!);
        this.sessions.set(origin.key, session);
      });
    } else {
      socket = net.connect({ host: target.address, port: origin.port, onread } as net.NetConnectOpts);
    }
    conn.attach(socket);
    return conn;
  }
}

function originOf(url: URL): Origin {
  const tls = url.protocol === "https:";
  if (!tls && url.protocol !== "http:") throw new Error(`unsupported URL scheme ${url.protocol}`);
  const name = unbracketed(url.hostname);
  const port = Number(url.port) || (tls ? 443 : 80);
  return { tls, name, port, key: `${url.protocol}//${name}:${port}` };
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The request head; a header Node's client would refuse (a bad name, CR, LF or NUL in a value) is refused here too. */
function requestHead(method: string, url: URL, headers: Record<string, string>): string {
  if (!TOKEN.test(method)) throw new TypeError(`invalid HTTP method ${JSON.stringify(method)}`);
  let head = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  let connection = false;
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name)) throw new TypeError(`invalid header name ${JSON.stringify(name)}`);
    if (!/^[\t\x20-\x7e\x80-\xff]*$/.test(value)) throw new TypeError(`invalid value for header ${name}`);
    const lower = name.toLowerCase();
    if (lower === "host") continue; // from the URL, always
    if (lower === "connection") connection = true;
    head += `${name}: ${value}\r\n`;
  }
  if (!connection) head += "connection: keep-alive\r\n";
  return head + "\r\n";
}

/** What a connection is doing: waiting for the head of a response, reading a body, or idle. */
type Phase = "head" | "body" | "idle" | "closed";

/** One kept-alive connection: one request at a time, the response read in place. */
class Connection {
  private socket: net.Socket | null = null;
  private phase: Phase = "head";
  /** Response bytes received on this connection (0: a failure now means the server had closed it). */
  private received = 0;
  private reused = false;
  private readonly scratch = unzeroedBytes(HEAD_SCRATCH_BYTES);
  private scratchUsed = 0;
  private searched = 0;
  private method = "GET";
  private onHead: { resolve: (r: Http1Response) => void; reject: (err: unknown) => void } | null = null;
  private body: BodyReader | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private onIdleEnd: (() => void) | null = null;
  private signal: AbortSignal | undefined;
  private readonly onAbort = () => this.fail(this.signal!.reason);

  constructor(private readonly release: (conn: Connection) => void) {}

  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on("error", (err) => this.fail(err));
    socket.on("end", () => this.ended());
    socket.on("close", () => this.fail(new Error("the connection closed")));
  }

  /** Sends `head` and resolves with the response head and body. */
  exchange(head: string, method: string, signal: AbortSignal | undefined, reused: boolean): Promise<Http1Response> {
    if (signal?.aborted) {
      this.destroy();
      return Promise.reject(signal.reason);
    }
    this.method = method;
    this.reused = reused;
    this.received = 0;
    this.phase = "head";
    this.scratchUsed = 0;
    this.searched = 0;
    this.signal = signal;
    signal?.addEventListener("abort", this.onAbort, { once: true });
    return new Promise<Http1Response>((resolve, reject) => {
      this.onHead = { resolve, reject };
      this.socket!.write(head, "latin1");
    });
  }

  /** Where the next socket read lands. */
  nextReadBuffer(): Uint8Array {
    if (this.phase === "body" && this.body) return this.body.readBuffer();
    return this.scratch.subarray(this.scratchUsed);
  }

  /** `n` bytes arrived where nextReadBuffer() said; returns false to pause reading (the body's reader is pacing). */
  onRead(n: number): boolean {
    this.received += n;
    try {
      if (this.phase === "body") this.body!.took(n);
      else if (this.phase === "head") this.headBytes(n);
      else if (this.phase === "idle") throw new ResponseParseError("the server sent bytes with no request outstanding");
    } catch (err) {
      this.fail(err);
    }
    // Idle and head phases always read (an idle connection must see the server close it).
    return this.phase === "body" ? !this.body!.paused : this.phase !== "closed";
  }

  private headBytes(n: number): void {
    this.scratchUsed += n;
    const end = headEnd(this.scratch, this.scratchUsed, this.searched);
    if (end === -1 || end > MAX_RESPONSE_HEAD_BYTES + 4) {
      if (this.scratchUsed > MAX_RESPONSE_HEAD_BYTES + 4) throw new ResponseParseError(`response head larger than ${MAX_RESPONSE_HEAD_BYTES} bytes`);
      this.searched = this.scratchUsed;
      return;
    }
    const text = Buffer.from(this.scratch.buffer, this.scratch.byteOffset, end - 4).toString("latin1");
    this.gotHead(parseResponseHead(text, this.method), this.scratch.subarray(end, this.scratchUsed));
  }

  private gotHead(head: ResponseHead, early: Uint8Array): void {
    const waiter = this.onHead!;
    this.onHead = null;
    if (head.framing.kind === "none") {
      // Bytes after a response without a body (a body sent with a HEAD answer) belong to no
      // response: this one stands, the connection is not used again.
      this.done(head.closes || early.byteLength > 0);
      waiter.resolve({ head, body: null });
      return;
    }
    this.phase = "body";
    const body = new BodyReader(head.framing, {
      finished: (reusable) => {
        if (this.body === body) this.done(!reusable || head.closes);
      },
      abort: (err) => {
        if (this.body === body) this.fail(err);
      },
      resume: () => {
        if (this.body === body && this.phase === "body") this.socket?.resume();
      },
    });
    this.body = body;
    // The response stands from here: a broken body fails its reader, not the request.
    waiter.resolve({ head, body: body.pushed });
    body.takeEarly(early);
  }

  /** The exchange is over: the connection goes back to its pool, or is closed. */
  private done(close: boolean): void {
    this.signal?.removeEventListener("abort", this.onAbort);
    this.signal = undefined;
    this.body = null;
    if (close || !this.socket || this.socket.destroyed) {
      this.destroy();
      return;
    }
    this.phase = "idle";
    this.scratchUsed = 0;
    this.socket.resume();
    this.release(this);
  }

  /** The server ended its side: the end of a body framed by the connection's end, or a failure. */
  private ended(): void {
    if (this.phase === "body" && this.body?.endsWithConnection()) return;
    this.fail(new Error(this.phase === "body" ? "the response body was cut off" : "the connection closed"));
  }

  /** Ends the current exchange with `err` and closes the connection. */
  private fail(err: unknown): void {
    if (this.phase === "closed") return;
    const phase = this.phase;
    this.phase = "closed";
    this.signal?.removeEventListener("abort", this.onAbort);
    this.socket?.destroy();
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.onIdleEnd?.();
    this.onIdleEnd = null;
    if (phase === "head" && this.onHead) {
      const waiter = this.onHead;
      this.onHead = null;
      const aborted = this.signal !== undefined && err === this.signal.reason;
      // Nothing came back on a connection that had served before: the server closed it meanwhile.
      waiter.reject(this.reused && this.received === 0 && !aborted ? new StaleConnection("stale connection", { cause: err }) : err);
    } else if (phase === "body") {
      this.body?.fail(err);
    }
  }

  destroy(): void {
    if (this.phase === "closed") return;
    this.phase = "closed";
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.onIdleEnd?.();
    this.onIdleEnd = null;
    this.socket?.destroy();
  }

  /** Idle in a pool: closed after `ms`, `gone` called when it leaves the pool that way (or by failing). */
  idleFor(ms: number, gone: () => void): void {
    this.onIdleEnd = gone;
    this.idleTimer = setTimeout(() => this.destroy(), ms);
    this.idleTimer.unref?.();
  }

  /** Taken from the pool for a request; false if it closed meanwhile. */
  takeFromIdle(): boolean {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    this.onIdleEnd = null;
    return this.phase === "idle" && !!this.socket && !this.socket.destroyed && this.socket.readyState === "open";
  }
}

/**
 * One response body, read into batches: fresh buffers of BATCH_BYTES (smaller for a short body)
 * that socket reads fill in place and that are handed on as views, each range once, never
 * written again after. The batch buffers are marked (markBatch) so a batcher passes them on as
 * they are.
 */
class BodyReader {
  readonly pushed: PushedBody;
  paused = false;
  private batch: Uint8Array | null = null;
  private filled = 0;
  private emitted = 0;
  private firstUnemittedAt = 0;
  /** Body bytes still to come (length framing). */
  private remaining: number;
  private readonly chunked: ChunkedDecoder | null;
  private complete = false;
  /** The body's end came with bytes after it, or the body ends with the connection: not reusable. */
  private reusable = true;
  private onChunk: ((chunk: Uint8Array) => void | Promise<void>) | null = null;
  private settle: { resolve: () => void; reject: (err: unknown) => void } | null = null;
  private error: unknown = null;
  private pending: Promise<void> | null = null;
  /** Filled ranges of earlier batches not handed on yet, oldest first, each with the reader's hold on its batch. */
  private readonly unsent: Array<{ chunk: Uint8Array; hold: BatchHold | null }> = [];
  /** The reader's hold on the current batch (pooled ones: see util/batch-pool.ts), released once it moved on. */
  private hold: BatchHold | null = null;

  constructor(
    private readonly framing: Framing,
    private readonly conn: {
      /** Every byte of the body has arrived (the reader may not have taken them all yet). */
      finished: (reusable: boolean) => void;
      /** The reader failed or cancelled: the connection is cut (if it still carries this body). */
      abort: (err: unknown) => void;
      /** The reader takes bytes again: reading may go on. */
      resume: () => void;
    },
  ) {
    this.remaining = framing.kind === "length" ? framing.length : Infinity;
    this.chunked = framing.kind === "chunked" ? new ChunkedDecoder() : null;
    if (framing.kind === "close") this.reusable = false;
    if (framing.kind === "length" && framing.length === 0) this.complete = true;
    // Until someone reads the body, the socket waits.
    this.paused = true;
    this.pushed = {
      pipe: (onChunk) =>
        new Promise<void>((resolve, reject) => {
          if (this.onChunk) throw new Error("a response body is read once");
          this.onChunk = onChunk;
          this.settle = { resolve, reject };
          if (this.error !== null) return reject(this.error);
          this.paused = false;
          this.flush(true);
          if (this.complete) return this.endBody();
          if (!this.paused) this.conn.resume();
        }),
      cancel: (reason) => {
        const err = reason instanceof Error ? reason : new Error("the response body was cancelled");
        this.fail(err);
        this.conn.abort(err);
      },
    };
  }

  endsWithConnection(): boolean {
    if (this.framing.kind !== "close" || this.complete) return false;
    this.complete = true;
    this.finishConnection();
    if (this.settle) {
      this.flush(true);
      this.endBody();
    }
    return true;
  }

  /** Bytes of the body that came with the head. */
  takeEarly(early: Uint8Array): void {
    if (this.complete) {
      if (early.byteLength > 0) this.reusable = false;
      this.finishConnection();
      return;
    }
    let at = 0;
    while (at < early.byteLength && !this.complete) {
      const into = this.readBuffer();
      const n = Math.min(into.byteLength, early.byteLength - at);
      into.set(early.subarray(at, at + n));
      at += n;
      this.processRead(n);
    }
    if (at < early.byteLength) this.reusable = false;
    if (this.complete) this.finishConnection();
  }

  /** The free tail of the current batch (never past the body's end), where the next read lands. */
  readBuffer(): Uint8Array {
    if (!this.batch || this.filled === this.batch.byteLength) this.newBatch();
    const end = Math.min(this.batch!.byteLength, this.filled + this.remaining);
    return this.batch!.subarray(this.filled, end);
  }

  /** `n` bytes arrived at the free tail. */
  took(n: number): void {
    this.processRead(n);
    if (this.complete) {
      this.finishConnection();
      if (this.settle) {
        this.flush(true);
        this.endBody();
      }
      return;
    }
    if (this.settle) this.flush(false);
  }

  private newBatch(): void {
    // A full batch is handed on before the next read; should one not be yet (its reader has not
    // come), it waits its turn here rather than be lost.
    if (this.batch && this.filled > this.emitted) this.unsent.push({ chunk: this.batch.subarray(this.emitted, this.filled), hold: this.hold });
    else this.hold?.release();
    this.hold = null;
    const size = this.framing.kind === "length" ? Math.min(BATCH_BYTES, this.remaining) : this.batch ? BATCH_BYTES : FIRST_UNKNOWN_BATCH_BYTES;
    if (size === BATCH_BYTES) {
      // Whoever keeps a chunk of it takes a hold of their own while it is handed over.
      this.hold = batchPool.take();
      this.batch = this.hold.bytes;
    } else {
      this.batch = markBatch(unzeroedBytes(size));
    }
    this.filled = 0;
    this.emitted = 0;
  }

  private processRead(n: number): void {
    const batch = this.batch!;
    if (this.filled === this.emitted) this.firstUnemittedAt = Date.now();
    if (this.chunked) {
      // Data runs are moved together at the front of what arrived; the framing bytes are dropped.
      let write = this.filled;
      const took = this.chunked.feed(batch, this.filled, this.filled + n, (from, to) => {
        if (from !== write) batch.copyWithin(write, from, to);
        write += to - from;
      });
      if (took < n) this.reusable = false;
      this.filled = write;
      if (this.chunked.done) this.complete = true;
      return;
    }
    this.filled += n;
    this.remaining -= n;
    if (this.remaining === 0) this.complete = true;
  }

  /** Hands on what is filled: when the batch is full, at the end, or when it has waited too long; until the reader paces. */
  private flush(force: boolean): void {
    while (!this.paused && this.onChunk) {
      const queued = this.unsent.shift();
      let chunk = queued?.chunk;
      if (!chunk) {
        const batch = this.batch;
        if (!batch || this.filled === this.emitted) return;
        if (!force && this.filled < batch.byteLength && Date.now() - this.firstUnemittedAt < BATCH_MAX_AGE_MS) return;
        chunk = batch.subarray(this.emitted, this.filled);
        this.emitted = this.filled;
      }
      let wait: void | Promise<void>;
      try {
        wait = this.onChunk(chunk);
      } catch (err) {
        queued?.hold?.release();
        this.fail(err);
        this.conn.abort(err);
        return;
      }
      // Its takers hold it now, if they keep it.
      queued?.hold?.release();
      if (wait) this.pace(wait);
    }
  }

  /** The reader takes no more until `wait` settles: reading stops meanwhile. */
  private pace(wait: Promise<void>): void {
    this.paused = true;
    const current = (this.pending = wait.then(
      () => {
        if (this.pending === current) this.pending = null;
        this.paused = false;
        if (this.settle === null) return;
        this.flush(this.complete);
        if (this.complete) return this.endBody();
        if (!this.paused) this.conn.resume();
      },
      (err: unknown) => {
        this.fail(err);
        this.conn.abort(err);
      },
    ));
  }

  private connectionDone = false;
  private finishConnection(): void {
    if (this.connectionDone) return;
    this.connectionDone = true;
    this.conn.finished(this.reusable);
  }

  /** The body is complete and every byte handed on: the reader's pipe resolves once its last chunk is taken. */
  private endBody(): void {
    if (this.unsent.length > 0 || this.filled > this.emitted || this.pending) return; // the paced chunk's settling comes back here
    const settle = this.settle;
    this.settle = null;
    this.releaseHolds();
    settle?.resolve();
  }

  /** Ends the body with `err`: what arrived before it is handed on first (unless the reader is pacing). */
  fail(err: unknown): void {
    if (this.error !== null) return;
    this.error = err;
    const settle = this.settle;
    if (settle && !this.paused && this.onChunk) {
      if (this.filled > this.emitted) this.unsent.push({ chunk: this.batch!.subarray(this.emitted, this.filled), hold: null });
      this.emitted = this.filled;
      for (const { chunk } of this.unsent) {
        try {
          // The reader's answer no longer matters: the body fails anyway.
          Promise.resolve(this.onChunk(chunk)).catch(() => {});
        } catch {
          break;
        }
      }
    }
    this.releaseHolds();
    if (!settle) return; // pipe() rejects with it
    this.settle = null;
    settle.reject(err);
  }

  /** The reader is done with its batches (their takers hold what they keep). */
  private releaseHolds(): void {
    for (const { hold } of this.unsent.splice(0)) hold?.release();
    this.hold?.release();
    this.hold = null;
  }
}
