import { KvLease } from "../cache/kv-lease.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";

/**
 * How long the collector lease lasts without renewal: after a collector crashed, the next one
 * (a restarted server's start-up sweep, `stowage gc`) can start at most this long later.
 */
export const GC_LEASE_TTL_MS = 15_000;

/** Thrown by `check()` once the lease is no longer held: the collection stops where it is. */
export class GcLeaseLost extends Error {
  constructor() {
    super("the collector lease was lost (renewals failed or came too late); this collection stopped");
  }
}

/**
 * The collector lease: one record in the shared KV, so that with several instances on one KV
 * a single collection runs at a time. Renewed while held (see KvLease); the collector calls
 * `check()` right before every removal, so a collector that could not renew, or stalled past
 * its lease, removes nothing more before another instance may take over.
 */
export class GcLease {
  private lease: KvLease | null = null;

  constructor(
    private readonly kv: TypedKv,
    private readonly owner: string,
    private readonly now: () => number,
    private readonly log: Logger,
    private readonly ttlMs = GC_LEASE_TTL_MS,
    /** This process's deadline clock (tests simulate a stall with it); default performance.now. */
    private readonly monotonic?: () => number,
  ) {}

  /** False once the lease was lost, or before it was taken. */
  get held(): boolean {
    return this.lease?.held ?? false;
  }

  /** Throws GcLeaseLost unless the lease is still held. */
  check(): void {
    if (!this.held) throw new GcLeaseLost();
  }

  /** Takes the lease; false while another instance holds an unexpired one. */
  async acquire(): Promise<boolean> {
    this.lease = await KvLease.take(this.kv, kvKeys.gcLease(), this.owner, {
      ttlMs: this.ttlMs,
      now: this.now,
      monotonic: this.monotonic,
      log: this.log,
      lostMessage: "lost the collector lease; this collection stops removing",
      lostAtDeadline: true,
    });
    return this.lease !== null;
  }

  async release(): Promise<void> {
    await this.lease?.release();
  }
}
