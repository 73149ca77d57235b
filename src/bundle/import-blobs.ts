// Reading a bundle's tar for `stowage import`, once, front to back: each blob is hashed while
// it is written to a store upload and committed only when digest and size match; index.json and
// small JSON entries are kept for the walk that follows (import-records.ts). A cut or damaged
// tar keeps what was verified before the break and says what went wrong.
import type { HasherFactory } from "../digest/hasher.ts";
import type { Logger } from "../log.ts";
import { digestAlgorithm, digestHex, type Digest } from "../registry/reference.ts";
import type { BlobStore, BlobUpload } from "../storage/blob-store.ts";
import { BATCH_BYTES, BufferFiller, BufferPool } from "../util/buffers.ts";
import { parseJsonBytes } from "../util/encoding.ts";
import { observedBody } from "../util/streams.ts";
import { MAX_MANIFEST_BYTES } from "../registry/manifest-shape.ts";
import { errorText } from "./common.ts";
import { digestOfBlobPath, INDEX_FILE, normalizeEntryName, OCI_LAYOUT_FILE } from "./layout.ts";
import { readTar } from "./tar.ts";

/** Small JSON entries (manifests, configs) kept in memory for the walk, up to this much in all; the rest are read back from the store. */
const MEMORY_BUDGET = 64 * 1024 * 1024;
/** Batches of one blob being hashed and written at once. */
const MAX_IN_FLIGHT = 3;

export type BlobDeps = { store: BlobStore; hashers: HasherFactory };

/** What reading the tar found. */
export type BundleContents = {
  indexBytes: Uint8Array | null;
  /** Committed by this import, or in the store already. */
  verified: Set<Digest>;
  /** Why an entry of the bundle is not usable, by digest: shown when an image needs it. */
  damaged: Map<Digest, string>;
  /** Small entries' bytes (manifests, configs), up to MEMORY_BUDGET in all. */
  kept: Map<Digest, Uint8Array>;
  /** Committed by this import, with their sizes. */
  received: Map<Digest, number>;
  blobsWritten: number;
  blobsSkipped: number;
  /** Bytes of the bundle read. */
  bytes: number;
  /** Why the tar could not be read to its end; null when it was. */
  truncated: string | null;
  /** What is wrong with the bundle itself. */
  problems: string[];
};

/** Reads the whole tar into the store; `onBytes` hears of every chunk read. Never throws for a bad tar: that is `truncated`. */
export async function readBundle(deps: BlobDeps, input: ReadableStream<Uint8Array>, onBytes: (n: number) => void, log: Logger): Promise<BundleContents> {
  const found: BundleContents = {
    indexBytes: null,
    verified: new Set(),
    damaged: new Map(),
    kept: new Map(),
    received: new Map(),
    blobsWritten: 0,
    blobsSkipped: 0,
    bytes: 0,
    truncated: null,
    problems: [],
  };
  const { problems, verified, damaged, kept, received } = found;
  let keptBytes = 0;
  let layoutSeen = false;
  const pool = new BufferPool(BATCH_BYTES, MAX_IN_FLIGHT + 1);

  const stream = observedBody(input, {
    onChunk: (n) => {
      found.bytes += n;
      onBytes(n);
    },
  });
  try {
    for await (const entry of readTar(stream)) {
      const name = normalizeEntryName(entry.name);
      if (name === INDEX_FILE || name === OCI_LAYOUT_FILE) {
        if (entry.size > MAX_MANIFEST_BYTES) {
          await entry.body.cancel();
          problems.push(`${name} is ${entry.size} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`);
          continue;
        }
        const bytes = new Uint8Array(await new Response(entry.body).arrayBuffer());
        if (name === INDEX_FILE) found.indexBytes = bytes;
        else {
          layoutSeen = true;
          const version = (parseJsonBytes(bytes) as { imageLayoutVersion?: unknown } | undefined)?.imageLayoutVersion;
          if (version !== "1.0.0") problems.push(`oci-layout says imageLayoutVersion ${JSON.stringify(version)}, not "1.0.0"; reading it as 1.0.0`);
        }
        continue;
      }
      const digest = digestOfBlobPath(name);
      if (!digest || entry.type !== "file") {
        await entry.body.cancel();
        if (name !== "" && !name.endsWith("/")) log.debug("bundle entry ignored", { name });
        continue;
      }
      const stored = await deps.store.stat(digest);
      if (stored && stored.size === entry.size) {
        // The store only ever holds verified bytes under a digest: nothing to write.
        await entry.body.cancel();
        verified.add(digest);
        found.blobsSkipped++;
        continue;
      }
      const keep = entry.size <= MAX_MANIFEST_BYTES && keptBytes + entry.size <= MEMORY_BUDGET;
      const outcome = await receive(deps, digest, entry.size, entry.body, pool, keep);
      if (outcome.ok) {
        verified.add(digest);
        received.set(digest, entry.size);
        found.blobsWritten++;
        if (outcome.bytes) {
          kept.set(digest, outcome.bytes);
          keptBytes += outcome.bytes.byteLength;
        }
      } else {
        damaged.set(digest, outcome.reason);
        problems.push(`${name}: ${outcome.reason}`);
        log.warn("bundle entry not imported", { name, reason: outcome.reason });
        if (outcome.fatal) throw outcome.fatal;
      }
    }
  } catch (err) {
    // A cut or unreadable tar: what was verified before it stays, everything after it is missing.
    found.truncated = errorText(err);
    problems.push(found.truncated);
    log.warn("the bundle could not be read to its end", { error: found.truncated, bytes: found.bytes });
  }
  if (!layoutSeen && !found.truncated) problems.push("the bundle has no oci-layout file; reading it as an OCI image layout all the same");
  return found;
}

