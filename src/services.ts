/**
 * The cache's working parts, assembled from the configuration: the KV, the blob store, the
 * hash workers, one upstream client per upstream and the manifest and blob caches. The server
 * puts a listener in front of them; prefill, export and import use them with none, so every
 * command stores and records content exactly as a pull does.
 */
import { join, resolve } from "node:path";
import { BlobCache } from "./cache/blob-cache.ts";
import { FetchLeases } from "./cache/fetch-lease.ts";
import { ManifestCache } from "./cache/manifest-cache.ts";
import { ReferrersCache } from "./cache/referrers-cache.ts";
import { UsageRecorder } from "./cache/usage.ts";
import type { Config } from "./config/types.ts";
import { InlineHasherFactory, type HasherFactory } from "./digest/hasher.ts";
import { Collector } from "./gc/collector.ts";
import { WorkerHasherFactory } from "./digest/worker-pool.ts";
import { TypedKv, type Kv } from "./kv/kv.ts";
import type { KvLocation } from "./kv/location.ts";
import { KvOpenError, kvLocationFor, openKvAt } from "./kv/open.ts";
import type { Logger } from "./log.ts";
import { createStowageMetrics, type StowageMetrics } from "./metrics/stowage-metrics.ts";
import type { Runtime } from "./runtime/runtime.ts";
import type { BlobStore } from "./storage/blob-store.ts";
import { FsBlobStore } from "./storage/fs/fs-store.ts";
import { UpstreamClient } from "./upstream/client.ts";
import { createConnectGuard } from "./upstream/network-guard.ts";
import { UpstreamTokenCache } from "./upstream/token-cache.ts";

/** Thrown for start-up problems the operator must fix; main prints the message and exits non-zero. */
export class StartupError extends Error {}

export type CacheServices = {
  kv: TypedKv;
  store: BlobStore;
  hashers: HasherFactory;
  /** One client per configured upstream, by upstream name. */
  clients: Map<string, UpstreamClient>;
  metrics: StowageMetrics;
  manifests: ManifestCache;
  blobs: BlobCache;
  referrers: ReferrersCache;
  /** When content was last pulled (batched into KV), for expiry and size limits. */
  usage: UsageRecorder;
  /** Expiry, size limit, purges and the crash sweep (src/gc/collector.ts). */
  collector: Collector;
  kvLocation: KvLocation;
  close(): Promise<void>;
};

/** What the server adds to the services: a download served uncached for lack of disk space asks it for room. */
export type ServiceHooks = { onDiskShort?: (neededBytes: number) => void };

/** Opens everything a pull needs; the caller closes it. */
export async function openServices(config: Config, runtime: Runtime, log: Logger, hooks: ServiceHooks = {}): Promise<CacheServices> {
  // Before anything is opened: a setting this runtime cannot honour is a start-up error, not a leak.
  if (config.resolve.length > 0 && !runtime.pinsUpstreamAddresses) {
    throw new StartupError(
      `--resolve is not supported on ${runtime.name}, whose fetch resolves host names itself; put the names in /etc/hosts (or your DNS) instead, or run Stowage on Node`,
    );
  }
  const dataDir = resolve(config.dataDir);
  const diskWritable = await runtime.canWrite(dataDir);
  if (!diskWritable) {
    if (config.storage.kind === "fs") {
      throw new StartupError(
        `--data-dir ${dataDir} is not writable, and the filesystem store keeps blobs there: choose a writable directory with --data-dir DIR, ` +
          `or keep blobs in object storage with --storage s3://BUCKET (as on Deno Deploy)`,
      );
    }
    log.info("no writable disk: running diskless", {
      why: `--data-dir ${dataDir} cannot be written (read-only file system, deno run --deny-write, or Deno Deploy)`,
      effect: "blobs stream to S3 with no local spool; a client that falls more than a few MiB behind a download in progress continues from S3 once it is stored",
    });
  }

  const kvLocation = kvLocationFor(config.kv, config.dataDir, diskWritable);
  const rawKv = await openKvOrExplain(runtime, kvLocation);
  const kv = new TypedKv(rawKv);
  let store: BlobStore;
  try {
    store = await openStore(config, diskWritable ? dataDir : null, runtime, log);
  } catch (err) {
    rawKv.close();
    throw err;
  }
  if (diskWritable && (await store.freeSpace()) === null) {
    log.warn("free disk space cannot be read on this runtime (node:fs statfs is missing or refused): --disk-reserve is not enforced", { dataDir });
  }
  const hashers = startHashers(runtime, config.hashWorkers, log);

  const tokens = new UpstreamTokenCache(kv);
  /** This process, as the owner of fetch and collector leases in a KV shared by several instances. */
  const owner = crypto.randomUUID();
  const timeoutMs = config.upstreamTimeoutSeconds * 1000;
  const metrics = createStowageMetrics();
  const clients = new Map(
    config.upstreams.map((u) => {
      const fetch = runtime.upstreamFetch(createConnectGuard(u, config.resolve));
      return [u.name, new UpstreamClient(u, { tokens, timeoutMs, metrics, concurrency: config.upstreamConcurrency, fetch })] as const;
    }),
  );
  const usage = new UsageRecorder(kv);
  const manifests = new ManifestCache({ kv, store, metrics, tagTtlMs: config.tagTtlSeconds * 1000, usage });
  const referrers = new ReferrersCache({ kv, store, metrics, tagTtlMs: config.tagTtlSeconds * 1000 });
  const blobs = new BlobCache(
    {
      kv,
      store,
      hashers,
      metrics,
      upstreamTimeoutMs: timeoutMs,
      leases: new FetchLeases(kv, owner),
      maxBlobBytes: config.maxBlobBytes,
      diskReserveBytes: config.diskReserveBytes,
      ...(hooks.onDiskShort ? { onDiskShort: hooks.onDiskShort } : {}),
      usage,
    },
    config.clientTimeoutSeconds * 1000,
  );
  const collector = new Collector({
    kv,
    store,
    metrics,
    log,
    owner,
    busy: (digest) => blobs.busy(digest),
    upstreams: config.upstreams,
    graceMs: config.gcGraceSeconds * 1000,
  });
  return {
    kv,
    store,
    hashers,
    clients,
    metrics,
    manifests,
    blobs,
    referrers,
    usage,
    collector,
    kvLocation,
    async close() {
      // Pulls counted since the last batch go to KV before it closes.
      await usage.close().catch((err) => log.warn("could not write the last usage records to the KV", { error: err }));
      await hashers.close();
      rawKv.close();
    },
  };
}

