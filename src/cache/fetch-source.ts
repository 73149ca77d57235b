import type { UpstreamClient } from "../upstream/client.ts";

/** Where a cache miss is fetched from: an upstream's client and the repository on it. */
export type FetchSource = { client: UpstreamClient; repo: string };
