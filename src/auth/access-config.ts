import type { IdentityEntry } from "./identities.ts";
import type { OidcProvider } from "./oidc.ts";
import type { Rule } from "./rules.ts";

/** Present only when access control is on; absent means anonymous pulls of everything. */
export type AccessConfig = {
  /** The `service` of challenges and the `aud` of tokens. */
  service: string;
  issuer: string;
  tokenTtlSeconds: number;
  identities: IdentityEntry[];
  rules: Rule[];
  /** CI identity federation: tokens of these issuers are accepted as passwords. */
  oidc: OidcProvider[];
  /** Identities allowed on the operator page /-/ (the config file's admins:). */
  admins: string[];
  /** Where admins: came from, for messages. */
  adminsSource?: string;
};
