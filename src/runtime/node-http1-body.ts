/**
 * One response body of the HTTP/1.1 client (node-http1.ts), read in place into batches and
 * handed on as views; see the class.
 */
import { batchPool, type BatchHold } from "../util/batch-pool.ts";
import { BATCH_BYTES, BATCH_MAX_AGE_MS, markBatch, unzeroedBytes } from "../util/buffers.ts";
import { ChunkedDecoder, type Framing } from "../util/http1-response.ts";
import type { PushedBody } from "../util/streams.ts";

/** The first batch of a body of unknown length: most such bodies are small (a chunked manifest). */
const FIRST_UNKNOWN_BATCH_BYTES = 64 * 1024;

/**
 * One response body, read into batches: BATCH_BYTES buffers from the batch pool (fresh, smaller
 * ones for a short body) that socket reads fill in place and that are handed on as views, each range once, never
 * written again after. The batch buffers are marked (markBatch) so a batcher passes them on as
 * they are.
 */
export class BodyReader {
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
