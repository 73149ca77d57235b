// What export and import share: reading small objects back from the store, hashing them, the
// annotation that says which index children a bundle leaves out on purpose, and how the walks
// name the parts of an image in what they report.
import { formatPlatform, type Descriptor } from "../registry/manifest-refs.ts";
import { digestAlgorithm, parseDigest, type Digest } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { hex } from "../util/encoding.ts";

/** Registries refuse manifests above 4 MiB; a bundle's manifests are held to the same. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * On an image's index.json entry: the digests of index children (platforms) the exporting
 * cache never pulled, comma-separated. Import accepts exactly these as absent; any other
 * missing child fails the image.
 */
export const ABSENT_ANNOTATION = "dev.stowage.bundle.absent-manifests";

/** The bytes of a small stored object when it has exactly `size` bytes; null when absent or of another size. */
export async function readStoredBytes(store: BlobStore, digest: Digest, size: number): Promise<Uint8Array | null> {
  if (size > MAX_MANIFEST_BYTES) return null;
  const stream = await store.open(digest);
  if (!stream) return null;
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  return bytes.byteLength === size ? bytes : null;
}

/** Whether `bytes` hash to `digest` (with the digest's own algorithm). */
export async function bytesMatch(bytes: Uint8Array, digest: Digest): Promise<boolean> {
  return (await digestOfBytes(bytes, digestAlgorithm(digest))) === digest;
}

export async function digestOfBytes(bytes: Uint8Array, algorithm: "sha256" | "sha512"): Promise<Digest> {
  const hash = await crypto.subtle.digest(algorithm === "sha256" ? "SHA-256" : "SHA-512", bytes as Uint8Array<ArrayBuffer>);
  const digest = parseDigest(`${algorithm}:${hex(new Uint8Array(hash))}`);
  if (!digest) throw new Error("computed digest failed to parse");
  return digest;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** An index child as a walk names it: its platform, or its digest when it has none. */
export function describeChild(d: Descriptor): string {
  return d.platform ? formatPlatform(d.platform) : `manifest ${d.digest}`;
}

/** A manifest's blob by its place in manifestRefs' list: the config comes first, then the layers. */
export function describeBlob(index: number, digest: Digest): string {
  return `${index === 0 ? "config" : "layer"} ${digest}`;
}
