import type { AccessControl } from "../auth/access.ts";
import type { BlobCache } from "../cache/blob-cache.ts";
import type { ManifestCache } from "../cache/manifest-cache.ts";
import type { ReferrersCache } from "../cache/referrers-cache.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import type { UpstreamClient } from "../upstream/client.ts";
import type { Upstream } from "../upstream/upstream.ts";

/** What the handler needs to know of the configuration; server.ts takes it from Config. */
export type HttpSettings = {
  upstreams: readonly Upstream[];
  /** For image names that do not start with an upstream's name. */
  defaultUpstream: string;
  /** /metrics and /healthz have a listener of their own (--metrics-listen): the public one answers 404 there. */
  separateMetricsListener: boolean;
};

/** Everything a request handler needs, assembled once at start-up (src/server.ts). */
export type App = {
  settings: HttpSettings;
  clients: ReadonlyMap<string, UpstreamClient>;
  manifests: ManifestCache;
  blobs: BlobCache;
  referrers: ReferrersCache;
  kv: TypedKv;
  store: BlobStore;
  log: Logger;
  metrics: StowageMetrics;
  /** Present when access control is on. */
  access?: AccessControl;
};
