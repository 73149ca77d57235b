import type { RecentErrors } from "../admin/recent-errors.ts";
import type { AccessControl } from "../auth/access.ts";
import type { BlobCache } from "../cache/blob-cache.ts";
import type { UsageRecorder } from "../cache/usage.ts";
import type { Collector } from "../gc/collector.ts";
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
  /** Who may open the operator page /-/ when access control is off (--admin-page); with it on, only admins. */
  adminPage: "off" | "loopback" | "open";
  /** --max-size, which the page shows the store against; null: no limit. */
  maxSizeBytes: number | null;
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
  /** Expiry, size limits and purges (the operator page runs purges through it). */
  collector: Collector;
  /** When content was last pulled, and how often. */
  usage: UsageRecorder;
  /** The last warnings and errors logged, for the admin page (absent: not collected). */
  recentErrors?: RecentErrors;
  /** Present when access control is on. */
  access?: AccessControl;
};
