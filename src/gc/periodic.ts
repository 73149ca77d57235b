/**
 * When the server runs the collector: once at start-up (even with no limit, to clear what a
 * crash left: records whose objects are missing, objects without records), every
 * --gc-interval when --cache-ttl or --max-size is set (the first time a minute after start),
 * and when a download found the disk short of room (a size pass lowered far enough to free
 * what it needed plus the reserve). Never two runs at once in this process; across instances
 * the collector's lease decides. A failed run is logged, never thrown: the server serves on.
 */
import { formatBytes } from "../cache/blob-bounds.ts";
import type { Logger } from "../log.ts";
import type { CollectOptions, CollectReport } from "./collector.ts";
import { GC_LEASE_TTL_MS } from "./gc-lease.ts";

export type CollectorScheduleDeps = {
  collector: { run(options: CollectOptions): Promise<CollectReport> };
  log: Logger;
  /** --cache-ttl in ms; null: none. */
  cacheTtlMs: number | null;
  /** --max-size; null: none. */
  maxBytes: number | null;
  /** --gc-interval in ms. */
  intervalMs: number;
  /** Before the first periodic run; default a minute, so start-up is not slowed by it. */
  firstDelayMs?: number;
  /** --disk-reserve: what a disk-full pass frees on top of the bytes asked for. */
  reserveBytes: number;
  /** Free bytes on the store's disk; null when they cannot be told. */
  freeSpace: () => Promise<number | null>;
  /** When the start-up sweep found the lease held, how long until it tries again; default SWEEP_RETRY_MS. */
  sweepRetryMs?: number;
};

const FIRST_RUN_DELAY_MS = 60_000;
// A collector killed in the middle holds its lease until it expires (GC_LEASE_TTL_MS): the sweep
// that clears what it left must come soon after that, even with no periodic runs.
const SWEEP_RETRY_MS = Math.ceil(GC_LEASE_TTL_MS / 3);

export class CollectorSchedule {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private sweepTimer: ReturnType<typeof setTimeout> | null = null;
  private running: Promise<unknown> | null = null;
  private closed = false;

  constructor(private readonly deps: CollectorScheduleDeps) {}

  /** Whether limits are set, so that the collector runs every interval. */
  get periodic(): boolean {
    return this.deps.cacheTtlMs !== null || this.deps.maxBytes !== null;
  }

  /** The start-up sweep now (in the background), then the periodic runs if limits are set. */
  start(): void {
    this.sweep();
    if (this.periodic) this.schedule(this.deps.firstDelayMs ?? FIRST_RUN_DELAY_MS);
  }

  /** The start-up sweep, tried again while another instance (or a dead one's lease) holds the collector. */
  private sweep(): void {
    void this.runOnce("start-up", { cacheTtlMs: null, maxBytes: null }).then((report) => {
      if (report?.ran || this.closed) return;
      this.sweepTimer = setTimeout(() => this.sweep(), this.deps.sweepRetryMs ?? SWEEP_RETRY_MS);
      (this.sweepTimer as { unref?: () => void }).unref?.();
    });
  }

  /**
   * A download was served uncached for lack of disk space: make room so the next pull caches
   * again. Ignored while a run is in progress (it may be making the room already).
   */
  diskShort(neededBytes: number): void {
    if (this.closed || this.running) return;
    const run = this.makeRoom(neededBytes).catch((err: unknown) => {
      this.deps.log.warn("could not make room on a full disk", { error: err });
    });
    this.track(run);
  }

  /** Stops the timer and waits for a run in progress. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    this.timer = null;
    this.sweepTimer = null;
    await this.running?.catch(() => {});
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      const limits = { cacheTtlMs: this.deps.cacheTtlMs, maxBytes: this.deps.maxBytes };
      void (this.running ? Promise.resolve() : this.runOnce("schedule", limits)).finally(() => this.schedule(this.deps.intervalMs));
    }, delayMs);
    // A pending run must not keep a process alive that has nothing else to do.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** One collector run unless one is in progress; resolves when it ended (never rejects). */
  private runOnce(by: string, limits: { cacheTtlMs: number | null; maxBytes: number | null }): Promise<CollectReport | null> {
    if (this.closed || this.running) return Promise.resolve(null);
    const run = this.deps.collector.run({ ...limits, dryRun: false, by }).then(
      (report) => {
        this.logReport(by, report);
        return report;
      },
      (err: unknown) => {
        this.deps.log.warn("the collector failed; it runs again at the next interval", { by, error: err });
        return null;
      },
    );
    this.track(run);
    return run;
  }

  private track(run: Promise<unknown>): void {
    this.running = run;
    void run.finally(() => {
      if (this.running === run) this.running = null;
    });
  }

  /**
   * How far to shrink the store: a dry run tells its size, then a size pass down to that size
   * less what the disk lacks (needed + reserve - free), under the --max-size if there is one.
   */
  private async makeRoom(neededBytes: number): Promise<void> {
    const { log, reserveBytes } = this.deps;
    const free = await this.deps.freeSpace();
    const lacking = neededBytes + reserveBytes - (free ?? 0);
    const probe = await this.deps.collector.run({ cacheTtlMs: null, maxBytes: null, dryRun: true, by: "disk-full" });
    if (!probe.ran) return; // another instance is collecting
    const target = Math.max(0, probe.storeBytesBefore - Math.max(lacking, 0));
    const maxBytes = Math.min(target, this.deps.maxBytes ?? Infinity);
    log.info("the disk is short of room for a download: removing the least recently pulled content", {
      needed: formatBytes(neededBytes),
      free: free === null ? "unknown" : formatBytes(free),
      reserve: formatBytes(reserveBytes),
      store: formatBytes(probe.storeBytesBefore),
      target: formatBytes(maxBytes),
    });
    const report = await this.deps.collector.run({ cacheTtlMs: this.deps.cacheTtlMs, maxBytes, dryRun: false, by: "disk-full" });
    this.logReport("disk-full", report);
  }

  private logReport(by: string, report: CollectReport): void {
    if (!report.ran) {
      this.deps.log.info("the collector did not run: another instance holds its lease", { by });
      return;
    }
    this.deps.log.info("collector run finished", {
      by,
      removed: report.removed.length,
      freed: formatBytes(report.bytesFreed),
      store: formatBytes(report.storeBytesAfter),
      ms: report.durationMs,
    });
  }
}
