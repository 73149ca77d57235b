// A streaming tar over Web Streams, for bundles: written and read one entry at a time, so
// memory stays bounded whatever the sizes. The format itself (headers, numbers, PAX and GNU
// extensions) is in tar-format.ts; this is the streaming around it. No file system.
import { BLOCK, END_OF_ARCHIVE, entryType, Extensions, fileHeader, isExtension, MAX_EXTENSION_BYTES, padding, paddingSize, parseHeader, TarCorruptError, type TarEntryType } from "./tar-format.ts";

/** An entry to write: `body` must give exactly `size` bytes. */
export type TarWriteEntry = { name: string; size: number; body: Uint8Array | ReadableStream<Uint8Array> };

/** An entry read: drain or cancel `body` before asking for the next entry. */
export type TarReadEntry = { name: string; size: number; type: TarEntryType; body: ReadableStream<Uint8Array> };

/** The tar stream ended inside a header, an entry's data, or before the end-of-archive blocks. */
export class TarTruncatedError extends Error {
  override readonly name = "TarTruncatedError";
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** A body that gave more or fewer bytes than its entry declared (a writer-side error). */
export class TarEntrySizeError extends Error {
  override readonly name = "TarEntrySizeError";
}

// ------------------------------------------------------------------------------- writer

/**
 * A tar of `entries`, produced as the consumer reads: one chunk per pull (a header, or one
 * chunk of a body), so a slow consumer holds back the bodies' sources and nothing piles up.
 * Ends with the two zero blocks. Cancelling it cancels the body being read.
 */
export function tarWriter(entries: Iterable<TarWriteEntry> | AsyncIterable<TarWriteEntry>): ReadableStream<Uint8Array> {
  const chunks = tarChunks(entries);
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const next = await chunks.next();
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      },
      async cancel() {
        await chunks.return(undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

async function* tarChunks(entries: Iterable<TarWriteEntry> | AsyncIterable<TarWriteEntry>): AsyncGenerator<Uint8Array> {
  for await (const entry of entries) {
    yield fileHeader(entry.name, entry.size);
    if (entry.body instanceof Uint8Array) {
      if (entry.body.byteLength !== entry.size) throw new TarEntrySizeError(`tar entry ${entry.name}: ${entry.body.byteLength} bytes given, ${entry.size} declared`);
      if (entry.size > 0) yield entry.body;
    } else {
      const reader = entry.body.getReader();
      let sent = 0;
      let finished = false;
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          sent += value.byteLength;
          if (sent > entry.size) throw new TarEntrySizeError(`tar entry ${entry.name}: the body gave more than the ${entry.size} bytes declared`);
          if (value.byteLength > 0) yield value;
        }
        finished = true;
      } finally {
        if (!finished) await reader.cancel().catch(() => {});
        reader.releaseLock();
      }
      if (sent !== entry.size) throw new TarEntrySizeError(`tar entry ${entry.name}: the body ended after ${sent} of the ${entry.size} bytes declared`);
    }
    const pad = padding(entry.size);
    if (pad.byteLength > 0) yield pad;
  }
  yield END_OF_ARCHIVE;
}

// ------------------------------------------------------------------------------- reader

/** Reads a stream in exact amounts, keeping what is left of the last chunk. */
class ByteSource {
  private pending: Uint8Array | null = null;
  /** Bytes handed out so far (the offset in the tar). */
  offset = 0;
  constructor(private readonly reader: ReadableStreamDefaultReader<Uint8Array>) {}

  /** Up to `max` bytes (a view, never copied); null at the end of the stream. */
  async chunk(max: number): Promise<Uint8Array | null> {
    while (!this.pending || this.pending.byteLength === 0) {
      const { done, value } = await this.reader.read();
      if (done) return null;
      this.pending = value;
    }
    const p = this.pending;
    const out = p.byteLength <= max ? p : p.subarray(0, max);
    this.pending = p.byteLength <= max ? null : p.subarray(max);
    this.offset += out.byteLength;
    return out;
  }

  /** Exactly `n` bytes, or fewer when the stream ends first. */
  async exact(n: number): Promise<Uint8Array> {
    const first = await this.chunk(n);
    if (!first || first.byteLength === n) return first ?? new Uint8Array(0);
    const out = new Uint8Array(n);
    out.set(first);
    let got = first.byteLength;
    while (got < n) {
      const c = await this.chunk(n - got);
      if (!c) return out.subarray(0, got);
      out.set(c, got);
      got += c.byteLength;
    }
    return out;
  }

