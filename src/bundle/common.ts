// What export and import share: checking small objects against their digest, the
// annotation that says which index children a bundle leaves out on purpose, and how the walks
// name the parts of an image in what they report.
import { formatPlatform, type Descriptor } from "../registry/manifest-refs.ts";
import { digestOfBytes } from "../digest/digest-bytes.ts";
import { digestAlgorithm, type Digest } from "../registry/reference.ts";

/**
 * On an image's index.json entry: the digests of index children (platforms) the exporting
 * cache never pulled, comma-separated. Import accepts exactly these as absent; any other
 * missing child fails the image.
 */
export const ABSENT_ANNOTATION = "dev.stowage.bundle.absent-manifests";

/** Whether `bytes` hash to `digest` (with the digest's own algorithm). */
export async function bytesMatch(bytes: Uint8Array, digest: Digest): Promise<boolean> {
  return (await digestOfBytes(bytes, digestAlgorithm(digest))) === digest;
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
