/**
 * The config file's shape (zod): every row of the settings table that has a file key,
 * plus the parts only the file can hold (upstreams with their credentials, s3 keys,
 * users, robots, rules, oidc). Unknown keys are refused, naming the allowed ones.
 */
import { z } from "zod";
import { BCRYPT_HASH, IDENTITY_NAME } from "../auth/identities.ts";
import { fromString, type Parsed, quote } from "./problems.ts";
import { setting, SETTING_KEYS } from "./settings.ts";
import { parseIssuerUrl, parseUpstreamName, parseUpstreamUrl } from "./upstream-values.ts";

/** Adapts a value parser to zod so file errors carry their path. */
function zValue<T>(parse: (raw: unknown) => Parsed<T>) {
  return z.unknown().transform((raw, ctx): T => {
    const r = parse(raw);
    if (r.ok) return r.value;
    ctx.addIssue({ code: "custom", message: r.problem });
    return z.NEVER;
  });
}

/** The table's rows, each under its file key; a list setting is a YAML/JSON list there. */
const fromTable: Record<string, z.ZodType> = Object.fromEntries(
  SETTING_KEYS.flatMap((key) => {
    const row = setting(key);
    if (row.file === null) return [];
    const one = zValue(row.fileParse ?? row.parse);
    return [[row.file, (row.list ? z.array(one, { error: row.list.fileError }) : one).nullish()]];
  }),
);

// Secrets get a type check only: their value must never reach a message.
const secretString = z.string({ error: "expected a string (quote it in YAML)" }).min(1, { error: "must not be empty" });

export const fileUpstreamSchema = z.strictObject({
  name: zValue(fromString(parseUpstreamName)),
  url: zValue(fromString(parseUpstreamUrl)),
  username: secretString.nullish(),
  password: secretString.nullish(),
  passwordEnv: z.string({ error: "expected the name of an environment variable" }).min(1).nullish(),
  passwordFile: z.string({ error: "expected a file path" }).min(1).nullish(),
  allowPrivateNetwork: z.boolean({ error: "expected true or false" }).nullish(),
  /** Never contact this upstream (air-gapped: serve what prefill or import stored). */
  offline: z.boolean({ error: "expected true or false" }).nullish(),
});
export type FileUpstream = z.output<typeof fileUpstreamSchema>;

const identityName = z
  .string({ error: "expected a name" })
  .regex(IDENTITY_NAME, { error: "use letters, digits, '.', '_', '@' or '-' (at most 128)" })
  .refine((n) => n !== "anonymous", { error: '"anonymous" is reserved for clients without credentials' });
// Never echo the value: a mistake here is often a plain password pasted in.
const bcryptHash = z.string({ error: "expected a bcrypt hash (create one with stowage user hash)" }).regex(BCRYPT_HASH, { error: "expected a bcrypt hash ($2y$/$2a$/$2b$; create one with stowage user hash)" });
const glob = z.string().min(1).max(256).regex(/^[A-Za-z0-9._\-/*?]+$/, { error: "expected a name pattern with * or ** wildcards" });

const fileUserSchema = z.strictObject({ name: identityName, passwordHash: bcryptHash });
const fileRobotSchema = z.strictObject({ name: identityName, secretHash: bcryptHash });

const fileOidcSchema = z.strictObject({
  issuer: zValue(fromString(parseIssuerUrl)),
  audience: z.string().min(1).max(512),
  jwksUrl: zValue(fromString(parseIssuerUrl)).nullish(),
  identity: identityName,
  claims: z.record(z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/), z.string().min(1).max(512)).default({}),
  /** Accept every token of this issuer and audience; without it, claims must say whose. */
  allowAnyClaims: z.boolean({ error: "expected true or false" }).default(false),
});

const fileRuleSchema = z.strictObject({
  upstream: glob.default("*"),
  repository: glob,
  pull: z.array(z.string().min(1), { error: 'expected a list of identities, "anonymous" or "*"' }),
});

const fileS3Schema = z.strictObject({
  accessKeyId: secretString,
  secretAccessKey: secretString,
  sessionToken: secretString.nullish(),
});

export const fileSchema = z.strictObject({
  ...fromTable,
  upstreams: z.array(fileUpstreamSchema, { error: "expected a list of {name, url} entries" }).nullish(),
  tokenService: z.string().regex(/^[\x21-\x7e]{1,128}$/, { error: "expected a short printable name" }).nullish(),
  users: z.array(fileUserSchema).nullish(),
  robots: z.array(fileRobotSchema).nullish(),
  rules: z.array(fileRuleSchema).nullish(),
  oidc: z.array(fileOidcSchema).nullish(),
  /** Identities (users, robots, oidc identity names) allowed on the operator page /-/. */
  admins: z.array(identityName, { error: "expected a list of user, robot or oidc identity names" }).nullish(),
  s3: fileS3Schema.nullish(),
});

const NESTED: Record<string, { shape: object }> = {
  upstreams: fileUpstreamSchema,
  users: fileUserSchema,
  robots: fileRobotSchema,
  rules: fileRuleSchema,
  oidc: fileOidcSchema,
  s3: fileS3Schema,
};

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out;
}

/** One zod issue as an operator-facing line: the file, the path in it, the problem. */
export function zodProblem(file: string, issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  const prefix = where === "" ? file : `${file}: ${where}`;
  if (issue.code === "unrecognized_keys") {
    const allowed = Object.keys(where === "" ? fileSchema.shape : (NESTED[String(issue.path[0])] ?? fileUpstreamSchema).shape);
    const keys = issue.keys.map((k) => quote(k)).join(", ");
    return `${prefix}: unknown key ${keys} (allowed: ${allowed.join(", ")})`;
  }
  if (issue.code === "invalid_type" && issue.path.length === 0) {
    return `${file}: expected a mapping of settings at the top level`;
  }
  return `${prefix}: ${issue.message}`;
}
