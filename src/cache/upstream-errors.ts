import { RegistryError } from "../registry/errors.ts";
import { UpstreamError } from "../upstream/upstream-error.ts";

/** Turns an upstream failure into the error our client sees, in the OCI shape. */
export function registryErrorFor(err: unknown, subject: "blob" | "manifest" | "repository", what: string): RegistryError {
  if (err instanceof RegistryError) return err;
  if (!(err instanceof UpstreamError)) {
    return new RegistryError("UNAVAILABLE", `could not get ${what}: ${err instanceof Error ? err.message : String(err)}`, {
      status: 500,
    });
  }
  switch (err.failure) {
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
      return new RegistryError("DENIED", `the upstream refused access to ${what}: ${err.message}`);
    case "unreachable":
    case "timeout":
    case "server-error":
      return new RegistryError("UNAVAILABLE", `${what} is not cached and the upstream is unavailable: ${err.message}`);
    case "bad-response":
      return new RegistryError("UNAVAILABLE", `${what}: the upstream sent an unusable response: ${err.message}`, { status: 502 });
  }
}
