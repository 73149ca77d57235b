// What Stowage holds, checked where it keeps it: blob files in the fs store,
// records in its KV, figures on /metrics. Tests wait on these rather than on
// log lines, which are worded for operators and may change.
import type { Test } from "tap";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { kvKeys } from "../../src/kv/keys.ts";
import type { Digest } from "../../src/registry/reference.ts";
import type { InProcessStowage } from "./in-process-stowage.ts";
import { sha256 } from "./oci.ts";
import { waitFor } from "./wait.ts";

/** Where the fs store under `blobsRoot` keeps a committed blob. */
export function blobPath(blobsRoot: string, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return join(blobsRoot, "sha256", hex.slice(0, 2), hex);
}

export const exists = (path: string) => stat(path).then(() => true, () => false);

/** The store of an in-process Stowage holds a file under the digest. */
export const isStored = (stowage: InProcessStowage, digest: string) => exists(blobPath(join(stowage.dataDir, "blobs"), digest));

/** The store holds nothing under the digest, or exactly the right bytes. */
export async function storeHoldsOnlyVerified(t: Test, stowage: InProcessStowage, digest: string): Promise<void> {
  let bytes: Buffer | null = null;
  try {
    bytes = await readFile(blobPath(join(stowage.dataDir, "blobs"), digest));
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") throw err;
  }
  if (bytes) t.equal(sha256(bytes), digest, "the stored file has the right sha256");
  else t.pass("nothing is stored under the digest");
}

/** Upload temp files under `blobsRoot` are gone (given a moment) once a fetch has cleaned up. */
export async function noUploadsLeft(t: Test, blobsRoot: string): Promise<void> {
  const dir = join(blobsRoot, "_uploads");
  await waitFor("upload temp files removed", async () => (await readdir(dir)).length === 0, 5_000, 20).catch(() => {});
  t.same(await readdir(dir), [], "no upload temp files are left behind");
}

/** Resolves once Stowage recorded the blob as cached in its KV (the last step of a commit; the file is in the store before). */
export async function committed(stowage: InProcessStowage, digest: string): Promise<void> {
  const kv = await stowage.kv();
  await waitFor(`Stowage committing ${digest}`, async () => (await kv.get(kvKeys.blob(digest as Digest))).value !== null, 10_000, 10);
}

/** A counter's or gauge's value in Prometheus text: the first series of `name` whose labels include `labels`; 0 when absent. */
export function metricValue(text: string, name: string, labels = ""): number {
  const line = text.split("\n").find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

/** Reads one figure from Stowage's /metrics. */
export async function metric(stowage: { url: string }, name: string, labels = ""): Promise<number> {
  return metricValue(await (await fetch(`${stowage.url}/metrics`)).text(), name, labels);
}
