import { gcReasonLabel, methodLabel, statusLabel } from "./labels.ts";
import { MetricsRegistry } from "./metrics.ts";

/**
 * Every figure Stowage exports on /metrics. An operator computes the hit ratio
 * as hits / (hits + misses + coalesced) and the upstream bytes saved as
 * served_from_cache_bytes.
 */
export function createStowageMetrics() {
  const registry = new MetricsRegistry();
  return {
    registry,
    // method and status are normalized here as well as by callers: a client or upstream picks them.
    requests: registry.counter("stowage_http_requests_total", "HTTP requests answered, by route, method and status.", {
      method: methodLabel,
      status: statusLabel,
    }),
    cacheHits: registry.counter("stowage_cache_hits_total", "Requests served from the cache, by kind (blob, manifest, referrers)."),
    cacheMisses: registry.counter("stowage_cache_misses_total", "Requests that started an upstream fetch, by kind."),
    coalesced: registry.counter("stowage_cache_coalesced_total", "Blob requests that joined a fetch already in flight."),
    staleServed: registry.counter("stowage_stale_served_total", "Tags served from their last known digest because the upstream failed."),
    bytesFromCache: registry.counter("stowage_served_from_cache_bytes_total", "Blob bytes sent to clients from the store."),
    bytesFromUpstream: registry.counter("stowage_served_from_upstream_bytes_total", "Blob bytes sent to clients while being fetched."),
    upstreamBytes: registry.counter("stowage_upstream_received_bytes_total", "Blob bytes received from upstreams, by upstream."),
    upstreamRequests: registry.counter("stowage_upstream_requests_total", "Requests sent to upstreams, by upstream, kind and status.", {
      status: statusLabel,
    }),
    blobsCommitted: registry.counter("stowage_blobs_committed_total", "Blobs verified and committed to the store."),
    fetchFailures: registry.counter("stowage_blob_fetch_failures_total", "Blob fetches that failed, by reason."),
    resumes: registry.counter("stowage_upstream_resumes_total", "Broken upstream blob downloads resumed with a Range request."),
    storeErrors: registry.counter("stowage_store_errors_total", "Blob store operations that failed, by operation."),
    storeBypass: registry.counter(
      "stowage_store_bypass_total",
      "Blob fetches or reads that went straight from upstream to clients because the store failed, by operation (read, write).",
    ),
    leaseWaits: registry.counter("stowage_lease_waits_total", "Blob misses that waited for another instance's fetch instead of fetching."),
    inflight: registry.gauge("stowage_inflight_fetches", "Blob fetches from upstream in progress."),
    // Set by the collector after each run (src/gc/collector.ts), from the KV records and the store's listing.
    storeBytes: registry.gauge("stowage_store_bytes", "Bytes in the blob store (blobs and manifests), as of the last collection."),
    storeObjects: registry.gauge("stowage_store_objects", "Objects in the blob store (blobs and manifests), as of the last collection."),
    gcRemoved: registry.counter(
      "stowage_gc_removed_total",
      "Tags, manifests and blobs the collector removed, by reason (ttl, size, purge, orphan, missing).",
      { reason: gcReasonLabel },
    ),
    gcRemovedBytes: registry.counter("stowage_gc_removed_bytes_total", "Store bytes the collector freed, by reason.", { reason: gcReasonLabel }),
    gcLastRun: registry.gauge("stowage_gc_last_run_timestamp_seconds", "When the last collection (not a dry run) ended, seconds since epoch."),
    gcLastDuration: registry.gauge("stowage_gc_last_run_duration_seconds", "How long the last collection (not a dry run) took."),
    rateLimitRemaining: registry.gauge("stowage_upstream_ratelimit_remaining", "Last ratelimit-remaining an upstream reported, by upstream."),
  };
}

export type StowageMetrics = ReturnType<typeof createStowageMetrics>;
