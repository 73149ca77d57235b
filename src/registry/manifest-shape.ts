// Whether manifest bytes are what their media type says: checked before a
// manifest is cached, so an upstream (or something in front of it) that sends
// an HTML page or a JSON error with a manifest media type never poisons a tag.
// Only the structure is read; the bytes themselves are never re-serialized.
import { z } from "zod";
import { isIndexMediaType, type ManifestMediaType } from "./media-types.ts";
import { parseDigest } from "./reference.ts";
import { parseJsonBytes } from "../util/encoding.ts";

/** Registries refuse manifests above 4 MiB; so does Stowage, wherever it reads one into memory. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

// OCI image spec, "Digests": algorithm components joined by + . _ -, then the encoded part.
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** Any well-formed digest; the algorithms we know must also have their exact form. */
function isDescriptorDigest(v: string): boolean {
  if (!DIGEST_GRAMMAR.test(v)) return false;
  const algorithm = v.slice(0, v.indexOf(":"));
  return algorithm === "sha256" || algorithm === "sha512" ? parseDigest(v) !== null : true;
}

// Descriptors keep every other field (annotations, platform, urls, artifactType): only these three are required.
const Descriptor = z.looseObject({
  mediaType: z.string().min(1),
  digest: z.string().refine(isDescriptorDigest, { message: "not a digest" }),
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
});

const Image = z.looseObject({ config: Descriptor, layers: z.array(Descriptor) });
const Index = z.looseObject({ manifests: z.array(Descriptor) });

/**
 * Null when `bytes` are a well-formed manifest of `mediaType`; otherwise what
 * is wrong, in words for the operator ("not JSON", "schemaVersion is 1, not 2").
 * The bytes themselves are not quoted: `bytesPreview` is for the log.
 */
export function manifestShapeProblem(bytes: Uint8Array, mediaType: ManifestMediaType): string | null {
  const doc = parseJsonBytes(bytes);
  if (doc === undefined) return bytes.byteLength === 0 ? "an empty body" : "not JSON";
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    return `JSON, but not an object (${Array.isArray(doc) ? "an array" : doc === null ? "null" : `a ${typeof doc}`})`;
  }
  const fields = doc as Record<string, unknown>;
  const version = fields.schemaVersion;
  if (version !== 2) {
    return `schemaVersion is ${typeof version === "number" ? version : version === undefined ? "missing" : `a ${typeof version}`}, not 2`;
  }
  if (fields.mediaType !== undefined && fields.mediaType !== mediaType) {
    const field = typeof fields.mediaType === "string" ? JSON.stringify(fields.mediaType.slice(0, 100)) : `of type ${typeof fields.mediaType}`;
    return `its mediaType field ${field} contradicts the content type ${mediaType}`;
  }
  const index = isIndexMediaType(mediaType);
  const parsed = (index ? Index : Image).safeParse(doc);
  if (parsed.success) return null;
  const issue = parsed.error.issues[0];
  const where = issue ? issue.path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("") : "";
  return `not a valid ${index ? "index" : "image manifest"}: ${where || "document"} ${issue ? describeIssue(issue) : "is invalid"}`;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code !== "invalid_type") return `is invalid (${issue.message})`;
  return issue.message.endsWith("received undefined") ? "is missing" : `should be ${issue.expected === "array" ? "an" : "a"} ${issue.expected}`;
}

/** The first bytes, printable and short, so a log line shows what came instead (an HTML page, a JSON error). */
export function bytesPreview(bytes: Uint8Array): string {
  const text = new TextDecoder("utf-8").decode(bytes.subarray(0, 40)).replace(/[^\x20-\x7e]/g, "?");
  return JSON.stringify(text + (bytes.byteLength > 40 ? "…" : ""));
}
