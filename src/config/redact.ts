import type { Config } from "./types.ts";

/** The configuration for the start-up log, with every password replaced. */
export function redactedConfig(c: Config): unknown {
  return {
    ...c,
    ...(c.access
      ? { access: { ...c.access, identities: c.access.identities.map((i) => `${i.kind} ${i.name} (${i.source})`) } }
      : {}),
    ...(c.storage.kind === "s3" && c.storage.credentials
      ? { storage: { ...c.storage, credentials: { accessKeyId: "***", secretAccessKey: "***" } } }
      : {}),
    upstreams: c.upstreams.map((u) =>
      u.credentials ? { ...u, credentials: { username: u.credentials.username, password: "***" } } : { ...u },
    ),
  };
}
