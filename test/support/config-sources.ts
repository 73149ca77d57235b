/** Configuration from in-memory sources, for tests of loading, the CLI and start-up. */
import { loadConfig } from "../../src/config/load.ts";
import { ConfigError } from "../../src/config/problems.ts";
import type { Config } from "../../src/config/types.ts";

export type Env = Record<string, string | undefined>;

/** A file reader over a map of paths; a missing path fails as the disk would. */
export function readerFor(files: Record<string, string>) {
  return (path: string): string => {
    const text = files[path];
    if (text === undefined) throw new Error(`ENOENT: no such file or directory, open '${path}'`);
    return text;
  };
}

export function load(argv: string[], env: Env = {}, files: Record<string, string> = {}): Config {
  return loadConfig({ argv, env, readFile: readerFor(files) });
}

export function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("expected a ConfigError, but nothing was thrown");
}