/** The server's KV store alone, for the operator commands that change auth state. */
export async function openStateKv(config: Config, runtime: Runtime): Promise<{ kv: TypedKv; close(): void }> {
  const writable = config.kv !== null || (await runtime.canWrite(resolve(config.dataDir)));
  const raw = await openKvOrExplain(runtime, kvLocationFor(config.kv, config.dataDir, writable));
  return { kv: new TypedKv(raw), close: () => raw.close() };
}

async function openKvOrExplain(runtime: Runtime, location: KvLocation): Promise<Kv> {
  try {
    return await openKvAt(runtime, location);
  } catch (err) {
    if (err instanceof KvOpenError) throw new StartupError(err.message);
    throw err;
  }
}

/** `dataDir` null: no writable disk (S3 only, checked by the caller). */
async function openStore(config: Config, dataDir: string | null, runtime: Runtime, log: Logger): Promise<BlobStore> {
  const s = config.storage;
  if (s.kind === "fs") {
    if (dataDir === null) throw new Error("the filesystem store needs a writable data dir");
    return FsBlobStore.open(join(dataDir, "blobs"));
  }
  // The SDK warns on stderr (outside the JSON log) that its releases after January 2027 need
  // Node 22; Stowage pins a release that supports Node 20, so say it once, in the log.
  const nodeMajor = Number(/^v(\d+)/.exec(runtime.nodeVersion ?? "")?.[1] ?? 0);
  if (nodeMajor > 0 && nodeMajor < 22 && runtime.env().AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED === undefined) {
    runtime.setEnv("AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED", "true");
    log.info("the AWS SDK is pinned to a release that supports this Node; its releases after January 2027 need Node 22 or later", { node: runtime.nodeVersion });
  }
  // Loaded only when used: the SDK is large and slows every start-up otherwise.
  const { S3BlobStore } = await import("./storage/s3/s3-store.ts");
  const options = { bucket: s.bucket, prefix: s.prefix, endpoint: s.endpoint, region: s.region, spoolDir: dataDir === null ? null : join(dataDir, "s3-spool") };
  try {
    return await S3BlobStore.open(s.credentials ? { ...options, credentials: s.credentials } : options, log);
  } catch (err) {
    const why = err instanceof Error ? `${err.name}: ${err.message.split("\n")[0]}` : String(err);
    throw new StartupError(
      `--storage: cannot use S3 bucket ${s.bucket} at ${s.endpoint ?? `AWS ${s.region}`} (${why}); check the bucket name, endpoint and credentials`,
    );
  }
}

function startHashers(runtime: Runtime, workers: number, log: Logger): HasherFactory {
  if (workers === 0) {
    log.info("hashing blobs on the main thread, as --hash-workers is 0");
    return new InlineHasherFactory();
  }
  if (!runtime.spawnWorker) {
    log.info("worker threads are not available on this platform (as on Deno Deploy); hashing blobs on the main thread");
    return new InlineHasherFactory();
  }
  // Not waited for: the threads start with the first blob (the self-test's one meanwhile), and
  // stop again when idle. Should they fail to run here, the pool hashes inline from then on.
  return WorkerHasherFactory.open(workers, runtime.spawnWorker, (err) =>
    log.warn("could not start digest worker threads; hashing blobs inline", { error: err }),
  );
}
