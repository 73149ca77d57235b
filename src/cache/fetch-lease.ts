import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Digest } from "../registry/reference.ts";
import { sleep } from "../util/deadline.ts";
import { KvLease } from "./kv-lease.ts";

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
  tryAcquire(digest: Digest, log: Logger): Promise<HeldLease | null> {
    return KvLease.take(this.kv, kvKeys.lease(digest), this.owner, {
      ttlMs: this.ttlMs,
      log,
      // Our renewals were late (a stalled process): another instance may now fetch too.
      // Both copies are verified and identical, so the store still ends with one good object.
      lostMessage: "lost the fetch lease; another instance may download this blob too",
      context: { digest },
    });
  }
}

/** A lease this instance holds; renews itself until released. */
export type HeldLease = KvLease;
