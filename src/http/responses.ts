import { errorBody, RegistryError } from "../registry/errors.ts";

/** Every registry response says which API it speaks; clients check it. */
export const API_VERSION_HEADER = { "docker-distribution-api-version": "registry/2.0" } as const;

export function errorResponse(err: RegistryError, method: string): Response {
  const headers = new Headers({ ...API_VERSION_HEADER, ...err.headers, "content-type": "application/json" });
  const detail = err.detail;
  const body = errorBody([{ code: err.code, message: err.message, ...(detail === undefined ? {} : { detail }) }]);
  headers.set("content-length", String(new TextEncoder().encode(body).byteLength));
  return new Response(method === "HEAD" ? null : body, { status: err.status, headers });
}

export function jsonResponse(value: unknown, status = 200, method = "GET"): Response {
  const body = JSON.stringify(value);
  return new Response(method === "HEAD" ? null : body, {
    status,
    headers: {
      ...API_VERSION_HEADER,
      "content-type": "application/json",
      "content-length": String(new TextEncoder().encode(body).byteLength),
    },
  });
}
