import { MAX_MANIFEST_BYTES } from "../registry/manifest-shape.ts";
import type { Digest } from "../registry/reference.ts";
import { readLimited } from "../util/streams.ts";
import type { BlobStore } from "./blob-store.ts";

/**
 * The bytes of a small stored object (a manifest, a referrers list) whose record says it has
 * `size` bytes; null when the store lacks it, it has another size, or the record claims more
 * than a manifest may have (nothing larger is read into memory).
 */
export async function readStoredBytes(store: BlobStore, digest: Digest, size: number): Promise<Uint8Array<ArrayBuffer> | null> {
  if (size > MAX_MANIFEST_BYTES) return null;
  const stream = await store.open(digest);
  if (!stream) return null;
  const bytes = await readLimited(new Response(stream), size);
  return bytes !== null && bytes.byteLength === size ? bytes : null;
}
