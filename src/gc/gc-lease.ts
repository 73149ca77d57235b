import { LeaseRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";

/** How long the collector lease lasts without renewal: a crashed collector holds up the next one at most this long. */
export const GC_LEASE_TTL_MS = 60_000;

/**
 * The collector lease: one record in the shared KV, taken and renewed by compare-and-set,
 * so that with several instances on one KV a single collection runs at a time.
 */
export class GcLease {
  private timer: ReturnType<typeof setInterval> | null = null;
  private versionstamp: string | null = null;
  /** False once a renewal found another owner (this process stalled past the lease): stop removing. */
  held = false;

  constructor(
    private readonly kv: TypedKv,
    private readonly owner: string,
    private readonly now: () => number,
    private readonly log: Logger,
    private readonly ttlMs = GC_LEASE_TTL_MS,
  ) {}

  /** Takes the lease; false while another instance holds an unexpired one. */
  async acquire(): Promise<boolean> {
    const key = kvKeys.gcLease();
    const current = await this.kv.readVersioned(key, LeaseRecord);
    if (current.value && current.value.owner !== this.owner && current.value.expiresAt > this.now()) return false;
    this.versionstamp = await this.put(current.versionstamp);
    if (this.versionstamp === null) return false;
    this.held = true;
    this.timer = setInterval(() => void this.renew(), Math.floor(this.ttlMs / 3));
    (this.timer as { unref?: () => void }).unref?.();
    return true;
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const stamp = this.versionstamp;
    this.versionstamp = null;
    if (this.held && stamp) await this.kv.removeIfUnchanged(kvKeys.gcLease(), stamp).catch(() => {});
    this.held = false;
  }

  private async renew(): Promise<void> {
    if (!this.held || this.versionstamp === null) return;
    try {
      const next = await this.put(this.versionstamp);
      if (next !== null) this.versionstamp = next;
      else {
        this.held = false;
        this.log.warn("lost the collector lease to another instance; this collection stops", {});
      }
    } catch (err) {
      this.log.warn("could not renew the collector lease in KV", { error: err });
    }
  }

  private put(expected: string | null): Promise<string | null> {
    const record: LeaseRecord = { owner: this.owner, expiresAt: this.now() + this.ttlMs };
    return this.kv.writeIfUnchanged(kvKeys.gcLease(), expected, record, this.ttlMs * 4);
  }
}
