/** Why an upstream request failed, in terms the cache can act on. */
export type UpstreamFailure =
  | "unreachable" // connection refused, DNS, TLS, reset before headers
  | "timeout" // no response headers, or no body bytes, within the timeout
  | "rate-limited" // 429
  | "not-found" // 404
  | "unauthorized" // 401/403 even after the token dance
  | "server-error" // 5xx
  | "bad-response" // anything else we cannot use (odd status, bad token JSON, oversize manifest)
  | "offline"; // the upstream is offline by configuration: nothing was sent

export class UpstreamError extends Error {
  constructor(
    readonly failure: UpstreamFailure,
    message: string,
    readonly opts: { status?: number; retryAfterSeconds?: number; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
  }

  /**
   * Failures where serving what is cached (stale-if-error) is the right answer. Not "offline":
   * offline, what is cached is served as a matter of course and a miss is final.
   */
  get isOutage(): boolean {
    return this.failure === "unreachable" || this.failure === "timeout" || this.failure === "rate-limited" ||
      this.failure === "server-error";
  }
}

/** The refusal of an offline upstream, before anything is sent. */
export function offlineError(upstream: string): UpstreamError {
  return new UpstreamError("offline", `upstream ${upstream} is offline (--offline)`);
}

/** A network failure in the operator's terms: the system error code (ECONNREFUSED...) where there is one. */
export function describeNetworkError(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause as { code?: string; message?: string } | undefined;
    if (cause?.code) return `${cause.code}${cause.message ? ` (${cause.message})` : ""}`;
    return err.message;
  }
  return String(err);
}