  /** Discards `n` bytes; how many there were. */
  async skip(n: number): Promise<number> {
    let left = n;
    while (left > 0) {
      const c = await this.chunk(Math.min(left, 1 << 20));
      if (!c) break;
      left -= c.byteLength;
    }
    return n - left;
  }
}

/**
 * The entries of a tar stream, one at a time. The caller drains or cancels each entry's body
 * before asking for the next (what it leaves unread is skipped). Directories, PAX global
 * headers and GNU long-link records are skipped; PAX `path`/`size` and GNU long names apply to
 * the entry they precede. A stream that stops early throws TarTruncatedError (also from the
 * body being read), a damaged header TarCorruptError. Leaving the loop early cancels the stream.
 */
export async function* readTar(stream: ReadableStream<Uint8Array>): AsyncGenerator<TarReadEntry> {
  const reader = stream.getReader();
  const src = new ByteSource(reader);
  let finished = false;
  let index = 0;
  let skipAfter = 0; // what the previous entry left: its unread body and its padding
  let current: { name: string; size: number } | null = null;
  try {
    const extensions = new Extensions();
    for (;;) {
      if (skipAfter > 0) {
        const wanted = skipAfter;
        skipAfter = 0;
        const skipped = await src.skip(wanted);
        if (skipped < wanted && current) {
          throw new TarTruncatedError(`the bundle ends inside ${current.name} (at byte ${src.offset} of the tar)`, src.offset);
        }
      }
      const at = src.offset;
      const block = await src.exact(BLOCK);
      if (block.byteLength === 0) {
        throw new TarTruncatedError(`the tar ends after ${index} entries without its end-of-archive blocks (at byte ${at})`, at);
      }
      if (block.byteLength < BLOCK) throw new TarTruncatedError(`the tar ends inside the header of entry ${index + 1} (at byte ${src.offset})`, src.offset);
      if (block.every((b) => b === 0)) {
        // End of archive: a second zero block should follow; a missing one is tolerated, as tar does.
        await src.exact(BLOCK);
        finished = true;
        return;
      }
      const h = parseHeader(block, at);
      if (isExtension(h.typeflag)) {
        if (h.size > MAX_EXTENSION_BYTES) throw new TarCorruptError(`an extended header of ${h.size} bytes at byte ${at} (more than 1 MiB)`, at);
        const data = await src.exact(h.size);
        if (data.byteLength < h.size) throw new TarTruncatedError(`the tar ends inside an extended header (at byte ${src.offset})`, src.offset);
        const pad = paddingSize(h.size);
        if ((await src.skip(pad)) < pad) throw new TarTruncatedError(`the tar ends inside an extended header (at byte ${src.offset})`, src.offset);
        extensions.add(h.typeflag, data, at);
        continue;
      }
      const { name, size } = extensions.apply(h, at);
      index++;
      const type = entryType(h.typeflag);
      // Directories (and hard links, symlinks, devices) carry no data in the tar; only directories are skipped outright.
      const dataSize = type === "file" || type === "other" ? size : 0;
      if (h.typeflag === "5") {
        skipAfter = dataSize + paddingSize(dataSize);
        current = { name, size: dataSize };
        continue;
      }
      const state = { left: dataSize };
      current = { name, size: dataSize };
      const entryName = name;
      const body = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            if (state.left === 0) {
              controller.close();
              return;
            }
            const c = await src.chunk(Math.min(state.left, 1 << 20));
            if (!c) {
              const err = new TarTruncatedError(
                `the bundle ends inside ${entryName}: ${dataSize - state.left} of its ${dataSize} bytes are there (at byte ${src.offset} of the tar)`,
                src.offset,
              );
              controller.error(err);
              return;
            }
            state.left -= c.byteLength;
            controller.enqueue(c);
            if (state.left === 0) controller.close();
          },
          cancel() {
            // What is left is skipped when the next entry is asked for.
          },
        },
        { highWaterMark: 0 },
      );
      yield { name, size: dataSize, type, body };
      skipAfter = state.left + paddingSize(dataSize);
      // Whatever the body did not take is skipped: state.left is what was not read.
      state.left = 0;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
