/**
 * Passes a body through unchanged, telling `onChunk` about every chunk the
 * consumer takes and `onEnd` (once) when the body ends, fails or is cancelled.
 * Pull-based (no buffering of its own), so backpressure is kept.
 */
export function observedBody(
  body: ReadableStream<Uint8Array>,
  hooks: { onChunk?: (bytes: number) => void; onEnd?: () => void },
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    hooks.onEnd?.();
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            end();
            controller.close();
          } else {
            hooks.onChunk?.(value.byteLength);
            controller.enqueue(value);
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
