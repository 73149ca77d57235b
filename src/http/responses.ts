import { errorBody, RegistryError } from "../registry/errors.ts";
import { jsonResponse as json, jsonTextResponse } from "../util/json-response.ts";

/** Every registry response says which API it speaks; clients check it. */
export const API_VERSION_HEADER = { "docker-distribution-api-version": "registry/2.0" } as const;

export function errorResponse(err: RegistryError, method: string): Response {
  const detail = err.detail;
  const body = errorBody([{ code: err.code, message: err.message, ...(detail === undefined ? {} : { detail }) }]);
  return jsonTextResponse(body, { status: err.status, headers: { ...API_VERSION_HEADER, ...err.headers }, head: method === "HEAD" });
}

export function jsonResponse(value: unknown, status = 200, method = "GET"): Response {
  return json(value, { status, headers: { ...API_VERSION_HEADER }, head: method === "HEAD" });
}
