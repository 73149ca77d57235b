/** What loading the configuration produces, and the layers it is merged from. */
import type { AccessConfig } from "../auth/access-config.ts";
import type { IdentityEntry } from "../auth/identities.ts";
import type { OidcProvider } from "../auth/oidc.ts";
import type { Rule } from "../auth/rules.ts";
import type { Upstream } from "../upstream/upstream.ts";
import type { S3Credentials, Storage } from "../storage/storage-config.ts";
import type { Labeled } from "./problems.ts";
import type { PlainConfig, SettingKey, SettingValue } from "./settings.ts";

/**
 * The whole configuration. Only the composition root (server.ts, cli.ts, main.ts) reads
 * it; it hands each part the settings that part needs. The fields of plain settings
 * (listen, dataDir, tagTtlSeconds...) come from the settings table.
 */
export type Config = PlainConfig & {
  access?: AccessConfig;
  upstreams: Upstream[];
  defaultUpstream: string;
  /** Where blobs and manifests live. */
  storage: Storage;
};

/** Every entry a source gives for each setting, in order, each with where it came from. */
export type LayerValues = { [K in SettingKey]?: Labeled<SettingValue<K>>[] };

/** One source (file, environment, flags), before merging; only the file has the optional parts. */
export type Layer = {
  values: LayerValues;
  s3Credentials?: Labeled<S3Credentials>;
  /** Upstreams whose redirects may reach private addresses. */
  privateNetworkUpstreams?: string[];
  /** Upstreams never to contact (offline: true in their entry). */
  offlineUpstreams?: string[];
  tokenService?: string;
  identities?: IdentityEntry[];
  rules?: Rule[];
  oidc?: OidcProvider[];
  /** Who may use the operator page when access control is on. */
  admins?: Labeled<string[]>;
};

/** Where configuration comes from; injected, so every path is testable without the disk. */
export type ConfigSources = {
  argv: string[];
  env: Record<string, string | undefined>;
  readFile: (path: string) => string;
};
