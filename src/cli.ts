/**
 * Command-line front end: turns argv into a command to run. Printing and
 * exiting belong to the entry point, so this module stays pure.
 */
import { IDENTITY_NAME } from "./auth/identities.ts";
import { SERVE_HELP } from "./config/help.ts";
import { loadConfig } from "./config/load.ts";
import { ConfigError } from "./config/problems.ts";
import type { Config } from "./config/types.ts";
import { type CollectCommand, type ContentCommand, parseCollectCommand, parseContentCommand } from "./commands/args.ts";

export { SERVE_HELP };

export type CliCommand =
  | { kind: "serve"; config: Config }
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "token-create"; name: string }
  | { kind: "token-revoke"; name: string; config: Config }
  | { kind: "user-hash" }
  | { kind: "keys-rotate"; config: Config }
  | ContentCommand
  | CollectCommand;

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
  stowage prefill REF... [--from FILE|DIR|-]... [--platform OS/ARCH[/VARIANT]]...
                [--jobs N] [--with-referrers] [serve options]
                            fetch images into the store as a pull would (every platform,
                            or those named); FILE lists references, or is any YAML/JSON
                            whose image: keys name them (Kubernetes, Compose, CI files);
                            DIR: every .yaml, .yml and .json file under it
  stowage export REF...|--all -o FILE|- [--since PREVIOUS] [--with-referrers] [serve options]
                            write cached images as an OCI image layout in a tar; --since
                            leaves out every blob of a previous bundle
  stowage import FILE|- [serve options]
                            verify a bundle and add its images to the store
  stowage gc [--dry-run] [serve options]
                            apply --cache-ttl and --max-size now (e.g. stowage gc
                            --max-size 100GiB) and clear records and objects left
                            without each other; print what is removed and the space freed
  stowage purge REF...|--repository GLOB|--upstream NAME [--dry-run] [serve options]
                            remove images: their tags, then the manifests and blobs no
                            other image refers to; the next pull fetches them anew.
                            GLOB matches UPSTREAM/REPO or HOST/REPO (* within a path
                            component, ** across); --upstream NAME=URL (with "=") still
                            configures an upstream
  stowage --version         print the version

REF is written as a client pulls it through Stowage: [UPSTREAM/]REPO[:TAG|@DIGEST], where
UPSTREAM is an upstream's name or registry host (docker.io/library/alpine:3.20, alpine,
ghcr.io/owner/image@sha256:...). These commands read the same settings as serve (flags,
STOWAGE_* environment, --config) and work on the store directly, with or without a server.
gc and purge print a table on a terminal, else one JSON line per removal; they exit 1 when
another instance is collecting (one collector runs at a time on a KV).

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
  if (command === "prefill" || command === "export" || command === "import") {
    if (rest.some(isHelp)) return { kind: "help", text: USAGE };
    return parseContentCommand(command, rest, (argv) => loadConfig({ argv, env, readFile }));
  }
  if (command === "gc" || command === "purge") {
    if (rest.some(isHelp)) return { kind: "help", text: USAGE };
    return parseCollectCommand(command, rest, (argv) => loadConfig({ argv, env, readFile }));
  }
  if (command.startsWith("-")) {
    const flag = command.split("=")[0];
    throw new ConfigError(`unknown option ${flag} (options go after the command, e.g. stowage serve ${flag} ...; see stowage --help)`);
  }
  throw new ConfigError(`unknown command ${JSON.stringify(command)} (commands: serve, prefill, export, import, gc, purge, token, user, keys, help)`);
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
