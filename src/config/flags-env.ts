/**
 * The command line and the STOWAGE_* environment as layers. Both name settings by the
 * table's flag and env columns and give strings; each is checked by the row's parser.
 */
import { parseArgs } from "node:util";
import { ConfigError, type Labeled, must, quote } from "./problems.ts";
import { setting, SETTING_KEYS, type SettingKey, SETTINGS } from "./settings.ts";
import type { Layer, LayerValues } from "./types.ts";

/** Unchecked strings by setting, in the order given, each labeled with the flag or variable. */
export type RawValues = Partial<Record<SettingKey, Labeled<string>[]>>;

const KEY_OF_FLAG = new Map<string, SettingKey>(SETTING_KEYS.map((key) => [SETTINGS[key].flag, key]));
const OPTIONS = Object.fromEntries(SETTING_KEYS.map((key) => [SETTINGS[key].flag.slice(2), { type: "string", multiple: true } as const]));
const SEE_HELP = "(see stowage serve --help)";

/** Flags that may stand alone (`--offline`), with the value they mean then. */
const BARE = new Map<string, string>(SETTING_KEYS.flatMap((key) => {
  const row = setting(key);
  return row.bare === undefined ? [] : [[row.flag, row.bare] as const];
}));

/**
 * `--offline` alone means `--offline=on`; `--offline on|off` keeps its value. Rewritten in
 * place (one argument for one), so positions still name what the operator wrote.
 */
function withBareValues(argv: string[]): string[] {
  return argv.map((arg, i) => {
    const bare = BARE.get(arg);
    if (bare === undefined) return arg;
    const next = argv[i + 1];
    return next !== undefined && /^(on|off|true|false|yes|no|1|0)$/i.test(next.trim()) ? arg : `${arg}=${bare}`;
  });
}

export function readFlags(given: string[]): RawValues {
  const argv = withBareValues(given);
  // Not strict: strict mode refuses any value that starts with "-" ("--hash-workers -1"),
  // which the setting's own check should judge, and its messages are not the operator's
  // words; the checks below say what is wrong instead.
  const { tokens } = parseArgs({ args: argv, options: OPTIONS, strict: false, allowPositionals: true, tokens: true });
  const raw: RawValues = {};
  for (const token of tokens) {
    if (token.kind === "positional") throw new ConfigError(`unexpected argument ${quote(token.value)} ${SEE_HELP}`);
    // As written, up to any "=" (whose value may be a password): short flags are split up by parseArgs.
    const written = (argv[token.index] ?? "").split("=")[0];
    const key = token.kind === "option" && token.rawName.startsWith("--") ? KEY_OF_FLAG.get(token.rawName) : undefined;
    if (token.kind !== "option" || key === undefined) throw new ConfigError(`unknown option ${written} ${SEE_HELP}`);
    const value = token.value;
    // "--listen --data-dir /x": parseArgs takes "--data-dir" as the value, but the operator forgot one.
    if (value === undefined || value === "" || (!token.inlineValue && value.startsWith("--"))) {
      throw new ConfigError(`${token.rawName} needs a value`);
    }
    (raw[key] ??= []).push({ value, label: token.rawName });
  }
  return raw;
}

export function readEnv(env: Record<string, string | undefined>): RawValues {
  const raw: RawValues = {};
  for (const key of SETTING_KEYS) {
    const row = setting(key);
    const v = env[row.env];
    // Empty variables count as unset, as compose files often declare them blank.
    if (v === undefined || v.trim() === "") continue;
    const values = row.list ? v.split(row.list.split).filter((s) => s !== "") : [v];
    if (values.length > 0) raw[key] = values.map((value) => ({ value, label: row.env }));
  }
  return raw;
}

/** Checks every value; of a setting that is not a list, only the last one counts (and is checked). */
export function layerFromRaw(raw: RawValues): Layer {
  const values: Record<string, Labeled<unknown>[]> = {};
  for (const key of SETTING_KEYS) {
    const row = setting(key);
    const given = raw[key];
    if (!given || given.length === 0) continue;
    const counted = row.list ? given : given.slice(-1);
    values[key] = counted.map(({ value, label }) => ({ value: must(label, row.parse(value)), label }));
  }
  const layer: Layer = { values: values as LayerValues };
  const twice = (names: string[]) => names.findIndex((n, i) => names.indexOf(n) !== i);
  const upstreams = layer.values.upstream ?? [];
  const u = twice(upstreams.map((e) => e.value.name));
  if (u >= 0) throw new ConfigError(`${upstreams[u]!.label}: upstream ${quote(upstreams[u]!.value.name)} is given more than once`);
  const credentials = layer.values.credentials ?? [];
  const c = twice(credentials.map((e) => e.value.name));
  if (c >= 0) throw new ConfigError(`${credentials[c]!.label}: credentials for ${quote(credentials[c]!.value.name)} are given more than once`);
  return layer;
}
