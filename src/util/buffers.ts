import { Buffer } from "node:buffer";

/**
 * Bytes per batch where bytes are gathered before being passed on (to followers, the store,
 * a digest worker): larger batches mean fewer messages and writes, smaller ones less memory.
 */
export const BATCH_BYTES = 1024 * 1024;

/** A partly filled batch older than this is passed on anyway, so a slow upstream still reaches clients promptly. */
export const BATCH_MAX_AGE_MS = 25;

/** Pools of spare buffers drop them after this long with none taken, so an idle process holds none. */
export const SPARES_IDLE_MS = 5_000;

/**
 * `size` bytes of fresh memory that is NOT zeroed, for buffers the caller fills completely
 * before anyone reads them (batches, file reads, upload parts): zero-filling every new 1 MiB
 * buffer was ~5 % of the main thread's time in a cold pull. Never expose bytes not yet written.
 * Its `.buffer` is exactly `size` bytes (never a slice of a shared pool).
 */
export function unzeroedBytes(size: number): Uint8Array {
  return Buffer.allocUnsafeSlow(size);
}

/** Buffers whose bytes, once handed on, are never written again: batches made by their reader. */
const batchBuffers = new WeakSet<ArrayBufferLike>();

/**
 * Marks `bytes` (a fresh buffer its filler hands on in ranges, each range once and never written
 * after) as a batch, so a Batcher passes its ranges on as they are instead of copying them.
 */
export function markBatch(bytes: Uint8Array): Uint8Array {
  batchBuffers.add(bytes.buffer);
  return bytes;
}

/** Whether `chunk` lies in a buffer marked by markBatch. */
export function isBatch(chunk: Uint8Array): boolean {
  return batchBuffers.has(chunk.buffer);
}

/** The bytes of `parts` one after another, in one new buffer. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/**
 * Buffers of one size handed back after use, reused instead of allocating (and faulting in)
 * fresh ones: V8 keeps dead large buffers around until a collection finds them, so a buffer
 * dropped and another allocated costs twice the memory for a while. At most `max` are kept.
 * With `idleMs`, they are dropped once none was taken for that long, so an idle process holds
 * none; without it they stay for as long as the pool lives.
 */
export class BufferPool {
  private readonly spare: ArrayBuffer[] = [];
  private lastTake = 0;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(readonly size: number, private readonly max: number, private readonly idleMs?: number) {}

  /** A `size`-byte buffer to fill completely: a spare one, or fresh unzeroed memory. */
  take(): Uint8Array {
    if (this.idleMs !== undefined) this.lastTake = Date.now();
    const spare = this.spare.pop();
    return spare ? new Uint8Array(spare) : unzeroedBytes(this.size);
  }

  /**
   * Hands a buffer back once nobody reads it any more (for a request body: only after the
   * request succeeded, a failed one may still have it in a socket write). Buffers of another
   * size, and any beyond `max`, are left to the garbage collector.
   */
  give(buffer: ArrayBufferLike): void {
    if (buffer.byteLength === this.size && this.spare.length < this.max && buffer instanceof ArrayBuffer) {
      this.spare.push(buffer);
      if (this.idleMs !== undefined) this.idleTimer ??= this.armIdle(this.idleMs);
    }
  }

  /** Lets the garbage collector have every spare buffer (when the work that used them is over). */
  clear(): void {
    this.spare.length = 0;
  }

  /** Spare buffers held now. */
  get spares(): number {
    return this.spare.length;
  }

  private armIdle(idleMs: number): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => {
      this.idleTimer = null;
      if (Date.now() - this.lastTake >= idleMs) this.clear();
      else if (this.spare.length > 0) this.idleTimer = this.armIdle(idleMs);
    }, idleMs);
    // Spare buffers never keep the process alive.
    (timer as { unref?: () => void }).unref?.();
    return timer;
  }
}

/**
 * Copies chunks of any size into buffers of a fixed size, in order, and hands each buffer on
 * as it fills; a buffer is never written again once handed on. The last, partly filled
 * buffer is taken with `takePartial()`.
 */
export class BufferFiller {
  /** Taken when the first byte for it arrives, so nothing is held between buffers. */
  private buffer: Uint8Array | null = null;
  private used = 0;

  /** `take` supplies each next buffer (fresh or from a pool); `full` receives each filled one. */
  constructor(
    readonly size: number,
    private readonly take: () => Uint8Array,
    private readonly full: (buffer: Uint8Array) => void | Promise<void>,
  ) {}

  /** Bytes in the current, not yet full buffer. */
  get filled(): number {
    return this.used;
  }

  /**
   * Copies `chunk` in. Each time the buffer fills, `full` is called with it. When `full`
   * returns a promise it is awaited (that paces the caller): then `push` returns a promise,
   * and the caller must wait for it before the next push; otherwise it returns nothing (no
   * promise per chunk where nothing waits).
   */
  push(chunk: Uint8Array, from = 0): void | Promise<void> {
    let offset = from;
    while (offset < chunk.byteLength) {
      const buffer = (this.buffer ??= this.take());
      const n = Math.min(this.size - this.used, chunk.byteLength - offset);
      buffer.set(chunk.subarray(offset, offset + n), this.used);
      this.used += n;
      offset += n;
      if (this.used === this.size) {
        this.buffer = null;
        this.used = 0;
        const paced = this.full(buffer);
        if (paced) return offset < chunk.byteLength ? paced.then(() => this.push(chunk, offset)) : paced;
      }
    }
  }

  /**
   * The bytes of the partly filled buffer (a view of it; null when empty); the next push
   * starts a fresh buffer. `copy` gives them their own exactly-sized buffer instead (for
   * bytes transferred to a worker), and the current buffer is kept for the next bytes.
   */
  takePartial(copy = false): Uint8Array | null {
    if (this.used === 0 || !this.buffer) return null;
    const bytes = copy ? this.buffer.slice(0, this.used) : this.buffer.subarray(0, this.used);
    this.used = 0;
    if (!copy) this.buffer = null;
    return bytes;
  }

  /** Drops the current buffer (nothing more will be pushed). */
  release(): void {
    this.buffer = null;
    this.used = 0;
  }
}
