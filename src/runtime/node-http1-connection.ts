/**
 * One kept-alive connection of the HTTP/1.1 client (node-http1.ts): one request at a time, the
 * response head read into a scratch buffer and parsed strictly (util/http1-response.ts), the body
 * handed to a BodyReader (node-http1-body.ts) that reads it in place.
 */
import type * as net from "node:net";
import { headEnd, parseResponseHead, ResponseParseError, type ResponseHead } from "../util/http1-response.ts";
import { unzeroedBytes } from "../util/buffers.ts";
import type { PushedBody } from "../util/streams.ts";
import { BodyReader } from "./node-http1-body.ts";

/** The most a response's status line and headers may take (real registries send 1-4 KiB). */
const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;
/** Where reads land while a head is awaited: room for a whole head and the start of its body. */
const HEAD_SCRATCH_BYTES = 64 * 1024;

/** A request that failed on a reused connection before any response byte: the server had closed it meanwhile. */
export class StaleConnection extends Error {}

export type Http1Response = { head: ResponseHead; body: PushedBody | null };

/** What a connection is doing: waiting for the head of a response, reading a body, or idle. */
type Phase = "head" | "body" | "idle" | "closed";

/** One kept-alive connection: one request at a time, the response read in place. */
export class Connection {
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
    // The head and the blank line after it: at most MAX_RESPONSE_HEAD_BYTES + 4 bytes.
    if ((end === -1 ? this.scratchUsed : end) > MAX_RESPONSE_HEAD_BYTES + 4) throw new ResponseParseError(`response head larger than ${MAX_RESPONSE_HEAD_BYTES} bytes`);
    if (end === -1) {
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
    this.destroy();
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
    this.signal?.removeEventListener("abort", this.onAbort);
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
