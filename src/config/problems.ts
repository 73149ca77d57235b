/**
 * How configuration problems are reported: value parsers return a problem without the
 * setting's name, and the caller prefixes the name as the operator wrote it (flag,
 * environment variable or file path).
 */

/** One-line, operator-facing message naming the setting and the problem. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; problem: string };
export const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
export const bad = <T>(problem: string): Parsed<T> => ({ ok: false, problem });

/** A value and where it came from ("--listen", "STOWAGE_LISTEN", "c.yaml: listen"). */
export type Labeled<T> = { value: T; label: string };

/** Quote a value for an error message: one line, bounded, URL userinfo hidden. */
export function quote(value: string): string {
  const hidden = value.replace(/\/\/[^/\s]*@/g, "//***@");
  const short = hidden.length > 80 ? `${hidden.slice(0, 77)}...` : hidden;
  return JSON.stringify(short);
}

/** What a value from a file is, for a message that must not echo it at length. */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "a mapping" : typeof v === "string" ? quote(v) : String(v);
}

export function must<T>(label: string, r: Parsed<T>): T {
  if (!r.ok) throw new ConfigError(`${label}: ${r.problem}`);
  return r.value;
}

/** A parser of text made fit for file values, which may be numbers, lists or mappings. */
export function fromString<T>(parse: (raw: string) => Parsed<T>) {
  return (raw: unknown): Parsed<T> =>
    typeof raw === "string" ? parse(raw) : bad(`expected a string, got ${describe(raw)}`);
}
