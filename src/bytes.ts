import { Buffer } from "node:buffer";

/**
 * `size` bytes of fresh memory that is NOT zeroed, for buffers the caller fills completely
 * before anyone reads them (batches, file reads, upload parts): zero-filling every new 1 MiB
 * buffer was ~5 % of the main thread's time in a cold pull. Never expose bytes not yet written.
 * Its `.buffer` is exactly `size` bytes (never a slice of a shared pool).
 */
export function unzeroedBytes(size: number): Uint8Array {
  return Buffer.allocUnsafeSlow(size);
}
