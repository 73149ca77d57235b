/**
 * The size of a cached image for the admin page: its manifest plus the config and layers it
 * lists; for an index, every platform manifest cached in the repository with its blobs (each
 * blob counted once). Read from the stored manifest bytes only for the rows on the page, and
 * remembered by digest: a digest's content never changes.
 */
import { ManifestRecord } from "../cache/records.ts";
import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import { isIndexMediaType, type ManifestMediaType } from "../registry/media-types.ts";
import { manifestRefs } from "../registry/manifest-refs.ts";
import { MAX_MANIFEST_BYTES } from "../registry/manifest-shape.ts";
import type { Digest } from "../registry/reference.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { readLimited } from "../util/streams.ts";

const REMEMBERED = 20_000;

export type ImageSize = { bytes: number; platforms: number } | null;

export class ImageSizes {
  /** Image manifests by digest: their own size and their blobs. Insertion order serves as LRU order. */
  private readonly images = new Map<Digest, { size: number; blobs: Array<{ digest: Digest; size: number }> } | null>();

  constructor(private readonly kv: TypedKv, private readonly store: BlobStore) {}

  /** Null when the manifest cannot be read (gone from the store, damaged). */
  async of(upstream: string, repo: string, digest: Digest, mediaType: ManifestMediaType): Promise<ImageSize> {
    if (!isIndexMediaType(mediaType)) {
      const image = await this.image(digest, mediaType);
      return image === null ? null : { bytes: image.size + sum(image.blobs), platforms: 1 };
    }
    const bytes = await this.read(digest);
    if (bytes === null) return null;
    let children;
    try {
      children = manifestRefs(bytes, mediaType).children;
    } catch {
      return null;
    }
    let total = bytes.byteLength;
    let platforms = 0;
    const seen = new Set<Digest>();
    for (const child of children) {
      const record = await this.kv.read(kvKeys.manifest(upstream, repo, child.digest), ManifestRecord);
      if (!record) continue; // a platform nobody pulled through this cache
      const image = isIndexMediaType(record.mediaType) ? null : await this.image(child.digest, record.mediaType);
      if (!image) continue;
      platforms++;
      total += image.size;
      for (const b of image.blobs) {
        if (seen.has(b.digest)) continue;
        seen.add(b.digest);
        total += b.size;
      }
    }
    return { bytes: total, platforms };
  }

  private async image(digest: Digest, mediaType: ManifestMediaType) {
    if (this.images.has(digest)) {
      const known = this.images.get(digest)!;
      this.images.delete(digest);
      this.images.set(digest, known);
      return known;
    }
    const bytes = await this.read(digest);
    let found: { size: number; blobs: Array<{ digest: Digest; size: number }> } | null = null;
    if (bytes !== null) {
      try {
        const blobs = manifestRefs(bytes, mediaType).blobs;
        const unique = new Map(blobs.map((b) => [b.digest, b.size]));
        found = { size: bytes.byteLength, blobs: [...unique].map(([d, size]) => ({ digest: d, size })) };
      } catch {
        found = null;
      }
    }
    // Only found ones are remembered: a missing manifest may be pulled again meanwhile.
    if (found) {
      this.images.set(digest, found);
      if (this.images.size > REMEMBERED) this.images.delete(this.images.keys().next().value!);
    }
    return found;
  }

  private async read(digest: Digest): Promise<Uint8Array | null> {
    const stream = await this.store.open(digest).catch(() => null);
    if (!stream) return null;
    return readLimited(new Response(stream), MAX_MANIFEST_BYTES).catch(() => null);
  }
}

function sum(blobs: Array<{ size: number }>): number {
  return blobs.reduce((n, b) => n + b.size, 0);
}
