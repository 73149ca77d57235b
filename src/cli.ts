/**
 * Command-line front end: turns argv into a command to run. Printing and
 * exiting belong to the entry point, so this module stays pure.
 */
import { IDENTITY_NAME } from "./auth/identities.ts";
import { SERVE_HELP } from "./config/help.ts";
import { loadConfig } from "./config/load.ts";
import { ConfigError } from "./config/problems.ts";
import type { Config } from "./config/types.ts";

export { SERVE_HELP };

export type CliCommand =
  | { kind: "serve"; config: Config }
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "token-create"; name: string }
  | { kind: "token-revoke"; name: string; config: Config }
  | { kind: "user-hash" }
  | { kind: "keys-rotate"; config: Config };

export const USAGE = `Stowage: a pull-through cache for container images (OCI distribution API)

Usage:
  stowage serve [options]   run the cache server
  stowage help [serve]      show this help, or the help for serve
  stowage token create NAME print a new robot token secret (once) and the config
                            entry with its bcrypt hash
  stowage token revoke NAME [serve options]
                            revoke every refresh (identity) token of user or robot NAME
  stowage user hash         read a password from standard input, print its bcrypt hash
  stowage keys rotate [serve options]
                            sign new tokens with a new key; tokens signed with the old
                            key stay valid until they expire
  stowage --version         print the version

Run "stowage serve --help" for every option of serve.
`;

const isHelp = (arg: string) => arg === "--help" || arg === "-h";

export function parseCommand(
  argv: string[],
  env: Record<string, string | undefined>,
  readFile: (p: string) => string,
): CliCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || isHelp(command)) {
    return { kind: "help", text: rest[0] === "serve" ? SERVE_HELP : USAGE };
  }
  if (command === "--version") return { kind: "version" };
  if (command === "serve") {
    if (rest.some(isHelp)) return { kind: "help", text: SERVE_HELP };
    return { kind: "serve", config: loadConfig({ argv: rest, env, readFile }) };
  }
  if (command === "token" || command === "user" || command === "keys") return adminCommand(command, rest, env, readFile);
  if (command.startsWith("-")) {
    const flag = command.split("=")[0];
    throw new ConfigError(`unknown option ${flag} (options go after the command, e.g. stowage serve ${flag} ...; see stowage --help)`);
  }
  throw new ConfigError(`unknown command ${JSON.stringify(command)} (commands: serve, token, user, keys, help)`);
}

function adminCommand(
  command: "token" | "user" | "keys",
  args: string[],
  env: Record<string, string | undefined>,
  readFile: (p: string) => string,
): CliCommand {
  const [sub, ...rest] = args;
  const full = `${command} ${sub ?? ""}`.trim();
  if (args.some(isHelp)) return { kind: "help", text: USAGE };
  const name = (): string => {
    const n = rest[0];
    if (n === undefined || n.startsWith("-")) throw new ConfigError(`stowage ${full} needs a NAME (e.g. stowage ${full} ci-bot)`);
    if (!IDENTITY_NAME.test(n) || n === "anonymous") {
      throw new ConfigError(`invalid name ${JSON.stringify(n.slice(0, 80))}: use letters, digits, '.', '_', '@' or '-' (not "anonymous")`);
    }
    return n;
  };
  switch (full) {
    case "token create":
      if (rest.length > 1) throw new ConfigError(`stowage token create takes only a NAME`);
      return { kind: "token-create", name: name() };
    case "token revoke":
      return { kind: "token-revoke", name: name(), config: loadConfig({ argv: rest.slice(1), env, readFile }) };
    case "user hash":
      if (rest.length > 0) throw new ConfigError("stowage user hash reads the password from standard input and takes no arguments");
      return { kind: "user-hash" };
    case "keys rotate":
      return { kind: "keys-rotate", config: loadConfig({ argv: rest, env, readFile }) };
  }
  throw new ConfigError(`unknown command "stowage ${full}" (see stowage --help)`);
}
