import { kvKeys, type LeaseKey } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Digest } from "../registry/reference.ts";
import { sleep } from "../util/deadline.ts";
import { LeaseRecord } from "./records.ts";

/** How long a lease lasts without renewal: a crashed holder delays the others at most this long. */
export const LEASE_TTL_MS = 15_000;
/** How often an instance waiting on another's lease looks for the stored blob. */
const LEASE_POLL_MS = 200;

/**
 * Leases in the shared KV, so that instances sharing a bucket fetch each blob
 * once: the instance holding a digest's lease downloads it, the others wait
 * for its commit and serve the blob from the store. A holder renews its lease
 * while the download runs; one that dies stops renewing, and another instance
 * takes over once the lease has expired.
 */
export class FetchLeases {
  constructor(
    private readonly kv: TypedKv,
    /** Unique per process. */
    readonly owner: string,
    private readonly ttlMs = LEASE_TTL_MS,
  ) {}

  /**
   * Takes the lease on `digest`, waiting while another instance holds it, or
   * "stored" once `stored()` says the blob is in the store. Checked after each
   * attempt: the instance waited for may have just stored it. `onWait` is
   * called once, when the wait begins.
   */
  async acquireUnlessStored(digest: Digest, log: Logger, stored: () => Promise<boolean>, onWait: () => void): Promise<HeldLease | "stored"> {
    let waiting = false;
    for (;;) {
      const lease = await this.tryAcquire(digest, log);
      if (await stored()) {
        await lease?.release();
        return "stored";
      }
      if (lease) return lease;
      if (!waiting) {
        waiting = true;
        onWait();
      }
      await sleep(LEASE_POLL_MS);
    }
  }

  /** Takes the lease on `digest`, or returns null while another instance holds a live one. */
  async tryAcquire(digest: Digest, log: Logger): Promise<HeldLease | null> {
    const key = kvKeys.lease(digest);
    const current = await this.kv.readVersioned(key, LeaseRecord);
    if (current.value && current.value.owner !== this.owner && current.value.expiresAt > Date.now()) return null;
    const versionstamp = await this.put(key, current.versionstamp);
    // Another instance took it between our read and write.
    if (versionstamp === null) return null;
    return new HeldLease(this, digest, versionstamp, log);
  }

  /** Compare-and-set of the lease record; the new versionstamp, or null if the record changed meanwhile. */
  async put(key: LeaseKey, expected: string | null): Promise<string | null> {
    const expiresAt = Date.now() + this.ttlMs;
    return this.kv.writeIfUnchanged(key, expected, { owner: this.owner, expiresAt } satisfies LeaseRecord, this.ttlMs * 4);
  }

  async remove(key: LeaseKey, expected: string): Promise<void> {
    await this.kv.removeIfUnchanged(key, expected);
  }

  get renewEveryMs(): number {
    return Math.floor(this.ttlMs / 3);
  }
}

/** A lease this instance holds; renews itself until released. */
export class HeldLease {
  private readonly timer: ReturnType<typeof setInterval>;
  private released = false;

  constructor(
    private readonly leases: FetchLeases,
    private readonly digest: Digest,
    private versionstamp: string,
    log: Logger,
  ) {
    this.timer = setInterval(() => {
      leases.put(kvKeys.lease(digest), this.versionstamp).then(
        (next) => {
          if (next !== null) this.versionstamp = next;
          else if (!this.released) {
            // Our renewals were late (a stalled process): another instance may now fetch too.
            // Both copies are verified and identical, so the store still ends with one good object.
            log.warn("lost the fetch lease to another instance; both may download this blob", { digest });
            clearInterval(this.timer);
          }
        },
        (err) => log.warn("could not renew the fetch lease in KV", { digest, error: err }),
      );
    }, leases.renewEveryMs);
    // A lease must not keep a stopping process alive.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Ends the lease so that waiting instances look at the store at once. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await this.leases.remove(kvKeys.lease(this.digest), this.versionstamp).catch(() => {});
  }
}