type Received = { ok: true; bytes: Uint8Array | null } | { ok: false; reason: string; fatal: unknown };

/**
 * One blob from the tar into a store upload, hashed on the way; committed only when it is
 * whole and hashes to its name. `fatal` is set when the tar itself broke (nothing more can be read).
 */
async function receive(deps: BlobDeps, digest: Digest, size: number, body: ReadableStream<Uint8Array>, pool: BufferPool, keep: boolean): Promise<Received> {
  let upload: BlobUpload | null = null;
  const hasher = deps.hashers.create(digestAlgorithm(digest));
  const copy = keep ? new Uint8Array(size) : null;
  let written = 0;
  let tarBroke = false;
  try {
    upload = await deps.store.begin(digest);
    const u = upload;
    // Batches of 1 MiB: fewer store writes and worker messages than the tar's small chunks.
    // A few batches in flight, so that reading the tar, hashing and writing overlap; no more, so memory stays flat.
    const inFlight: Array<Promise<void>> = [];
    const send = (buffer: Uint8Array, reuse: boolean) => {
      const done = Promise.all([hasher.update(buffer), u.write(buffer)]).then(() => {
        if (reuse) pool.give(buffer.buffer);
      });
      done.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled
      inFlight.push(done);
    };
    const filler = new BufferFiller(BATCH_BYTES, () => pool.take(), async (buffer) => {
      send(buffer, true);
      if (inFlight.length >= MAX_IN_FLIGHT) await inFlight.shift();
    });
    const reader = body.getReader();
    for (;;) {
      let next;
      try {
        next = await reader.read();
      } catch (err) {
        tarBroke = true;
        throw err;
      }
      if (next.done) break;
      copy?.set(next.value, written);
      written += next.value.byteLength;
      await filler.push(next.value);
    }
    const last = filler.takePartial(true);
    if (last) send(last, false);
    while (inFlight.length > 0) await inFlight.shift();
    const hex = await hasher.finish();
    if (hex !== digestHex(digest)) {
      await upload.abort();
      return { ok: false, reason: `damaged: it hashes to ${digestAlgorithm(digest)}:${hex}; not imported`, fatal: null };
    }
    await upload.commit();
    return { ok: true, bytes: copy };
  } catch (err) {
    hasher.discard();
    await upload?.abort().catch(() => {});
    // Either way nothing more can be imported: the tar cannot be read on, or the store cannot keep anything.
    if (tarBroke) return { ok: false, reason: `incomplete (${written} of ${size} bytes)`, fatal: err };
    return { ok: false, reason: `the store could not keep it: ${errorText(err)}`, fatal: err };
  }
}
