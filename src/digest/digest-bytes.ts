import { parseDigest, type Digest, type DigestAlgorithm } from "../registry/reference.ts";
import { hex } from "../util/encoding.ts";

/** The digest of a few bytes held in memory (a manifest, a referrers list), on the calling thread. */
export async function digestOfBytes(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): Promise<Digest> {
  const hash = await crypto.subtle.digest(algorithm === "sha256" ? "SHA-256" : "SHA-512", bytes as Uint8Array<ArrayBuffer>);
  const digest = parseDigest(`${algorithm}:${hex(new Uint8Array(hash))}`);
  if (!digest) throw new Error("computed digest failed to parse");
  return digest;
}
