// Registry API errors and their JSON body (OCI distribution spec, "Error Codes").

export type ErrorCode =
  | "BLOB_UNKNOWN"
  | "DIGEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "MANIFEST_INVALID"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "UNAUTHORIZED"
  | "DENIED"
  | "UNSUPPORTED"
  | "TOOMANYREQUESTS"
  | "UNAVAILABLE"
  | "RANGE_INVALID"
  | "SIZE_INVALID";

const DEFAULT_STATUS: Record<ErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  MANIFEST_UNKNOWN: 404,
  NAME_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_INVALID: 400,
  NAME_INVALID: 400,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  UNAVAILABLE: 503,
  RANGE_INVALID: 416,
};

export function defaultStatus(code: ErrorCode): number {
  return DEFAULT_STATUS[code];
}

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail?: unknown;
  /** Extra response headers, e.g. WWW-Authenticate for 401 or Retry-After for 429. */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { status?: number; detail?: unknown; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "RegistryError";
    this.code = code;
    this.status = opts.status ?? defaultStatus(code);
    if (opts.detail !== undefined) this.detail = opts.detail;
    this.headers = { ...opts.headers };
  }
}

/** {"errors":[{"code","message","detail"}]}; detail is left out when undefined. */
export function errorBody(errors: Array<{ code: ErrorCode; message: string; detail?: unknown }>): string {
  return JSON.stringify({
    errors: errors.map(({ code, message, detail }) =>
      detail === undefined ? { code, message } : { code, message, detail },
    ),
  });
}
