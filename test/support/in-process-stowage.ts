// Stowage started inside the test process (startServer), on any free port, with a
// fresh data dir, its log lines collected, and everything removed at teardown.
import type { Test } from "tap";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import type { Config } from "../../src/config/types.ts";
import { openKvAt } from "../../src/kv/open.ts";
import type { Kv } from "../../src/kv/kv.ts";
import { createLogger, type LogLevel } from "../../src/log.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { startServer } from "../../src/server.ts";

export type InProcessStowage = {
  url: string;
  dataDir: string;
  logs: string[];
  /** A second connection to its KV file, opened on first use, for checks on what Stowage recorded. */
  kv(): Promise<Kv>;
};

export type InProcessOptions = {
  /** Files (a config file, an htpasswd) written to a temp dir that "$DIR" in the arguments names. */
  files?: Record<string, string>;
  /** Fields the command line does not take (a metrics listener on port 0). */
  patch?: Partial<Config>;
  /** The log level (debug unless said; lower it where logging would cost time under load). */
  logLevel?: LogLevel;
};

export async function startInProcessStowage(t: Test, args: string[], opts: InProcessOptions = {}): Promise<InProcessStowage> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-unit-test-"));
  const dataDir = join(dir, "data");
  for (const [name, content] of Object.entries(opts.files ?? {})) await writeFile(join(dir, name), content);
  const loaded = loadConfig({
    argv: ["--data-dir", dataDir, ...args.map((a) => a.replaceAll("$DIR", dir))],
    env: {},
    readFile: (path) => readFileSync(path, "utf8"),
  });
  // --listen rejects port 0 (operators must pick a port); the test wants any free one.
  const config = { ...loaded, listen: { hostname: "127.0.0.1", port: 0 }, ...opts.patch };
  const logs: string[] = [];
  const server = await startServer(config, nodeRuntime, createLogger(opts.logLevel ?? "debug", (line) => logs.push(line)));
  let reader: Promise<Kv> | undefined;
  t.teardown(async () => {
    if (reader) (await reader).close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  // Opened as an instance opens a shared KV file, so it waits out the server's write locks
  // ("database is locked") instead of failing on them.
  const kv = () => (reader ??= openKvAt(nodeRuntime, { kind: "file", path: join(dataDir, "kv.sqlite3") }));
  return { url: server.url, dataDir, logs, kv };
}
