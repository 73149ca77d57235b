/** --htpasswd: users from an Apache htpasswd file join the identities of access control. */
import type { AccessConfig } from "../auth/access-config.ts";
import { parseHtpasswd } from "../auth/identities.ts";
import { readText } from "./file.ts";
import { ConfigError, type Labeled, quote } from "./problems.ts";
import type { ConfigSources } from "./types.ts";

export function addHtpasswdUsers(access: AccessConfig, file: Labeled<string>, src: ConfigSources): void {
  const parsed = parseHtpasswd(readText(file.label, file.value, src));
  const first = parsed.problems[0];
  if (first) throw new ConfigError(`${file.label}: ${quote(file.value)} ${first}`);
  for (const e of parsed.entries) {
    if (access.identities.some((o) => o.name === e.name)) {
      throw new ConfigError(`${file.label}: user ${quote(e.name)} is also defined in the config file; keep one`);
    }
    access.identities.push({ name: e.name, kind: "user", hash: e.hash, source: file.value });
  }
}
