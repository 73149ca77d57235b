/**
 * Documentation generated from the settings table: `stowage serve --help` and the
 * README's options table (a test checks that the README holds exactly that table).
 */
import { SECTIONS, type Setting, setting, SETTING_KEYS } from "./settings.ts";

/** Help is plain text: the table's `backticks` are for Markdown only. */
const plain = (text: string) => text.replace(/`/g, "");

function envText(row: Setting): string {
  return row.list ? `${row.env} (${row.list.splitText})` : row.env;
}

function optionHelp(row: Setting): string {
  return [
    `  ${row.flag} ${row.metavar}`,
    ...row.about.map((line) => `      ${line}`),
    `      Environment: ${envText(row)}`,
    `      Default: ${plain(row.shown)}`,
    `      Example: ${row.example}`,
  ].join("\n");
}

/** A row's line in the config-file example: its file key and the value of its example. */
function fileLine(row: Setting): string[] {
  if (row.file === null) return [];
  const value = row.fileExample ?? row.example.slice(row.flag.length + 1);
  return [`  ${row.file}: ${row.list ? `[${value}]` : value}`];
}

/** What the file holds beyond the table's rows, after each section's rows. */
const FILE_EXTRAS: Readonly<Record<string, string>> = {
  Storage: `
  s3:                        # optional; else the AWS environment variables
    accessKeyId: AKIA...
    secretAccessKey: ...`,
  Upstreams: `
  upstreams:
    - name: docker.io
      url: https://registry-1.docker.io
      username: someone      # optional; then exactly one of:
      passwordEnv: HUB_TOKEN #   password, passwordEnv (a variable name)
                             #   or passwordFile (a path; content is trimmed)
    - name: harbor.lan
      url: https://harbor.lan
      allowPrivateNetwork: true  # its redirects may lead to private addresses
      offline: true              # never contacted: serve what is stored`,
  "Access control": `
  tokenService: stowage       # the service= of challenges and aud of tokens
  users:                      # hashes from: stowage user hash
    - name: alice
      passwordHash: $2b$10$...
  robots:                     # from: stowage token create NAME
    - name: ci
      secretHash: $2b$10$...
  rules:                      # the first rule matching a repository decides;
    - upstream: docker.io     # no match: every signed-in identity, not anonymous
      repository: library/*   # * stays within a path component, ** does not
      pull: [anonymous, "*"]  # "*" is every signed-in identity
    - repository: team/**     # upstream defaults to every upstream
      pull: [alice, ci, github-ci]
  oidc:                       # CI jobs sign in with their id_token as the password
    - issuer: https://token.actions.githubusercontent.com
      audience: https://cache.example.com
      identity: github-ci     # the name rules use for such jobs
      claims:                 # every condition must match (globs); required,
        repository_owner: my-org  # unless allowAnyClaims: true (any job of that CI)
        ref: refs/heads/**
  admins: [alice]             # may use the operator page /-/ (users, robots, oidc identities)`,
};

const FILE_NOTES: Readonly<Record<string, string>> = {
  "Access control": " (all optional; any of these needs accessControl: true or htpasswd)",
};

const options = SECTIONS.map((section) => `${section.title}:\n\n${section.keys.map((key) => optionHelp(setting(key))).join("\n\n")}`);
const fileExample = SECTIONS.map((section) =>
  [`  # ${section.title}${FILE_NOTES[section.title] ?? ""}`, ...section.keys.flatMap((key) => fileLine(setting(key)))].join("\n") +
  (FILE_EXTRAS[section.title] ?? "")
);

export const SERVE_HELP = `Usage: stowage serve [options]

Every option can also be set with an environment variable or in a config file.
Precedence: command-line option > environment variable > config file > default.
Both "--option value" and "--option=value" work.

${options.join("\n\n")}

  -h, --help
      Show this help.

Config file (YAML or JSON; unknown keys are rejected; a duration may also be a
number of seconds):

${fileExample.join("\n\n")}
`;

const cell = (text: string) => text.replace(/\|/g, "\\|");

/** The README's options table, one line a row. */
export function optionsTable(): string {
  return [
    "| option | environment | default |",
    "| --- | --- | --- |",
    ...SETTING_KEYS.map(setting).map((row) =>
      `| \`${cell(`${row.flag} ${row.metavar}`)}\`${row.list ? " (repeatable)" : ""} | \`${row.env}\` | ${cell(row.shown)} |`
    ),
  ].join("\n");
}
