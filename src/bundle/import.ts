// `stowage import`: a bundle (an OCI image layout in a tar) into the store and the KV, as if
// its images had been pulled. Two passes: the tar is read once, each blob verified as it is
// written to the store (import-blobs.ts); then each image of index.json is walked and recorded
// only when all of it is verified (import-records.ts), so a cut or damaged bundle imports what
// is whole and names the rest. Safe next to a running server: the store commits atomically and
// records are plain KV writes of verified content.
import type { Logger } from "../log.ts";
import type { Progress } from "../progress/progress.ts";
import { readBundle, type BlobDeps } from "./import-blobs.ts";
import { recordBundle, type ImportedImage, type RecordDeps } from "./import-records.ts";

export type { ImportedImage } from "./import-records.ts";

export type ImportDeps = BlobDeps & RecordDeps;

export type ImportInput = { stream: ReadableStream<Uint8Array>; size: number | null };

export type ImportSummary = {
  images: ImportedImage[];
  /** Blobs and manifests committed to the store by this import. */
  blobsWritten: number;
  /** Entries the store already had (read past, not written again). */
  blobsSkipped: number;
  /** Bytes of the bundle read. */
  bytes: number;
  /** What is wrong with the bundle itself: truncation, damaged entries, a bad index.json. */
  problems: string[];
};

export async function importBundle(deps: ImportDeps, input: ImportInput, progress: Progress, log: Logger): Promise<ImportSummary> {
  // The bytes count on the bundle's item as they are read; each image gets its own item in the walk.
  const bundleItem = progress.item("bundle", input.size);
  const read = await readBundle(deps, input.stream, (n) => bundleItem.add(n), log);
  if (read.truncated) bundleItem.fail(read.truncated);
  else bundleItem.done();
  const { problems, blobsWritten, blobsSkipped, bytes } = read;
  const images = await recordBundle(deps, read, problems, progress, log);
  log.info("bundle imported", {
    images: images.filter((i) => i.status === "ok").length,
    failed: images.filter((i) => i.status === "failed").length,
    blobsWritten,
    blobsSkipped,
    bytes,
    problems: problems.length,
  });
  return { images, blobsWritten, blobsSkipped, bytes, problems };
}
