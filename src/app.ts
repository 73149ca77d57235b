import type { AccessControl } from "./auth/access.ts";
import type { BlobCache } from "./cache/blob-cache.ts";
import type { ManifestCache } from "./cache/manifest-cache.ts";
import type { Config } from "./config.ts";
import type { TypedKv } from "./kv/kv.ts";
import type { Logger } from "./log.ts";
import type { StowageMetrics } from "./metrics/stowage-metrics.ts";
import type { BlobStore } from "./storage/blob-store.ts";
import type { UpstreamClient } from "./upstream/client.ts";

/** Everything a request handler needs, assembled once at start-up (src/server.ts). */
export type App = {
  config: Config;
  clients: ReadonlyMap<string, UpstreamClient>;
  manifests: ManifestCache;
  blobs: BlobCache;
  kv: TypedKv;
  store: BlobStore;
  log: Logger;
  metrics: StowageMetrics;
  /** Present when access control is on. */
  access?: AccessControl;
};
