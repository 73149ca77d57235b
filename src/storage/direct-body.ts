/**
 * A response body that a runtime may send without web streams. Blob bodies (a stored file, a
 * follower of a download) are web ReadableStreams, which every runtime can send; behind such a
 * stream there may also be a DirectSource, which a runtime that writes to its sockets itself
 * (Node, see runtime/node.ts) takes instead: no stream layers per chunk, and a file is read
 * into a few reused buffers rather than a fresh one per chunk. Deno sends the stream.
 */
import { observedBody } from "../util/streams.ts";

/** Bytes in order, read by exactly one consumer: the web stream or a runtime that took it. */
export interface DirectSource {
  /** The next bytes, or null at the end; rejects when the body cannot be completed. */
  read(): Promise<Uint8Array | null>;
  /**
   * The runtime is done with a chunk `read` gave it (written to the socket): its memory may
   * be reused. Only the runtime calls it; chunks given to the web stream are never reused.
   */
  recycle?(chunk: Uint8Array): void;
  /**
   * A chunk `read` gave is kept for good (by a web stream's consumer): its memory is never
   * reused, and the source may stop tracking it. Called instead of recycle, never with it.
   */
  forget?(chunk: Uint8Array): void;
  /** The body ends early (the client left, an error): release what it holds. Called at most once. */
  cancel(reason?: unknown): void;
}

/** What watches a body: as util/streams.ts observedBody takes them. */
export type BodyHooks = { onChunk?: (bytes: number) => void; onEnd?: () => void; stall?: { ms: number; onStall: () => void } };

export type DirectBody = { source: DirectSource; hooks: BodyHooks[] };

const bodies = new WeakMap<ReadableStream<Uint8Array>, DirectBody>();

/** A web stream reading `source` (nothing is read before the stream is), which a runtime may take whole instead. */
export function directStream(source: DirectSource): ReadableStream<Uint8Array> {
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const chunk = await source.read();
          if (chunk) {
            controller.enqueue(chunk);
            source.forget?.(chunk);
          } else controller.close();
        } catch (err) {
          controller.error(err);
        }
      },
      cancel(reason) {
        if (cancelled) return;
        cancelled = true;
        source.cancel(reason);
      },
    },
    // No read before the consumer asks: a runtime that takes the source must find it untouched.
    { highWaterMark: 0 },
  );
  bodies.set(stream, { source, hooks: [] });
  return stream;
}

/**
 * `source` with its next read started as soon as the last one is done, so a slow read (a
 * spool read behind the live edge) overlaps the socket write of the chunk before it.
 */
export function readingAhead(source: DirectSource): DirectSource {
  let ahead: Promise<Uint8Array | null> | null = null;
  return {
    async read() {
      const current = ahead ?? source.read();
      ahead = null;
      const chunk = await current;
      if (chunk) {
        ahead = source.read();
        ahead.catch(() => {}); // surfaces at the next read
      }
      return chunk;
    },
    recycle: source.recycle && ((chunk) => source.recycle!(chunk)),
    forget: source.forget && ((chunk) => source.forget!(chunk)),
    cancel: (reason) => source.cancel(reason),
  };
}

/** `body` with `hooks` watching it, as observedBody does; a direct body stays direct, with the hooks kept for the runtime to call. */
export function observed(body: ReadableStream<Uint8Array>, hooks: BodyHooks): ReadableStream<Uint8Array> {
  const direct = bodies.get(body);
  // observedBody only takes a reader here; it reads nothing until it is read.
  const wrapped = observedBody(body, hooks);
  if (direct) {
    bodies.delete(body);
    bodies.set(wrapped, { source: direct.source, hooks: [...direct.hooks, hooks] });
  }
  return wrapped;
}

/**
 * The source behind `body`, taken: from now on the caller alone reads it, calls every hook
 * (onChunk per chunk sent, onEnd once, the stall watchdog) and cancels it if it stops early.
 * Null when `body` has none or is already being read as a stream.
 */
export function takeDirect(body: ReadableStream<Uint8Array> | null): DirectBody | null {
  if (!body || body.locked) return null;
  const direct = bodies.get(body);
  if (!direct) return null;
  bodies.delete(body);
  return direct;
}
