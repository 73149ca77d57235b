import type { Digest } from "../registry/reference.ts";

/**
 * A small in-memory LRU of manifest bytes by digest, so hot tags are served
 * without touching the store. Bounded by total bytes.
 */
export class ManifestBytesLru {
  private readonly entries = new Map<Digest, Uint8Array<ArrayBuffer>>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  get(digest: Digest): Uint8Array<ArrayBuffer> | undefined {
    const value = this.entries.get(digest);
    if (value) {
      this.entries.delete(digest);
      this.entries.set(digest, value);
    }
    return value;
  }

  set(digest: Digest, value: Uint8Array<ArrayBuffer>): void {
    if (value.byteLength > this.maxBytes / 4) return;
    const old = this.entries.get(digest);
    if (old) {
      this.entries.delete(digest);
      this.bytes -= old.byteLength;
    }
    this.entries.set(digest, value);
    this.bytes += value.byteLength;
    for (const [key, v] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(key);
      this.bytes -= v.byteLength;
    }
  }
}
