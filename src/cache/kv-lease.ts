import type { KvKey, TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import { LeaseRecord } from "./records.ts";

export type KvLeaseOptions = {
  /** How long the record lasts without renewal: a crashed holder keeps others waiting at most this long. */
  ttlMs: number;
  /** The clock written into the record and compared by every instance; default Date.now. */
  now?: () => number;
  /** A clock for this process's own deadline that never jumps; default performance.now. */
  monotonic?: () => number;
  log: Logger;
  /** Logged (warn) when the lease is lost: what stops or what may happen twice. */
  lostMessage: string;
  /** Added to the log lines. */
  context?: Record<string, unknown>;
  /**
   * Once the deadline has passed, the lease is lost for good and no renewal is sent (the
   * collector: whatever it was doing stops). Otherwise renewals go on, and one that succeeds
   * makes the lease held again (a fetch lease keeps protecting its download).
   */
  lostAtDeadline?: boolean;
};

/**
 * A lease in the shared KV: one record {owner, expiresAt}, taken and renewed by
 * compare-and-set, so that among instances sharing the KV one holder acts at a time.
 *
 * The holder renews every ttl/4. Others may take the lease once `expiresAt` has passed on
 * their clock, so the holder counts itself as holding it only until ttl - ttl/4 after it
 * *sent* its last successful renewal: a holder that cannot renew (KV unreachable, or the
 * process stalled and its timers did not run) finds `held` false a quarter of the TTL before
 * anyone else can take over. That quarter covers an action begun just before the deadline and
 * modest clock differences between hosts. Unless `lostAtDeadline`, renewals go on after the
 * deadline: one that succeeds proves nobody took the lease meanwhile (any taker changes the
 * record), so `held` is true again. Once another owner has it, the lease is lost for good.
 */
export class KvLease {
  private readonly timer: ReturnType<typeof setInterval>;
  private validUntil: number;
  private lost = false;
  private released = false;
  private late = false;
  private renewing: Promise<void> | null = null;

  private constructor(
    private readonly kv: TypedKv,
    private readonly key: KvKey,
    private readonly owner: string,
    private readonly o: KvLeaseOptions,
    private versionstamp: string,
    sentAt: number,
  ) {
    this.validUntil = sentAt + this.heldFor();
    this.timer = setInterval(() => {
      if (this.renewing) return;
      this.renewing = this.renew().finally(() => (this.renewing = null));
    }, Math.max(1, Math.floor(o.ttlMs / 4)));
    // A lease must not keep a stopping process alive.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Takes the lease at `key`; null while another owner holds an unexpired one. */
  static async take(kv: TypedKv, key: KvKey, owner: string, o: KvLeaseOptions): Promise<KvLease | null> {
    const now = o.now ?? Date.now;
    const current = await kv.readVersioned(key, LeaseRecord);
    if (current.value && current.value.owner !== owner && current.value.expiresAt > now()) return null;
    const sentAt = (o.monotonic ?? performance.now.bind(performance))();
    const stamp = await write(kv, key, owner, o, current.versionstamp);
    // Another instance took it between our read and write.
    if (stamp === null) return null;
    return new KvLease(kv, key, owner, o, stamp, sentAt);
  }

  /**
   * Whether this process may act under the lease now. Checked right before each action: false
   * once another owner has it, and while the last successful renewal is too old.
   */
  get held(): boolean {
    if (this.lost || this.released) return false;
    if (this.clock() < this.validUntil) return true;
    if (this.o.lostAtDeadline) {
      this.lose("it could not be renewed in time");
      return false;
    }
    if (!this.late) {
      this.late = true;
      this.o.log.warn(this.o.lostMessage, { ...this.o.context, why: "it could not be renewed in time" });
    }
    return false;
  }

  /** Ends the lease so that waiting instances go ahead at once (a no-op if another owner has it). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    // A renewal in flight changes the versionstamp: remove the record only after it.
    await this.renewing;
    await this.kv.removeIfUnchanged(this.key, this.versionstamp).catch(() => {});
  }

  private async renew(): Promise<void> {
    // `held` notices a deadline that passed while the process stalled (and its timers did not run).
    if (this.lost || this.released || (this.o.lostAtDeadline && !this.held)) return;
    const sentAt = this.clock();
    try {
      const next = await write(this.kv, this.key, this.owner, this.o, this.versionstamp);
      // Kept even when released meanwhile: release() removes the record by this versionstamp.
      if (next !== null) this.versionstamp = next;
      if (this.lost || this.released) return;
      if (next === null) return this.lose("another instance took it");
      this.validUntil = Math.max(this.validUntil, sentAt + this.heldFor());
      this.late = false;
    } catch (err) {
      this.o.log.warn("could not renew a lease in KV; trying again", { ...this.o.context, error: err });
    }
  }

  private lose(why: string): void {
    if (this.lost) return;
    this.lost = true;
    clearInterval(this.timer);
    this.o.log.warn(this.o.lostMessage, { ...this.o.context, why });
  }

  /** How long after sending a successful write this holder may still act. */
  private heldFor(): number {
    return this.o.ttlMs - Math.floor(this.o.ttlMs / 4);
  }

  private clock(): number {
    return (this.o.monotonic ?? performance.now.bind(performance))();
  }
}

/** Compare-and-set of the lease record; the new versionstamp, or null if the record changed meanwhile. */
function write(kv: TypedKv, key: KvKey, owner: string, o: KvLeaseOptions, expected: string | null): Promise<string | null> {
  const record: LeaseRecord = { owner, expiresAt: (o.now ?? Date.now)() + o.ttlMs };
  // The KV drops the record itself well after it expired, should nobody remove it.
  return kv.writeIfUnchanged(key, expected, record, o.ttlMs * 4);
}
