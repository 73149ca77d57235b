import { open } from "node:fs/promises";
import type { PartialReader } from "./blob-store.ts";

/**
 * Reads the bytes written so far to an upload's local file. It holds its own
 * descriptor, so it keeps reading the same inode after commit renames or
 * abort unlinks the file, until it is closed.
 */
export async function openSpoolReader(path: string): Promise<PartialReader> {
  const reader = await open(path, "r");
  return {
    async read(offset, length) {
      const buf = new Uint8Array(length);
      const { bytesRead } = await reader.read(buf, 0, length, offset);
      return bytesRead === length ? buf : buf.subarray(0, bytesRead);
    },
    close: () => reader.close(),
  };
}
