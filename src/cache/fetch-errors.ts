import { UpstreamError } from "../upstream/upstream-error.ts";
import { BlobTooLargeError } from "./blob-bounds.ts";

/** The upstream's bytes do not hash to the digest asked for: nothing is cached, every client's response fails. */
export class DigestMismatchError extends Error {}

/** The store failed while a blob was being written to it: the fetch fails (a failed commit only leaves it uncached). */
export class StoreError extends Error {}

/** The reason label of stowage_blob_fetch_failures_total. */
export function failureReason(err: unknown): string {
  if (err instanceof DigestMismatchError) return "digest-mismatch";
  if (err instanceof BlobTooLargeError) return "too-large";
  if (err instanceof StoreError) return "store";
  if (err instanceof UpstreamError) return err.failure;
  return "other";
}
