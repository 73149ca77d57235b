import { createHash } from "node:crypto";
import type { DigestAlgorithm } from "../registry/reference.ts";

/**
 * Incremental hashing of one blob. `update` copies what it needs, so the caller
 * may reuse or hand on the chunk as soon as the promise resolves; the promise
 * resolves early while the hashing backlog is small (pipelining), later when
 * it is not (backpressure).
 */
export interface Hasher {
  update(chunk: Uint8Array): Promise<void>;
  /** The hex digest of everything passed to `update`. */
  finish(): Promise<string>;
  discard(): void;
}

export interface HasherFactory {
  /** "worker" or "inline", for the start-up log and /metrics. */
  readonly mode: "worker" | "inline";
  create(algorithm: DigestAlgorithm): Hasher;
  close(): Promise<void>;
}

/** Hashes on the calling thread; the fallback where worker threads are absent (Deno Deploy). */
export class InlineHasherFactory implements HasherFactory {
  readonly mode = "inline" as const;
  create(algorithm: DigestAlgorithm): Hasher {
    let hash: ReturnType<typeof createHash> | null = createHash(algorithm);
    return {
      update(chunk) {
        hash?.update(chunk);
        return Promise.resolve();
      },
      finish() {
        if (!hash) return Promise.reject(new Error("hasher already finished"));
        const hex = hash.digest("hex");
        hash = null;
        return Promise.resolve(hex);
      },
      discard() {
        hash = null;
      },
    };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
