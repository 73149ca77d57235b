import type { AccessControl } from "../auth/access.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";
import type { Digest } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import type { UpstreamStatus } from "../upstream/upstream-health.ts";
import type { Upstream } from "../upstream/upstream.ts";
import type { CollectOptions, CollectReport } from "../gc/collector.ts";
import type { AdminPageMode } from "./admin-access.ts";
import type { RecentErrors } from "./recent-errors.ts";

/** A blob download in progress, as BlobCache.downloads() lists it. */
export type DownloadInfo = { digest: Digest; upstream: string; repo: string; bytes: number; size: number | null; startedAt: number };

/**
 * What the admin page reads and does. The http layer's App has all of it; this folder names
 * only what it uses, so it imports nothing from src/http.
 */
export type AdminDeps = {
  settings: { upstreams: readonly Upstream[]; defaultUpstream: string; adminPage: AdminPageMode; maxSizeBytes: number | null };
  clients: ReadonlyMap<string, { status(): UpstreamStatus }>;
  blobs: { downloads(): DownloadInfo[] };
  kv: TypedKv;
  store: BlobStore;
  log: Logger;
  metrics: StowageMetrics;
  access?: AccessControl;
  collector: { run(options: CollectOptions): Promise<CollectReport>; lastReport(): CollectReport | null };
  recentErrors?: RecentErrors;
};
