// Only what a blob fetch uses of the upstream client: GET/HEAD of a blob (with Range when
// resuming) against a plain HTTP upstream, for tests that drive BlobCache directly.
import type { UpstreamClient } from "../../src/upstream/client.ts";

export function blobOnlyClient(upstreamUrl: string, name = "local"): UpstreamClient {
  return {
    upstream: { name },
    async blob(repo: string, digest: string, method: "GET" | "HEAD", _log: unknown, fromByte = 0) {
      const aborter = new AbortController();
      const response = await fetch(`${upstreamUrl}/v2/${repo}/blobs/${digest}`, {
        method,
        headers: fromByte > 0 ? { range: `bytes=${fromByte}-` } : {},
        signal: aborter.signal,
      });
      return { response, abort: (reason?: unknown) => aborter.abort(reason) };
    },
  } as unknown as UpstreamClient;
}
