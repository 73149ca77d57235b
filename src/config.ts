/**
 * Transitional: the configuration lives in src/config/ (settings table, parsers, file,
 * merge, load, redaction). Kept only while callers move to those modules.
 */
export type { AccessConfig } from "./auth/access-config.ts";
export type { KvLocation } from "./kv/location.ts";
export type { LogLevel } from "./log.ts";
export type { Listen } from "./runtime/runtime.ts";
export type { S3Credentials, Storage } from "./storage/storage-config.ts";
export type { Credentials, ResolveOverride, Upstream } from "./upstream/upstream.ts";
export { loadConfig } from "./config/load.ts";
export { ConfigError } from "./config/problems.ts";
export { redactedConfig } from "./config/redact.ts";
export { DEFAULTS } from "./config/settings.ts";
export type { Config, ConfigSources } from "./config/types.ts";
