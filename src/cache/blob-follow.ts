/**
 * A client's stream of a blob while its fetch runs (see blob-fetch.ts): near
 * the live edge from the batches still in memory, further behind from the
 * spool, and waiting when it has caught up. A follower never gets the last
 * byte before the digest is verified, so a failed fetch breaks its response.
 */
import { directStream, readingAhead, type DirectSource } from "../storage/direct-body.ts";
import { ChunkLeases } from "../storage/shared-chunks.ts";
import { type BatchHold, holdBatch } from "../util/batch-pool.ts";
import { SPOOL_CHUNK, type SharedReader } from "./blob-plumbing.ts";

/** What a follower reads of the fetch it follows. */
export interface Followed {
  /** What the fetch failed with; null unless it failed. */
  readonly error: Error | null;
  /** Bytes received from upstream so far. */
  readonly received: number;
  /** Bytes through the store stage (in the spool, or passed over once spooling stopped). */
  readonly written: number;
  /** Bytes readable through the spool reader. */
  readonly spooled: number;
  /** Verified: every byte received is good and may be served. */
  readonly complete: boolean;
  /** Bytes a follower may have now: all of them once verified, else all but the last. */
  releasable(): number;
  /** The bytes at `position` (up to `limit`) while they are still in memory. */
  inMemory(position: number, limit: number): Uint8Array | null;
  /** Resolves at the next change: more bytes, or the end either way. */
  nextChange(): Promise<void>;
  /** Bytes [position, end) for a follower behind the memory window with no spool to read them from. */
  restFrom(position: number, end: number | null): Promise<ReadableStream<Uint8Array>>;
}

/** Bytes [start, end) of the followed blob (end null: to the end), fed as they arrive; `reader` is the spool (null: none). */
export function followFetch(fetch: Followed, reader: SharedReader | null, start: number, end: number | null): ReadableStream<Uint8Array> {
  // A direct source: Node writes it to the socket itself (see storage/direct-body.ts), Deno reads the stream.
  // One read ahead: a spool read overlaps the write of the chunk before it, as a stream's queue would.
  return directStream(readingAhead(followSource(fetch, reader, start, end)));
}

/**
 * The follower's reads. Memory chunks are views of the fetch's batches, each held (see
 * util/batch-pool.ts) until it comes back through `recycle` (Node, once the socket took it); one
 * that never does (a web stream's: forget) pins its batch, which is then never reused. Behind the
 * memory window, each whole aligned MiB of the spool is read once for every follower that wants
 * it (SharedReader.chunks); a runtime that sends the source itself hands those back (recycle), so
 * twenty followers of a cold blob send from a few buffers instead of leaving a fresh 1 MiB per
 * read for the collector (a web stream's consumer keeps its chunks: forget). Shorter spool reads,
 * up to the live edge or the next MiB boundary, get a buffer of their own.
 */
export function followSource(fetch: Followed, reader: SharedReader | null, start: number, end: number | null): DirectSource {
  reader?.acquire();
  let position = start;
  let released = false;
  const leases = reader && new ChunkLeases(reader.chunks);
  // Memory chunks out with a hold on their batch, by identity (each read gives a view of its own).
  const lent = new Map<Uint8Array, BatchHold>();
  const spoolRead = (from: SharedReader, length: number) => {
    if (length === SPOOL_CHUNK && position % SPOOL_CHUNK === 0) {
      const index = position / SPOOL_CHUNK;
      return leases!.hand(index, from.chunks.acquire(index));
    }
    return from.read(position, length);
  };
  // Where a follower continues when it fell behind the memory window and there is no spool.
  let rest: ReadableStreamDefaultReader<Uint8Array> | null = null;
  const release = () => {
    if (!released) {
      released = true;
      leases?.releaseAll();
      reader?.release();
      // Chunks still out may yet be written by the runtime: their batches stay pinned, never reused.
      lent.clear();
    }
    rest?.cancel().catch(() => {});
  };
  return {
    async read() {
      try {
        for (;;) {
          if (released) return null; // cancelled with a read ahead still waiting
          if (rest) {
            const next = await rest.read();
            if (!next.done) return next.value;
            release();
            return null;
          }
          const stop = end ?? (fetch.complete ? fetch.received : Infinity);
          if (position >= stop) {
            release();
            return null;
          }
          if (fetch.error) throw fetch.error;
          const limit = Math.min(stop, fetch.releasable());
          if (position < limit) {
            const spooled = fetch.spooled;
            const recent = fetch.inMemory(position, limit);
            if (recent) {
              // Held at once: the window lets go of its batches as the download moves on.
              const hold = holdBatch(recent);
              if (hold) lent.set(recent, hold);
              position += recent.byteLength;
              return recent;
            }
            const chunk =
              // Up to the next chunk boundary, so that a follower cut short by the live edge lines up again.
              (reader && position < spooled ? await spoolRead(reader, Math.min(SPOOL_CHUNK - (position % SPOOL_CHUNK), limit - position, spooled - position)) : null);
            if (chunk) {
              if (released) {
                leases?.giveBack(chunk, true); // cancelled while it was read: never handed on
                return null;
              }
              if (chunk.byteLength === 0) throw new Error("blob spool returned no bytes");
              position += chunk.byteLength;
              return chunk;
            }
            // Unwritten bytes are always in the window, so these were written and dropped from it:
            // with no spool, or past where spooling stopped, they come from elsewhere.
            if (!reader || position < fetch.written) {
              rest = (await fetch.restFrom(position, end)).getReader();
              continue;
            }
          }
          await fetch.nextChange();
        }
      } catch (err) {
        release();
        throw err;
      }
    },
    recycle: (chunk) => {
      const hold = lent.get(chunk);
      if (!hold) return void leases?.giveBack(chunk, true);
      lent.delete(chunk);
      hold.release();
    },
    forget: (chunk) => {
      if (lent.delete(chunk)) return; // kept by its reader: the batch stays pinned
      leases?.giveBack(chunk, false);
    },
    cancel: release,
  };
}
