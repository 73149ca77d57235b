// Single byte ranges for blob GETs (RFC 9110 section 14).

/** Inclusive end; 0 <= start <= end < size. */
export type ByteRange = { start: number; end: number };

export type RangeRequest =
  /** No Range header, or one we ignore (other unit, several ranges, malformed): answer 200 with the whole body. */
  | { kind: "full" }
  | { kind: "partial"; range: ByteRange }
  /** Answer 416 with a Content-Range from `unsatisfiedRange(size)`. */
  | { kind: "unsatisfiable" };

const FULL: RangeRequest = { kind: "full" };
const UNSATISFIABLE: RangeRequest = { kind: "unsatisfiable" };
const RANGE_SPEC = /^(\d*)[ \t]*-[ \t]*(\d*)$/;

/**
 * Only one range is honoured: clients (containerd among them) cope with a 200
 * for anything else, and multipart/byteranges would cost more than it saves.
 */
export function parseRange(header: string | null, size: number): RangeRequest {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid size: ${size}`);
  if (header === null) return FULL;
  const eq = header.indexOf("=");
  if (eq < 0) return FULL;
  if (header.slice(0, eq).trim().toLowerCase() !== "bytes") return FULL;
  // Empty list elements are allowed by the list syntax and do not count as ranges.
  const specs = header.slice(eq + 1).split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (specs.length !== 1) return FULL;
  const m = RANGE_SPEC.exec(specs[0]!);
  if (m === null) return FULL;
  const [, first = "", last = ""] = m;

  if (first === "") {
    if (last === "") return FULL;
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return UNSATISFIABLE;
    return { kind: "partial", range: { start: Math.max(0, size - suffix), end: size - 1 } };
  }
  const start = Number(first);
  if (last !== "" && Number(last) < start) return FULL; // last < first makes the spec invalid: ignore it
  if (start >= size) return UNSATISFIABLE;
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  return { kind: "partial", range: { start, end } };
}

/** e.g. "bytes 0-99/1000" */
export function contentRange(range: ByteRange, size: number): string {
  return `bytes ${range.start}-${range.end}/${size}`;
}

// The Content-Range of a 416 answer, e.g. "bytes */1000".
export function unsatisfiedRange(size: number): string {
  return `bytes */${size}`;
}
