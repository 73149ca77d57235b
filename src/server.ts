import { join, resolve } from "node:path";
import type { App } from "./app.ts";
import { AccessControl } from "./auth/access.ts";
import { BlobCache } from "./cache/blob-cache.ts";
import { ManifestCache } from "./cache/manifest-cache.ts";
import { redactedConfig, type Config } from "./config.ts";
import { InlineHasherFactory, type HasherFactory } from "./digest/hasher.ts";
import { WorkerHasherFactory } from "./digest/worker-pool.ts";
import { createHandler } from "./http/handler.ts";
import { createStowageMetrics } from "./metrics/stowage-metrics.ts";
import { TypedKv } from "./kv/kv.ts";
import type { Logger } from "./log.ts";
import type { Runtime } from "./runtime/runtime.ts";
import type { BlobStore } from "./storage/blob-store.ts";
import { FsBlobStore } from "./storage/fs-store.ts";
import { UpstreamClient } from "./upstream/client.ts";
import { UpstreamTokenCache } from "./upstream/token-cache.ts";

/** The KV store of a data dir, for the operator commands that change auth state. */
export async function openStateKv(config: Config, runtime: Runtime): Promise<{ kv: TypedKv; close(): void }> {
  const raw = await runtime.openKv(join(resolve(config.dataDir), "kv.sqlite3"));
  return { kv: new TypedKv(raw), close: () => raw.close() };
}

export type RunningServer = { url: string; close(): Promise<void> };

/** Thrown for start-up problems the operator must fix; main prints the message and exits non-zero. */
export class StartupError extends Error {}

/** Assembles the app from the configuration and starts listening. */
export async function startServer(config: Config, runtime: Runtime, log: Logger): Promise<RunningServer> {
  const dataDir = resolve(config.dataDir);
  if (!(await runtime.canWrite(dataDir))) {
    throw new StartupError(`--data-dir ${dataDir} is not writable: choose a writable directory with --data-dir DIR`);
  }

  const rawKv = await runtime.openKv(join(dataDir, "kv.sqlite3"));
  const kv = new TypedKv(rawKv);
  const store = await openStore(config, dataDir, log);
  const hashers = await startHashers(runtime, log);

  const tokens = new UpstreamTokenCache(kv);
  const timeoutMs = config.upstreamTimeoutSeconds * 1000;
  const metrics = createStowageMetrics();
  const clients = new Map(config.upstreams.map((u) => [u.name, new UpstreamClient(u, { tokens, timeoutMs, metrics, concurrency: config.upstreamConcurrency })] as const));
  const access = config.access
    ? new AccessControl({ access: config.access, upstreams: config.upstreams, defaultUpstream: config.defaultUpstream, publicUrl: config.publicUrl, kv })
    : undefined;
  // The first start creates the signing key; doing it now surfaces KV problems before any client waits on them.
  await access?.keys.ensure();
  if (config.access && config.access.identities.length === 0 && !config.access.rules.some((r) => r.pull.includes("anonymous"))) {
    log.warn("access control is on, but there are no users or robots and no rule lets anonymous clients pull: every pull will be refused; add users (--htpasswd or users: in the config file) or rules");
  }
  const app: App = {
    config,
    clients,
    kv,
    store,
    log,
    metrics,
    manifests: new ManifestCache({ kv, store, metrics, tagTtlMs: config.tagTtlSeconds * 1000 }),
    blobs: new BlobCache({ kv, store, hashers, metrics, idleTimeoutMs: timeoutMs }),
    ...(access ? { access } : {}),
  };

  const listening = await runtime.serve(createHandler(app), config.listen, {
    clientTimeoutMs: config.clientTimeoutSeconds * 1000,
    onClientTimeout: () => log.warn("closed a connection on which nothing moved for --client-timeout", { seconds: config.clientTimeoutSeconds }),
  });
  const url = `http://${listening.hostname.includes(":") ? `[${listening.hostname}]` : listening.hostname}:${listening.port}`;
  log.info("stowage is serving", {
    url,
    runtime: runtime.name,
    store: store.description,
    kv: join(dataDir, "kv.sqlite3"),
    hashing: hashers.mode === "worker" ? "sha256 in worker threads" : "sha256 inline (no worker threads)",
    accessControl: describeAccess(config),
    config: redactedConfig(config),
  });

  return {
    url,
    async close() {
      await listening.close();
      await hashers.close();
      rawKv.close();
    },
  };
}

async function openStore(config: Config, dataDir: string, log: Logger): Promise<BlobStore> {
  const s = config.storage;
  if (s.kind === "fs") return FsBlobStore.open(join(dataDir, "blobs"));
  // Loaded only when used: the SDK is large and slows every start-up otherwise.
  const { S3BlobStore } = await import("./storage/s3-store.ts");
  const options = { bucket: s.bucket, prefix: s.prefix, endpoint: s.endpoint, region: s.region, spoolDir: join(dataDir, "s3-spool") };
  try {
    return await S3BlobStore.open(s.credentials ? { ...options, credentials: s.credentials } : options, log);
  } catch (err) {
    const why = err instanceof Error ? `${err.name}: ${err.message.split("\n")[0]}` : String(err);
    throw new StartupError(
      `--storage: cannot use S3 bucket ${s.bucket} at ${s.endpoint ?? `AWS ${s.region}`} (${why}); check the bucket name, endpoint and credentials`,
    );
  }
}

function describeAccess(config: Config): string {
  const a = config.access;
  if (!a) return "off: anonymous pulls are allowed for every configured upstream";
  const users = a.identities.length;
  const rules = a.rules.length;
  const anonymous = a.rules.some((r) => r.pull.includes("anonymous"));
  return (
    `on: pulls need a token from /token (service ${a.service}, tokens valid ${a.tokenTtlSeconds}s); ${users} identit${users === 1 ? "y" : "ies"}, ` +
    `${rules} rule${rules === 1 ? "" : "s"}; ${anonymous ? "some repositories allow anonymous pulls" : "anonymous clients may pull nothing"}`
  );
}

async function startHashers(runtime: Runtime, log: Logger): Promise<HasherFactory> {
  if (!runtime.spawnWorker) {
    log.info("worker threads are not available on this platform; hashing blobs inline");
    return new InlineHasherFactory();
  }
  try {
    return await WorkerHasherFactory.start(2, runtime.spawnWorker);
  } catch (err) {
    log.warn("could not start digest worker threads; hashing blobs inline", { error: err });
    return new InlineHasherFactory();
  }
}
