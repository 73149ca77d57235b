/** Merging layers (file < environment < flags) into one Config, and the checks across settings. */
import type { AccessConfig } from "../auth/access-config.ts";
import type { Credentials, Upstream } from "../upstream/upstream.ts";
import type { S3Credentials, Storage } from "../storage/storage-config.ts";
import { ConfigError, type Labeled, quote } from "./problems.ts";
import { DEFAULTS, setting, SETTING_KEYS, type SettingKey, type SettingValue } from "./settings.ts";
import type { Config, Layer } from "./types.ts";
import type { UpstreamDef } from "./upstream-values.ts";

const DOCKER_HUB_HOSTS = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/** The entries of the highest-precedence layer that gives `key` (layers lowest first). */
function highest<K extends SettingKey>(layers: Layer[], key: K): Labeled<SettingValue<K>>[] | undefined {
  let found: Labeled<SettingValue<K>>[] | undefined;
  for (const layer of layers) found = layer.values[key] ?? found;
  return found;
}

/** The value that counts for a setting that is not a list: the last one of the highest layer. */
function pick<K extends SettingKey>(layers: Layer[], key: K): Labeled<SettingValue<K>> | undefined {
  return highest(layers, key)?.at(-1);
}

function extra<K extends "tokenService" | "identities" | "rules" | "oidc" | "s3Credentials" | "admins">(layers: Layer[], key: K): Layer[K] | undefined {
  let found: Layer[K] | undefined;
  for (const layer of layers) if (layer[key] !== undefined) found = layer[key];
  return found;
}

function toUpstream(def: UpstreamDef, credentials: Credentials | undefined, allowPrivateNetwork: boolean, offline: boolean): Upstream {
  const dockerHub = DOCKER_HUB_HOSTS.includes(def.host);
  const upstream: Upstream = {
    name: def.name,
    url: def.url,
    host: def.host,
    aliases: dockerHub ? [...DOCKER_HUB_HOSTS] : [def.host],
    dockerHub,
    allowPrivateNetwork,
  };
  if (credentials) upstream.credentials = credentials;
  if (offline) upstream.offline = true;
  return upstream;
}

/** Lowest-precedence layer first. */
export function merge(layers: Layer[]): Config {
  // Settings with a Config field of their own: the highest source wins, as a whole for lists.
  const plain: Record<string, unknown> = {};
  for (const key of SETTING_KEYS) {
    const row = setting(key);
    if (row.field === undefined) continue;
    const given = highest(layers, key);
    plain[row.field] = given === undefined ? (row.list ? [] : row.default) : row.list ? given.map((e) => e.value) : given.at(-1)?.value;
  }

  // Later sources replace the URL of a name in place; new names append.
  const defs = new Map<string, UpstreamDef>();
  for (const layer of layers) for (const def of layer.values.upstream ?? []) defs.set(def.value.name, def.value);
  if (defs.size === 0) {
    const { name, url } = DEFAULTS.upstream;
    defs.set(name, { name, url, host: new URL(url).host });
  }
  const known = () => [...defs.keys()].join(", ");

  const creds = new Map<string, Labeled<Credentials>>();
  for (const layer of layers) for (const c of layer.values.credentials ?? []) creds.set(c.value.name, { value: c.value.credentials, label: c.label });
  for (const [name, c] of creds) {
    if (!defs.has(name)) {
      throw new ConfigError(`${c.label}: credentials are given for ${quote(name)}, which is not a configured upstream (upstreams: ${known()})`);
    }
  }

  const privateNetwork = new Set(layers.flatMap((l) => l.privateNetworkUpstreams ?? []));
  // --offline covers every upstream; offline: true in an upstream's entry covers that one.
  const offline = new Set(layers.flatMap((l) => l.offlineUpstreams ?? []));
  const allOffline = plain.offline === true;
  const upstreams = [...defs.values()].map((d) => toUpstream(d, creds.get(d.name)?.value, privateNetwork.has(d.name), allOffline || offline.has(d.name)));
  const chosen = pick(layers, "defaultUpstream");
  if (chosen && !defs.has(chosen.value)) {
    throw new ConfigError(`${chosen.label}: ${quote(chosen.value)} is not a configured upstream (upstreams: ${known()})`);
  }

  const access = accessFrom(layers);
  return {
    ...(plain as Omit<Config, "access" | "upstreams" | "defaultUpstream" | "storage">),
    ...(access ? { access } : {}),
    upstreams,
    defaultUpstream: chosen?.value ?? upstreams[0]?.name ?? DEFAULTS.upstream.name,
    storage: storageFrom(pick(layers, "storage")?.value, extra(layers, "s3Credentials")),
  };
}

