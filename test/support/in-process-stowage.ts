// Stowage started inside the test process (startServer), on any free port, with a
// fresh data dir, its log lines collected, and everything removed at teardown.
import type { Test } from "tap";
import { openKv } from "@deno/kv";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import type { Kv } from "../../src/kv/kv.ts";
import { createLogger } from "../../src/log.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { startServer } from "../../src/server.ts";

export type InProcessStowage = {
  url: string;
  dataDir: string;
  logs: string[];
  /** A second connection to its KV file, opened on first use, for checks on what Stowage recorded. */
  kv(): Promise<Kv>;
};

export async function startInProcessStowage(t: Test, args: string[]): Promise<InProcessStowage> {
  const dataDir = await mkdtemp(join(tmpdir(), "stowage-unit-test-"));
  const loaded = loadConfig({
    argv: ["--data-dir", dataDir, ...args],
    env: {},
    readFile: () => {
      throw new Error("no config file in this test");
    },
  });
  // --listen rejects port 0 (operators must pick a port); the test wants any free one.
  const config = { ...loaded, listen: { hostname: "127.0.0.1", port: 0 } };
  const logs: string[] = [];
  const server = await startServer(config, nodeRuntime, createLogger("debug", (line) => logs.push(line)));
  let reader: Promise<Kv> | undefined;
  t.teardown(async () => {
    if (reader) (await reader).close();
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });
  const kv = () => (reader ??= openKv(join(dataDir, "kv.sqlite3")) as unknown as Promise<Kv>);
  return { url: server.url, dataDir, logs, kv };
}
