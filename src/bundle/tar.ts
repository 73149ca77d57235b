// A streaming tar (POSIX ustar, with the PAX and GNU extensions other tools write) over Web
// Streams, for bundles: written and read one entry at a time, so memory stays bounded whatever
// the sizes. Pure format code apart from the streams; no file system.

const BLOCK = 512;
/** The largest size the 11 octal digits of a ustar header hold (8 GiB - 1); above it GNU base-256 is used. */
const MAX_OCTAL_SIZE = 0o77777777777;
const ZERO_BLOCKS = new Uint8Array(2 * BLOCK);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An entry to write: `body` must give exactly `size` bytes. */
export type TarWriteEntry = { name: string; size: number; body: Uint8Array | ReadableStream<Uint8Array> };

export type TarEntryType = "file" | "link" | "symlink" | "other";

/** An entry read: drain or cancel `body` before asking for the next entry. */
export type TarReadEntry = { name: string; size: number; type: TarEntryType; body: ReadableStream<Uint8Array> };

/** The tar stream ended inside a header, an entry's data, or before the end-of-archive blocks. */
export class TarTruncatedError extends Error {
  override readonly name = "TarTruncatedError";
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** A header that is not a tar header (bad checksum, unreadable number, malformed extension). */
export class TarCorruptError extends Error {
  override readonly name = "TarCorruptError";
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** A body that gave more or fewer bytes than its entry declared (a writer-side error). */
export class TarEntrySizeError extends Error {
  override readonly name = "TarEntrySizeError";
}

// ------------------------------------------------------------------------------- headers

/**
 * The header blocks of a regular file: one ustar block, preceded by a PAX `x` header when the
 * name fits neither the name field nor the prefix/name split.
 */
export function fileHeader(name: string, size: number, mtime = 0): Uint8Array {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`tar entry ${name}: size ${size} is not a byte count`);
  const split = splitName(name);
  if (split) return ustarBlock({ name: split.name, prefix: split.prefix, size, typeflag: "0", mtime });
  // Too long for ustar: a PAX extended header carries the path, the ustar block a shortened name.
  const pax = paxRecords({ path: name });
  const paxHeader = ustarBlock({ name: `PaxHeaders/${shortName(name, 80)}`, prefix: "", size: pax.byteLength, typeflag: "x", mtime });
  const main = ustarBlock({ name: shortName(name), prefix: "", size, typeflag: "0", mtime });
  return concat([paxHeader, pax, padding(pax.byteLength), main]);
}

/** ustar's name (100 bytes) and prefix (155 bytes) split at a "/", or null when the name cannot fit. */
function splitName(name: string): { name: string; prefix: string } | null {
  const bytes = encoder.encode(name);
  if (bytes.byteLength <= 100) return { name, prefix: "" };
  for (let i = name.indexOf("/"); i > 0; i = name.indexOf("/", i + 1)) {
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (encoder.encode(prefix).byteLength <= 155 && encoder.encode(rest).byteLength <= 100 && rest.length > 0) return { name: rest, prefix };
  }
  return null;
}

/** The last `max` bytes' worth of characters of a name (for the ustar field behind a PAX path, which readers ignore). */
function shortName(name: string, max = 99): string {
  let s = name.slice(-max);
  while (encoder.encode(s).byteLength > max) s = s.slice(1);
  return s;
}

function ustarBlock(h: { name: string; prefix: string; size: number; typeflag: string; mtime: number }): Uint8Array {
  const b = new Uint8Array(BLOCK);
  putString(b, 0, 100, h.name);
  putOctal(b, 100, 8, 0o644);
  putOctal(b, 108, 8, 0);
  putOctal(b, 116, 8, 0);
  if (h.size <= MAX_OCTAL_SIZE) putOctal(b, 124, 12, h.size);
  else putBase256(b, 124, 12, h.size);
  putOctal(b, 136, 12, h.mtime);
  b[156] = h.typeflag.charCodeAt(0);
  putString(b, 257, 6, "ustar\0");
  putString(b, 263, 2, "00");
  putString(b, 345, 155, h.prefix);
  // The checksum is computed with its own field as eight spaces, then written as 6 octal digits, NUL, space.
  b.fill(0x20, 148, 156);
  putString(b, 148, 8, checksum(b).toString(8).padStart(6, "0") + "\0 ");
  return b;
}

function putString(b: Uint8Array, offset: number, width: number, s: string): void {
  const bytes = encoder.encode(s);
  if (bytes.byteLength > width) throw new RangeError(`tar header field too long: ${s}`);
  b.set(bytes, offset);
}

function putOctal(b: Uint8Array, offset: number, width: number, value: number): void {
  putString(b, offset, width, value.toString(8).padStart(width - 1, "0") + "\0");
}

/** GNU's base-256 number: the first byte 0x80, then the value big-endian in the remaining bytes. */
function putBase256(b: Uint8Array, offset: number, width: number, value: number): void {
  let v = BigInt(value);
  for (let i = offset + width - 1; i > offset; i--) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  b[offset] = 0x80;
}

function checksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
  return sum;
}

/** The same checksum over signed bytes, which some old writers used. */
function signedChecksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (b[i]! << 24) >> 24;
  return sum;
}

/** PAX records `LEN key=value\n`, where LEN counts the whole record including its own digits. */
function paxRecords(fields: Record<string, string>): Uint8Array {
  let text = "";
  for (const [key, value] of Object.entries(fields)) {
    const body = encoder.encode(` ${key}=${value}\n`).byteLength;
    let len = body + 1;
    while (body + String(len).length !== len) len = body + String(len).length;
    text += `${len} ${key}=${value}\n`;
  }
  return encoder.encode(text);
}

