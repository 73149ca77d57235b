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
  /**
   * For a hasher created with a file: bytes [0, upTo) of it are written (and readable), hash
   * them from there. Calls come in order, and all of them before any `update` (whose bytes
   * follow the file's).
   */
  fileWritten?(upTo: number): void;
  /** The hex digest of everything passed to `update`. */
  finish(): Promise<string>;
  discard(): void;
}

export interface HasherFactory {
  /** "worker" or "inline", for the start-up log and /metrics. */
  readonly mode: "worker" | "inline";
  /**
   * Whether `create` takes a file: the bytes are then read from it as `fileWritten` says they
   * are there (by the digest worker, so they are never copied or posted on the calling thread).
   */
  readonly readsFiles: boolean;
  /** A hasher; with `file` (only where `readsFiles`), one that reads the bytes from that file. */
  create(algorithm: DigestAlgorithm, file?: string): Hasher;
  close(): Promise<void>;
}

/** Hashes on the calling thread; the fallback where worker threads are absent (Deno Deploy). */
export class InlineHasherFactory implements HasherFactory {
  readonly mode = "inline" as const;
  readonly readsFiles = false;
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
