import type { ByteRange } from "../registry/range.ts";
import type { Digest } from "../registry/reference.ts";

/**
 * Content-addressed storage for blobs and manifest bytes.
 *
 * Invariant: nothing is readable under a digest until the bytes behind it were
 * verified by the caller and `commit()` was called. Implementations make the
 * commit atomic (a reader sees the whole object or nothing).
 */
export interface BlobStore {
  /** What to tell the operator at start-up, e.g. `filesystem at /var/lib/stowage/blobs`. */
  readonly description: string;
  stat(digest: Digest): Promise<{ size: number } | null>;
  /** A stream of the stored bytes (or of one range of them); null when the store does not have the blob. */
  open(digest: Digest, range?: ByteRange): Promise<ReadableStream<Uint8Array> | null>;
  /** Stores small, already verified bytes (manifests) in one step. */
  put(digest: Digest, bytes: Uint8Array): Promise<void>;
  /** Starts an upload that becomes visible only on `commit()`. */
  begin(digest: Digest): Promise<BlobUpload>;
  /**
   * Removes the object under `digest`; no error when there is none. A reader
   * that already opened it either finishes (the filesystem keeps an unlinked
   * file readable while open) or fails with an error, never gets other bytes.
   */
  delete(digest: Digest): Promise<void>;
  /**
   * Every object in the store (not uploads in progress), with its size and
   * when it was written (ms since epoch), for the collector's sweep. Objects
   * under names that are not digests are skipped.
   */
  list(): AsyncIterable<StoredObject>;
  /** Throws when the store cannot be used (for /readyz). */
  check(): Promise<void>;
  /**
   * Bytes still free on the local disk uploads are written to (the store
   * itself, or the spool of a remote store), so a download can be left
   * uncached before it fills the disk. Null when there is no local disk or
   * the runtime cannot tell.
   */
  freeSpace(): Promise<number | null>;
}

export type StoredObject = { digest: Digest; size: number; modifiedAt: number };

export interface BlobUpload {
  /**
   * Appends bytes; resolves when they can be read back through a reader.
   * Callers may start the next write before this one resolves: bytes land in
   * call order (the position is fixed at the call).
   */
  write(chunk: Uint8Array): Promise<void>;
  /**
   * A reader of the bytes written so far, so that clients joining an in-flight
   * fetch are fed from the store instead of from memory. It stays usable after
   * commit or abort until closed. Null where there is no local disk to keep
   * them (S3 on Deno Deploy): clients behind the fetch's memory window then
   * continue from the store after the commit.
   */
  openReader(): Promise<PartialReader | null>;
  /**
   * The local file the written bytes are in (each `write` resolves once its bytes can be read
   * there), for a digest worker to hash them from; null where there is none (S3 without a spool).
   */
  readonly spoolPath: string | null;
  /** Makes the blob visible under its digest. Call only after verifying it. */
  commit(): Promise<void>;
  /** Discards everything written; safe to call more than once, and after a failed commit. */
  abort(): Promise<void>;
}

export interface PartialReader {
  /**
   * Reads up to `length` bytes at `offset` of what has been written: into `into` when given (at
   * least `length` bytes long; the result is a view of it), else into fresh memory.
   */
  read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}
