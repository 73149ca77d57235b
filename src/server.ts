import type { App } from "./http/app.ts";
import { keepingRecentErrors, RecentErrors } from "./admin/recent-errors.ts";
import { AccessControl } from "./auth/access.ts";
import { startPasswordChecks } from "./auth/password-checks.ts";
import { redactedConfig } from "./config/redact.ts";
import type { Config } from "./config/types.ts";
import { createHandler } from "./http/handler.ts";
import { CollectorSchedule } from "./gc/periodic.ts";
import { describeKv } from "./kv/open.ts";
import type { Logger } from "./log.ts";
import type { Runtime } from "./runtime/runtime.ts";
import { openServices } from "./services.ts";

export type RunningServer = { url: string; close(): Promise<void> };

/** Assembles the app from the configuration and starts listening. */
export async function startServer(config: Config, runtime: Runtime, baseLog: Logger): Promise<RunningServer> {
  // Every warning and error is also kept (the last 100) for the admin page's "recent errors".
  const recentErrors = new RecentErrors();
  const log = keepingRecentErrors(baseLog, recentErrors);
  // A download served uncached for lack of disk space asks the collector for room (set once it
  // exists). Only where the store is that disk: with S3 the disk is a spool, which removing
  // objects from the bucket would not free.
  let schedule: CollectorSchedule | null = null;
  const hooks = config.storage.kind === "fs" ? { onDiskShort: (needed: number) => schedule?.diskShort(needed) } : {};
  const services = await openServices(config, runtime, log, hooks);
  const { kv, store, hashers, clients, metrics, manifests, blobs, kvLocation } = services;
  const access = config.access
    ? new AccessControl({
      access: config.access,
      upstreams: config.upstreams,
      defaultUpstream: config.defaultUpstream,
      publicUrl: config.publicUrl,
      kv,
      log,
      // bcrypt in a worker thread, so failed logins cannot hold up the event loop.
      passwords: await startPasswordChecks(runtime.spawnWorker, log),
    })
    : undefined;
  // The first start creates the signing key; doing it now surfaces KV problems before any client waits on them.
  await access?.keys.ensure();
  if (config.access && config.publicUrl === null) {
    log.warn(
      "access control is on without --public-url: the token service URL in 401 challenges (the realm) then follows each request's Host header, " +
        "which a client or a proxy in between controls, so a client can be sent to another host for its token (with its credentials); " +
        "set --public-url (STOWAGE_PUBLIC_URL) to the URL clients use to reach this Stowage, e.g. --public-url https://stowage.internal:5000",
    );
  }
  if (config.access && config.access.identities.length === 0 && !config.access.rules.some((r) => r.pull.includes("anonymous"))) {
    log.warn("access control is on, but there are no users or robots and no rule lets anonymous clients pull: every pull will be refused; add users (--htpasswd or users: in the config file) or rules");
  }
  const app: App = {
    settings: {
      upstreams: config.upstreams,
      defaultUpstream: config.defaultUpstream,
      separateMetricsListener: config.metricsListen !== null,
      adminPage: config.adminPage,
      maxSizeBytes: config.maxSizeBytes,
    },
    clients,
    kv,
    store,
    log,
    metrics,
    manifests,
    blobs,
    referrers: services.referrers,
    collector: services.collector,
    usage: services.usage,
    recentErrors,
    ...(access ? { access } : {}),
  };

  const listening = await runtime.serve(createHandler(app), config.listen, {
    clientTimeoutMs: config.clientTimeoutSeconds * 1000,
    onClientTimeout: () => log.warn("closed a connection on which nothing moved for --client-timeout", { seconds: config.clientTimeoutSeconds }),
  });
  const url = `http://${listening.hostname.includes(":") ? `[${listening.hostname}]` : listening.hostname}:${listening.port}`;
  // --metrics-listen: /metrics (and /healthz) on their own address, off the public listener.
  const metricsListening = config.metricsListen
    ? await runtime.serve(createHandler(app, "metrics"), config.metricsListen, { clientTimeoutMs: config.clientTimeoutSeconds * 1000 })
    : null;
  if (metricsListening) log.info("serving /metrics and /healthz on a separate listener", {
    url: `http://${metricsListening.hostname.includes(":") ? `[${metricsListening.hostname}]` : metricsListening.hostname}:${metricsListening.port}`,
  });
  // The start-up sweep (what a crash left), then --cache-ttl and --max-size every --gc-interval.
  schedule = new CollectorSchedule({
    collector: services.collector,
    log,
    cacheTtlMs: config.cacheTtlSeconds === null ? null : config.cacheTtlSeconds * 1000,
    maxBytes: config.maxSizeBytes,
    intervalMs: config.gcIntervalSeconds * 1000,
    ...(config.gcIntervalSeconds < 60 ? { firstDelayMs: config.gcIntervalSeconds * 1000 } : {}),
    reserveBytes: config.diskReserveBytes,
    freeSpace: () => store.freeSpace().catch(() => null),
  });
  schedule.start();
  log.info("stowage is serving", {
    url,
    runtime: runtime.name,
    store: store.description,
    kv: describeKv(kvLocation),
    hashing: hashers.mode === "worker" ? "sha256 in worker threads" : "sha256 inline (no worker threads)",
    accessControl: describeAccess(config),
    config: redactedConfig(config),
  });

  return {
    url,
    async close() {
      await listening.close();
      await metricsListening?.close();
      await schedule?.close();
      await access?.close();
      await services.close();
    },
  };
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
