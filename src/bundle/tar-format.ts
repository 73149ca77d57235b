// The tar format itself (POSIX ustar, with the PAX and GNU extensions other tools write):
// header blocks encoded and decoded, checksums, octal and GNU base-256 numbers, PAX records and
// GNU long names. Pure: no I/O, no streams; src/bundle/tar.ts streams entries with it.

import { concatBytes } from "../util/buffers.ts";

export const BLOCK = 512;
/** The largest size the 11 octal digits of a ustar header hold (8 GiB - 1); above it GNU base-256 is used. */
const MAX_OCTAL_SIZE = 0o77777777777;
/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE = new Uint8Array(2 * BLOCK);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export type TarEntryType = "file" | "link" | "symlink" | "other";

/** A header that is not a tar header (bad checksum, unreadable number, malformed extension). */
export class TarCorruptError extends Error {
  override readonly name = "TarCorruptError";
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** A header block as read; the name includes the ustar prefix, not yet any PAX path or GNU long name. */
export type TarHeader = { name: string; size: number; typeflag: string; linkname: string };

// ------------------------------------------------------------------------------- writing

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
  return concatBytes([paxHeader, pax, padding(pax.byteLength), main]);
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

/** How many zero bytes follow `size` bytes of data to fill their last block. */
export function paddingSize(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

export function padding(size: number): Uint8Array {
  return new Uint8Array(paddingSize(size));
}


// ------------------------------------------------------------------------------- reading

/** Reads a ustar/GNU header block; throws TarCorruptError on a bad checksum or number. */
export function parseHeader(b: Uint8Array, offset = 0): TarHeader {
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

/** The largest extension record read (PAX records, a GNU long name); a larger one is taken for damage. */
export const MAX_EXTENSION_BYTES = 1024 * 1024;

/** PAX `x`/`g` and GNU `L`/`K` records carry no entry of their own; they describe what follows. */
export function isExtension(typeflag: string): boolean {
  return typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K";
}

/** The extension records read before an entry: PAX `path`/`size` and a GNU long name apply to the next entry only. */
export class Extensions {
  private pax: Record<string, string> = {};
  private longName: string | null = null;

  /** Takes the data of one extension record (the header at `offset`). */
  add(typeflag: string, data: Uint8Array, offset: number): void {
    if (typeflag === "x") this.pax = { ...this.pax, ...parsePax(data, offset) };
    else if (typeflag === "L") this.longName = cString(data);
    // 'g' (global defaults) and 'K' (long link names) change nothing we use
  }

  /** The entry's name and size with what came before it applied; that is then used up. */
  apply(h: TarHeader, offset: number): { name: string; size: number } {
    const name = this.pax.path ?? this.longName ?? h.name;
    let size = h.size;
    const paxSize = this.pax.size;
    if (paxSize !== undefined) {
      if (!/^\d+$/.test(paxSize) || !Number.isSafeInteger(Number(paxSize))) throw new TarCorruptError(`a PAX size ${JSON.stringify(paxSize)} at byte ${offset}`, offset);
      size = Number(paxSize);
    }
    this.pax = {};
    this.longName = null;
    return { name, size };
  }
}

/** What a typeflag means to a reader of bundles. */
export function entryType(typeflag: string): TarEntryType {
  if (typeflag === "0" || typeflag === "\0" || typeflag === "7") return "file";
  if (typeflag === "1") return "link";
  if (typeflag === "2") return "symlink";
  return "other";
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

/** A NUL-terminated (or field-filling) string. */
function cString(b: Uint8Array): string {
  const end = b.indexOf(0);
  return decoder.decode(end >= 0 ? b.subarray(0, end) : b);
}

/** The records of a PAX extended header's data, by key. */
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
