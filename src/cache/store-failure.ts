import type { Logger } from "../log.ts";
import type { StowageMetrics } from "../metrics/stowage-metrics.ts";

/**
 * A store operation failed and the request goes on without the store (from
 * upstream, uncached): counted by the failed operation and by what was
 * bypassed (a read, or a write for anything that was to be kept), and logged
 * as a warning, so an operator sees a failing store though no client fails.
 */
export function storeFailed(
  metrics: StowageMetrics,
  log: Logger,
  op: "read" | "put" | "commit",
  message: string,
  fields: Record<string, unknown>,
): void {
  metrics.storeErrors.inc({ op });
  metrics.storeBypass.inc({ op: op === "read" ? "read" : "write" });
  log.warn(message, fields);
}
