import type { Logger } from "../log.ts";
import { RegistryError } from "../registry/errors.ts";

/**
 * The error a client sees for a failed request. 4xx errors go out as they are
 * (they tell the client what to change). For 5xx, the message says what failed
 * in plain words and gives the request id; the underlying error (connection
 * failures with addresses, file-system errors with paths, store errors) goes
 * only to the log, under the same request id.
 */
export function clientFacingError(err: unknown, requestId: string, log: Logger, request: { method: string; path: string }): RegistryError {
  if (err instanceof RegistryError && err.status < 500) return err;
  log.error("request failed", { ...request, status: err instanceof RegistryError ? err.status : 500, error: describeError(err) });
  const base = err instanceof RegistryError ? err : null;
  const message = `${base ? base.message : "Stowage failed internally"} (request id ${requestId}; the Stowage log has the detail)`;
  const detail = isRecord(base?.detail) ? { ...base.detail, requestId } : { requestId };
  return new RegistryError(base?.code ?? "UNAVAILABLE", message, { status: base?.status ?? 500, headers: base?.headers ?? {}, detail });
}

/** An error with the whole chain of causes, for the log: "what failed: why: underlying error". */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 6; depth++) {
    const text = current instanceof Error ? current.message : String(current);
    // Wrappers often repeat their cause's message; say it once.
    if (text && !parts.some((p) => p.includes(text))) parts.push(text);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(": ") || "unknown error";
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
