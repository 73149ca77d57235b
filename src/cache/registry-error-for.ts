import { RegistryError } from "../registry/errors.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";
import { DigestMismatchError, StoreError } from "./fetch-errors.ts";

/**
 * An upstream reply we cannot use, whose message only describes what the
 * upstream sent ("the manifest is not JSON"), so clients may see it. Other
 * upstream errors can carry addresses and local error text (connection
 * failures, redirect targets): clients get plain words instead, and the full
 * message goes to the log with the request id.
 */
export class UnusableUpstreamReply extends UpstreamError {
  constructor(message: string, opts: { status?: number; cause?: unknown } = {}) {
    super("bad-response", message, opts);
  }
}

/**
 * Turns an upstream failure into the error our client sees, in the OCI shape.
 * 5xx messages say what failed in plain words and never include the failure's
 * own text; the handler logs that (it is the error's cause) and adds the
 * request id. 4xx messages keep the detail the client can act on.
 */
export function registryErrorFor(err: unknown, subject: "blob" | "manifest" | "repository", what: string): RegistryError {
  if (err instanceof RegistryError) return err;
  // Its message names digests and the upstream only.
  if (err instanceof DigestMismatchError) return new RegistryError("UNAVAILABLE", `${what}: ${err.message}`, { status: 502, cause: err });
  if (err instanceof StoreError) return new RegistryError("UNAVAILABLE", `could not get ${what}: the blob store failed`, { status: 500, cause: err });
  if (!(err instanceof UpstreamError)) {
    return new RegistryError("UNAVAILABLE", `could not get ${what}: Stowage failed internally`, { status: 500, cause: err });
  }
  switch (err.failure) {
    case "offline": {
      // A miss on the dark side is final: a 404 that says why, not a 503 to retry.
      const message = `${what} is not in the cache, and ${err.message}: nothing is fetched; prefill or import it on the connected side`;
      return new RegistryError(subject === "blob" ? "BLOB_UNKNOWN" : subject === "manifest" ? "MANIFEST_UNKNOWN" : "NAME_UNKNOWN", message);
    }
    case "not-found":
      return subject === "blob"
        ? new RegistryError("BLOB_UNKNOWN", `${what} is not known to the upstream`)
        : subject === "manifest"
        ? new RegistryError("MANIFEST_UNKNOWN", `${what} is not known to the upstream`)
        : new RegistryError("NAME_UNKNOWN", `${what} is not known to the upstream`);
    case "rate-limited": {
      const retry = err.opts.retryAfterSeconds;
      return new RegistryError(
        "TOOMANYREQUESTS",
        `${what} is not cached and the upstream is rate-limiting us${retry === undefined ? "" : `; retry in ${retry} s`}`,
        retry === undefined ? {} : { headers: { "retry-after": String(retry) } },
      );
    }
    case "unauthorized":
      return new RegistryError("DENIED", `the upstream refused access to ${what}: ${err.message}`, { cause: err });
    case "unreachable":
      return new RegistryError("UNAVAILABLE", `${what} is not cached and the upstream could not be reached`, { cause: err });
    case "timeout":
      return new RegistryError("UNAVAILABLE", `${what} is not cached and the upstream did not answer in time`, { cause: err });
    case "server-error": {
      const status = err.opts.status;
      return new RegistryError(
        "UNAVAILABLE",
        `${what} is not cached and the upstream failed${status === undefined ? "" : ` (it answered HTTP ${status})`}`,
        { cause: err },
      );
    }
    case "bad-response": {
      const status = err.opts.status;
      const why = err instanceof UnusableUpstreamReply
        ? `: ${err.message}`
        : status === undefined || (status >= 200 && status < 300)
        ? ""
        : ` (it answered HTTP ${status})`;
      return new RegistryError("UNAVAILABLE", `${what}: the upstream sent an unusable response${why}`, { status: 502, cause: err });
    }
  }
}
