// An upstream request holds one of its upstream's concurrency slots until its body is done.
import { observedBody, type PushedBody, pushedStream, takePushed } from "../util/streams.ts";

/** Gives the concurrency slot back when the body has been read, failed or been cancelled (or at once if there is none). */
export function releasingWhenDone(response: Response, release: () => void): Response {
  if (!response.body) {
    release();
    return response;
  }
  // A body the runtime pushes (Node) stays one a blob download can take whole (util/streams.ts).
  const pushed = takePushed(response.body);
  const body = pushed ? pushedStream(releasingPushed(pushed, release)) : observedBody(response.body, { onEnd: release });
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

function releasingPushed(body: PushedBody, release: () => void): PushedBody {
  return {
    pipe: (onChunk) => body.pipe(onChunk).finally(release),
    cancel(reason) {
      body.cancel(reason);
      release();
    },
  };
}