function padding(size: number): Uint8Array {
  return new Uint8Array((BLOCK - (size % BLOCK)) % BLOCK);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
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
  yield ZERO_BLOCKS;
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

type Header = { name: string; size: number; typeflag: string; linkname: string };

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
    let pax: Record<string, string> = {};
    let longName: string | null = null;
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
      if (h.typeflag === "x" || h.typeflag === "g" || h.typeflag === "L" || h.typeflag === "K") {
        if (h.size > 1024 * 1024) throw new TarCorruptError(`an extended header of ${h.size} bytes at byte ${at} (more than 1 MiB)`, at);
        const data = await src.exact(h.size);
        if (data.byteLength < h.size) throw new TarTruncatedError(`the tar ends inside an extended header (at byte ${src.offset})`, src.offset);
        const pad = (BLOCK - (h.size % BLOCK)) % BLOCK;
        if ((await src.skip(pad)) < pad) throw new TarTruncatedError(`the tar ends inside an extended header (at byte ${src.offset})`, src.offset);
        if (h.typeflag === "x") pax = { ...pax, ...parsePax(data, at) };
        else if (h.typeflag === "L") longName = cString(data);
        continue; // 'g' (global defaults) and 'K' (long link names) change nothing we use
      }
      const name = pax.path ?? longName ?? h.name;
      let size = h.size;
      if (pax.size !== undefined) {
        if (!/^\d+$/.test(pax.size) || !Number.isSafeInteger(Number(pax.size))) throw new TarCorruptError(`a PAX size ${JSON.stringify(pax.size)} at byte ${at}`, at);
        size = Number(pax.size);
      }
      pax = {};
      longName = null;
      index++;
      const type = entryType(h.typeflag);
      // Directories (and hard links, symlinks, devices) carry no data in the tar; only directories are skipped outright.
      const dataSize = type === "file" || type === "other" ? size : 0;
      if (h.typeflag === "5") {
        skipAfter = dataSize + ((BLOCK - (dataSize % BLOCK)) % BLOCK);
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
      skipAfter = state.left + ((BLOCK - (dataSize % BLOCK)) % BLOCK);
      // Whatever the body did not take is skipped: state.left is what was not read.
      state.left = 0;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

function entryType(typeflag: string): TarEntryType {
  if (typeflag === "0" || typeflag === "\0" || typeflag === "7") return "file";
  if (typeflag === "1") return "link";
  if (typeflag === "2") return "symlink";
  return "other";
}

/** Reads a ustar/GNU header block; throws TarCorruptError on a bad checksum or number. */
export function parseHeader(b: Uint8Array, offset = 0): Header {
  const stored = parseNumber(b.subarray(148, 156), "checksum", offset);
  if (stored !== checksum(b) && stored !== signedChecksum(b)) {
    throw new TarCorruptError(`a tar header at byte ${offset} has a bad checksum (damaged or not a tar)`, offset);
  }
  const typeflag = String.fromCharCode(b[156]!);
  let name = cString(b.subarray(0, 100));
  // The prefix field exists in POSIX ustar only; GNU's "ustar  " header uses those bytes for times.
  const magic = decoder.decode(b.subarray(257, 263));
  if (magic === "ustar\0") {
    const prefix = cString(b.subarray(345, 500));
    if (prefix) name = `${prefix}/${name}`;
  }
  return { name, size: parseNumber(b.subarray(124, 136), "size", offset), typeflag, linkname: cString(b.subarray(157, 257)) };
}

/** Octal (space/NUL padded) or GNU base-256 (first byte 0x80). */
function parseNumber(field: Uint8Array, what: string, offset: number): number {
  if (field[0]! & 0x80) {
    if (field[0] === 0xff) throw new TarCorruptError(`a negative ${what} in the tar header at byte ${offset}`, offset);
    let v = BigInt(field[0]! & 0x7f);
    for (let i = 1; i < field.byteLength; i++) v = (v << 8n) | BigInt(field[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarCorruptError(`a ${what} too large to handle in the tar header at byte ${offset}`, offset);
    return Number(v);
  }
  const text = decoder.decode(field).replace(/[\0 ]+$/g, "").replace(/^[ \0]+/, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarCorruptError(`an unreadable ${what} ${JSON.stringify(text.slice(0, 20))} in the tar header at byte ${offset}`, offset);
  return parseInt(text, 8);
}

function cString(b: Uint8Array): string {
  const end = b.indexOf(0);
  return decoder.decode(end >= 0 ? b.subarray(0, end) : b);
}

function parsePax(data: Uint8Array, offset: number): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.byteLength) {
    if (data[i] === 0) break;
    const space = data.indexOf(0x20, i);
    const len = space > i ? Number(decoder.decode(data.subarray(i, space))) : NaN;
    if (!Number.isInteger(len) || len <= 0 || i + len > data.byteLength || data[i + len - 1] !== 0x0a) {
      throw new TarCorruptError(`a malformed PAX extended header at byte ${offset}`, offset);
    }
    const record = decoder.decode(data.subarray(space + 1, i + len - 1));
    const eq = record.indexOf("=");
    if (eq > 0) out[record.slice(0, eq)] = record.slice(eq + 1);
    i += len;
  }
  return out;
}
