/**
 * The bounds on a blob download (see blob-fetch.ts): its size (--max-blob-size)
 * and the free disk space spooling must leave (--disk-reserve).
 */
import { RegistryError } from "../registry/errors.ts";
import type { Digest } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";

export const DEFAULT_MAX_BLOB_BYTES = 32 * 1024 ** 3;
export const DEFAULT_DISK_RESERVE_BYTES = 512 * 1024 ** 2;
/** Free space is looked at again after this many bytes were spooled (a statfs call is cheap; a full disk is not). */
export const DISK_CHECK_BYTES = 64 * 1024 ** 2;

/**
 * A blob above --max-blob-size. A RegistryError, so a client asking before any
 * byte was sent gets it as is (403 DENIED: a retry cannot succeed); once the
 * body has started (no Content-Length), the response breaks and this goes to the log.
 */
export class BlobTooLargeError extends RegistryError {
  constructor(message: string) {
    super("DENIED", message, { status: 403 });
  }
}

/** "1.5 GiB": sizes in messages an operator reads. */
export function formatBytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} bytes` : `${Number(value.toFixed(1))} ${units[unit]}`;
}

/**
 * Refuses a declared length above the cap before any byte is read; `what`
 * names the blob, `outcome` ends the message ("it was not downloaded").
 */
export function refuseDeclaredSize(what: string, size: number | null, maxBytes: number, outcome: string): void {
  if (size !== null && size > maxBytes) {
    throw new BlobTooLargeError(`${what} is ${formatBytes(size)}, more than this Stowage's --max-blob-size of ${formatBytes(maxBytes)}; ${outcome}`);
  }
}

/** Bytes received so far against the announced length and the cap: throws once past either. */
export function checkReceivedBytes(
  received: number,
  size: number | null,
  maxBytes: number,
  blob: { upstream: string; repo: string; digest: Digest },
): void {
  if (size !== null && received > size) {
    throw new UpstreamError("bad-response", `upstream ${blob.upstream} sent more than the ${size} bytes it announced for ${blob.digest}`);
  }
  if (received > maxBytes) {
    // Only without a Content-Length (a declared one was refused before): the clients' responses break, nothing is kept.
    throw new BlobTooLargeError(
      `upstream ${blob.upstream} sent more than this Stowage's --max-blob-size of ${formatBytes(maxBytes)} for ${blob.digest} of ${blob.repo} without announcing a length; the download was cut off and nothing was cached`,
    );
  }
}

/** How far a download spooling to disk has come: its announced size (null: none) and the bytes written. */
export type SpoolProgress = { readonly size: number | null; readonly written: number };

/** Why spooling stops (or never starts) for lack of disk space: the figures, for the log. */
export type Shortage = Record<string, unknown>;

/**
 * Downloads spooling to each store's disk right now: a new download counts
 * the bytes they announced and have not written yet as taken, so parallel
 * pulls that each fit alone cannot fill the disk together.
 */
const spooling = new WeakMap<BlobStore, Set<SpoolProgress>>();

/**
 * One download's use of the disk its store spools to: checked before spooling
 * starts and every `checkBytes` while it goes on, so it stops before the free
 * space falls under the reserve.
 */
export class SpoolRoom {
  /** Where spooling stopped for lack of disk space (bytes from there on are not in the store); null while it goes on. */
  stoppedAt: number | null = null;
  /** Why spooling stopped, for the log line at the end. */
  shortage: Shortage | null = null;
  private checkedAt = 0;
  private checking = false;

  constructor(
    private readonly store: BlobStore,
    private readonly download: SpoolProgress,
    private readonly opts: { reserveBytes?: number; checkBytes?: number },
  ) {}

  /** Before spooling: short if the whole announced size would not fit beside what other downloads still have to write. */
  shortAtStart(): Promise<Shortage | null> {
    return this.shortOfSpace(this.download.size ?? 0, true);
  }

  /** The download spools now: others starting count what it still has to write. */
  enter(): void {
    this.spoolers.add(this.download);
  }

  leave(): void {
    this.spoolers.delete(this.download);
  }

  /** Spooling stops at offset `at`: no more bytes go to the store. */
  stop(at: number, short: Shortage): void {
    this.stoppedAt = at;
    this.shortage = short;
    this.leave();
  }

  /** Call as bytes are written: every `checkBytes` while spooling, looks at the free space again and calls `onShort` if it ran short. */
  watch(onShort: (short: Shortage) => void): void {
    const { written, size } = this.download;
    if (this.stoppedAt !== null || this.checking || written - this.checkedAt < (this.opts.checkBytes ?? DISK_CHECK_BYTES)) return;
    this.checkedAt = written;
    this.checking = true;
    const left = size === null ? 0 : Math.max(0, size - written);
    this.shortOfSpace(left, false)
      .then((short) => {
        if (short && this.stoppedAt === null) onShort(short);
      })
      .catch(() => {})
      .finally(() => {
        this.checking = false;
      });
  }

  private get spoolers(): Set<SpoolProgress> {
    let set = spooling.get(this.store);
    if (!set) spooling.set(this.store, (set = new Set()));
    return set;
  }

  /**
   * Whether spooling `needed` more bytes would leave less free disk space than
   * the reserve: the details for the log if so, null if there is room or
   * the free space cannot be told. At the start (`admitting`), the bytes other
   * downloads announced and have not written yet count as taken.
   */
  private async shortOfSpace(needed: number, admitting: boolean): Promise<Shortage | null> {
    const free = await this.store.freeSpace().catch(() => null);
    if (free === null) return null;
    const reserve = this.opts.reserveBytes ?? DEFAULT_DISK_RESERVE_BYTES;
    let promised = 0;
    if (admitting) {
      for (const other of this.spoolers) {
        if (other !== this.download && other.size !== null) promised += Math.max(0, other.size - other.written);
      }
    }
    if (free - promised - needed >= reserve) return null;
    return {
      free: formatBytes(free),
      ...(needed > 0 ? { needed: formatBytes(needed) } : {}),
      ...(promised > 0 ? { promisedToOtherDownloads: formatBytes(promised) } : {}),
      reserve: formatBytes(reserve),
    };
  }
}
