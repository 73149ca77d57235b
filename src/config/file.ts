/** The config file as a layer: read, parsed as JSON or YAML, checked against the schema. */
import { parseDocument } from "yaml";
import type { Credentials } from "../upstream/upstream.ts";
import { type FileUpstream, fileSchema, zodProblem } from "./file-schema.ts";
import { ConfigError, type Labeled, quote } from "./problems.ts";
import { setting, SETTING_KEYS } from "./settings.ts";
import type { ConfigSources, Layer, LayerValues } from "./types.ts";

export function readText(label: string, path: string, src: ConfigSources): string {
  try {
    return src.readFile(path);
  } catch (e) {
    const why = e instanceof Error ? (e.message.split("\n")[0] ?? "") : String(e);
    throw new ConfigError(`${label}: cannot read ${quote(path)} (${why})`);
  }
}

/** Parse JSON or YAML without ever echoing file content (it may hold passwords). */
function parseFileText(file: string, text: string): unknown {
  if (text.trimStart().startsWith("{")) {
    try {
      return JSON.parse(text);
    } catch (e) {
      const pos = /at position (\d+)/.exec(e instanceof Error ? e.message : "");
      throw new ConfigError(`${file}: invalid JSON${pos ? ` at character ${pos[1]}` : ""}; fix the syntax or use YAML`);
    }
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const err = doc.errors[0];
  if (err) {
    const at = err.linePos?.[0];
    // The parser's message can quote tokens from the file; keep only the description.
    const what = (err.message.split("\n")[0] ?? "")
      .replace(/ at line \d+, column \d+:?$/, "")
      .replace(/:\s*".*$/, "");
    throw new ConfigError(`${file}: invalid YAML${at ? ` at line ${at.line}, column ${at.col}` : ""}: ${what}`);
  }
  return doc.toJS() ?? {};
}

function fileCredentials(file: string, index: number, u: FileUpstream, src: ConfigSources): Credentials | undefined {
  const where = `${file}: upstreams[${index}]`;
  const sources = [u.password, u.passwordEnv, u.passwordFile].filter((v) => v != null).length;
  if (sources > 1) throw new ConfigError(`${where}: use only one of password, passwordEnv and passwordFile`);
  if (u.username == null) {
    if (sources > 0) throw new ConfigError(`${where}: a password is given without a username; add username`);
    return undefined;
  }
  if (sources === 0) {
    throw new ConfigError(`${where}: username is given without a password; add password, passwordEnv or passwordFile`);
  }
  let password: string;
  if (u.passwordEnv != null) {
    const v = src.env[u.passwordEnv];
    if (v === undefined || v === "") {
      throw new ConfigError(`${where}.passwordEnv: environment variable ${u.passwordEnv} is not set or empty`);
    }
    password = v;
  } else if (u.passwordFile != null) {
    password = readText(`${where}.passwordFile`, u.passwordFile, src).trim();
    if (password === "") throw new ConfigError(`${where}.passwordFile: file ${quote(u.passwordFile)} is empty`);
  } else {
    password = u.password ?? "";
  }
  return { username: u.username, password };
}

/** `label` names where the file's path came from (--config or STOWAGE_CONFIG). */
export function fileLayer(label: string, file: string, src: ConfigSources): Layer {
  const text = readText(label, file, src);
  const result = fileSchema.safeParse(parseFileText(file, text));
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new ConfigError(issue ? zodProblem(file, issue) : `${file}: invalid configuration`);
  }
  const f = result.data;
  const values: Record<string, Labeled<unknown>[]> = {};
  for (const key of SETTING_KEYS) {
    const row = setting(key);
    const value = row.file === null ? undefined : (f as Record<string, unknown>)[row.file];
    if (value == null) continue;
    const label = `${file}: ${row.file}`;
    values[key] = row.list ? (value as unknown[]).map((v) => ({ value: v, label })) : [{ value, label }];
  }
  const layer: Layer = { values: values as LayerValues };

  if (f.tokenService != null) layer.tokenService = f.tokenService;
  if (f.s3 != null) {
    const { accessKeyId, secretAccessKey, sessionToken } = f.s3;
    layer.s3Credentials = { value: { accessKeyId, secretAccessKey, ...(sessionToken != null ? { sessionToken } : {}) }, label: `${file}: s3` };
  }
  if (f.users != null || f.robots != null) {
    layer.identities = [
      ...(f.users ?? []).map((u) => ({ name: u.name, kind: "user" as const, hash: u.passwordHash, source: `${file}: users` })),
      ...(f.robots ?? []).map((r) => ({ name: r.name, kind: "robot" as const, hash: r.secretHash, source: `${file}: robots` })),
    ];
  }
  if (f.rules != null) layer.rules = f.rules;
  if (f.admins != null) layer.admins = { value: f.admins, label: `${file}: admins` };
  if (f.oidc != null) {
    f.oidc.forEach((o, i) => {
      if (Object.keys(o.claims).length === 0 && !o.allowAnyClaims) {
        // Without a condition, any job of that CI (on GitHub Actions: any repository's workflow) would pass.
        throw new ConfigError(
          `${file}: oidc[${i}] (issuer ${o.issuer}, identity ${o.identity}) has no claims: conditions, so every token that issuer signs for this audience would be accepted; ` +
            "add claims (e.g. repository_owner: my-org), or set allowAnyClaims: true if that is really meant",
        );
      }
    });
    layer.oidc = f.oidc.map((o) => ({ issuer: o.issuer, audience: o.audience, jwksUrl: o.jwksUrl ?? null, identity: o.identity, claims: o.claims }));
  }
  const upstreams: Labeled<{ name: string; url: string; host: string }>[] = [];
  const credentials: Labeled<{ name: string; credentials: Credentials }>[] = [];
  (f.upstreams ?? []).forEach((u, i) => {
    const first = upstreams.findIndex((d) => d.value.name === u.name);
    if (first >= 0) {
      throw new ConfigError(`${file}: upstreams[${i}].name: duplicate upstream ${quote(u.name)} (also upstreams[${first}])`);
    }
    upstreams.push({ value: { name: u.name, ...u.url }, label: `${file}: upstreams[${i}]` });
    if (u.allowPrivateNetwork) (layer.privateNetworkUpstreams ??= []).push(u.name);
    if (u.offline) (layer.offlineUpstreams ??= []).push(u.name);
    const given = fileCredentials(file, i, u, src);
    if (given) credentials.push({ value: { name: u.name, credentials: given }, label: `${file}: upstreams[${i}]` });
  });
  if (upstreams.length > 0) layer.values.upstream = upstreams;
  if (credentials.length > 0) layer.values.credentials = credentials;
  return layer;
}
