/**
 * Web stream helpers for bodies on their way through: watching one pass (for
 * accounting and stalled clients) and reading a small one whole, bounded.
 */
import { concatBytes } from "./buffers.ts";
import { contentLength } from "./http-headers.ts";

/**
 * Passes a body through unchanged, telling `onChunk` about every chunk the
 * consumer takes and `onEnd` (once) when the body ends, fails or is cancelled.
 * Pull-based (no buffering of its own), so backpressure is kept.
 *
 * With `stall`, a consumer that asks for nothing more for `ms` after taking a
 * chunk (a client that stopped reading: the socket is full and the server
 * stops pulling) gets its body failed, which makes the server close the
 * connection and frees what the body holds. Works the same on every runtime.
 */
export function observedBody(
  body: ReadableStream<Uint8Array>,
  hooks: { onChunk?: (bytes: number) => void; onEnd?: () => void; stall?: { ms: number; onStall: () => void } },
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let ended = false;
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  const end = () => {
    clearTimeout(watchdog);
    if (ended) return;
    ended = true;
    hooks.onEnd?.();
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        clearTimeout(watchdog);
        try {
          const { done, value } = await reader.read();
          if (done) {
            end();
            controller.close();
            return;
          }
          hooks.onChunk?.(value.byteLength);
          controller.enqueue(value);
          const stall = hooks.stall;
          if (stall) {
            watchdog = setTimeout(() => {
              const err = new Error(`the client took nothing for ${stall.ms / 1000} s`);
              end();
              controller.error(err);
              reader.cancel(err).catch(() => {});
              stall.onStall();
            }, stall.ms);
          }
        } catch (err) {
          end();
          controller.error(err);
        }
      },
      cancel(reason) {
        end();
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * Reads a whole body (request or response) into memory, or gives up once it
 * exceeds `max` bytes: null then, and the stream is cancelled. For small
 * bodies only (forms, manifests, token JSON), never for blobs.
 */
export async function readLimited(message: Request | Response, max: number): Promise<Uint8Array<ArrayBuffer> | null> {
  const declared = contentLength(message.headers);
  if (declared !== null && declared > max) {
    await message.body?.cancel().catch(() => {});
    return null;
  }
  if (!message.body) return new Uint8Array(0);
  const reader = message.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel().catch(() => {});
      return null;
    }
    parts.push(value);
  }
  return concatBytes(parts);
}

/**
 * A body whose chunks are pushed to the reader as they arrive, without web stream layers (on
 * Node, an upstream response read straight from node:http's stream: no copy and no promises per chunk).
 * Read once, either through `pipe` or through the web stream made by `pushedStream`.
 */
export interface PushedBody {
  /**
   * Calls `onChunk` with each chunk, in order; resolves at the end of the body, rejects with
   * what broke it. While a promise `onChunk` returned is pending, no chunk comes (the
   * connection is paused); if it rejects, the body is cut off and `pipe` rejects with that.
   */
  pipe(onChunk: (chunk: Uint8Array) => void | Promise<void>): Promise<void>;
  /** Cuts the body off (nobody will read the rest). */
  cancel(reason?: unknown): void;
}

const pushedBodies = new WeakMap<ReadableStream<Uint8Array>, PushedBody>();

/**
 * A web stream of `body`, for readers that want one (small bodies: manifests, tokens), which a
 * blob download may take back with `takePushed` before anything read it.
 */
export function pushedStream(body: PushedBody): ReadableStream<Uint8Array> {
  let resume: (() => void) | null = null;
  let piping = false;
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (resume) {
          const go = resume;
          resume = null;
          go();
        }
        if (piping) return;
        piping = true;
        body
          .pipe((chunk) => {
            controller.enqueue(chunk);
            if ((controller.desiredSize ?? 0) > 0) return;
            return new Promise<void>((r) => (resume = r));
          })
          .then(
            () => controller.close(),
            (err) => controller.error(err),
          );
      },
      cancel(reason) {
        body.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  pushedBodies.set(stream, body);
  return stream;
}

/** The pushed body behind `stream`, for a reader that takes it whole instead of reading the stream; null if there is none or the stream is being read. */
export function takePushed(stream: ReadableStream<Uint8Array> | null): PushedBody | null {
  if (!stream || stream.locked) return null;
  const body = pushedBodies.get(stream) ?? null;
  if (!body) return null;
  pushedBodies.delete(stream);
  stream.getReader(); // locked: nobody reads it as a stream now
  return body;
}