function storageFrom(storage: Storage | undefined, credentials: Labeled<S3Credentials> | undefined): Storage {
  const chosen = storage ?? { kind: "fs" as const };
  if (!credentials) return chosen;
  if (chosen.kind !== "s3") {
    throw new ConfigError(`${credentials.label}: S3 credentials are given, but blobs are stored on the filesystem; set storage: s3://BUCKET (or --storage), or remove s3:`);
  }
  return { ...chosen, credentials: credentials.value };
}

/** Access control is on when asked for, or implied by --htpasswd; htpasswd users are added later (they need a file). */
function accessFrom(layers: Layer[]): AccessConfig | undefined {
  const asked = pick(layers, "accessControl");
  const htpasswd = pick(layers, "htpasswd");
  if (asked && !asked.value && htpasswd) {
    throw new ConfigError(`${htpasswd.label} turns access control on, but ${asked.label} turns it off; remove one of them`);
  }
  if (!(asked?.value ?? htpasswd !== undefined)) {
    // Users or rules without access control would silently leave every pull anonymous.
    if (asked === undefined && (extra(layers, "identities") ?? extra(layers, "rules") ?? extra(layers, "oidc") ?? extra(layers, "admins")) !== undefined) {
      throw new ConfigError(
        "the config file has users, robots, rules, oidc or admins, but access control is off: add accessControl: true (or --access-control on); to turn it off on purpose, give --access-control off",
      );
    }
    return undefined;
  }
  const identities = [...(extra(layers, "identities") ?? [])];
  for (const [i, e] of identities.entries()) {
    if (identities.findIndex((o) => o.name === e.name) !== i) {
      throw new ConfigError(`${e.source}: ${quote(e.name)} is defined more than once (users and robots share one name space)`);
    }
  }
  return {
    service: extra(layers, "tokenService") ?? DEFAULTS.tokenService,
    issuer: DEFAULTS.tokenIssuer,
    tokenTtlSeconds: pick(layers, "tokenTtl")?.value ?? DEFAULTS.tokenTtlSeconds,
    identities,
    rules: extra(layers, "rules") ?? [],
    oidc: extra(layers, "oidc") ?? [],
    admins: extra(layers, "admins")?.value ?? [],
    ...(extra(layers, "admins") ? { adminsSource: extra(layers, "admins")!.label } : {}),
  };
}

/**
 * Every name in admins: must be someone who can sign in: a user (config file or htpasswd), a
 * robot, or the identity an oidc provider maps its tokens to. A typo would otherwise lock the
 * operator out of the page without a word. Run once htpasswd users are added.
 */
export function checkAdmins(access: AccessConfig): void {
  const known = new Set([...access.identities.map((i) => i.name), ...access.oidc.map((o) => o.identity)]);
  const unknown = access.admins.filter((name) => !known.has(name));
  if (unknown.length === 0) return;
  const names = [...known];
  throw new ConfigError(
    `${access.adminsSource ?? "admins"}: ${unknown.map((n) => quote(n)).join(", ")} ${unknown.length === 1 ? "is not a known user, robot or oidc identity" : "are not known users, robots or oidc identities"}` +
      ` (known: ${names.length > 0 ? names.join(", ") : "none"})`,
  );
}
