import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { createLogger } from "../../src/log.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";
import { startServer } from "../../src/server.ts";
import { StartupError } from "../../src/services.ts";
import { load } from "../support/config-sources.ts";

t.test("start-up: where the disk or the KV cannot be used, the operator is told what to change", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-startup-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const start = (argv: string[], runtime = nodeRuntime) =>
    startServer({ ...load(["--data-dir", dir, ...argv]), listen: { hostname: "127.0.0.1", port: 0 } }, runtime, createLogger("error", () => {}));
  // Root can write anywhere, so a read-only disk is the runtime's answer, as under deno --deny-write.
  const readOnly = { ...nodeRuntime, canWrite: async () => false };

  await t.rejects(start([], readOnly), { constructor: StartupError, message: /--data-dir .* is not writable.*--storage s3:\/\/BUCKET/ }, "filesystem store without a writable disk");
  await t.rejects(start(["--kv", "default"]), { constructor: StartupError, message: /no platform KV on Node.*--kv/ }, "--kv default on Node");
  await t.rejects(
    start(["--kv", join(dir, "missing", "dir", "kv.sqlite3")]),
    { constructor: StartupError, message: /cannot open the KV store \(file .*\).*--kv/ },
    "a KV file that cannot be created",
  );
  const server = await start(["--kv", ":memory:", "--hash-workers", "0"]);
  await server.close();
  t.pass("--kv :memory: with --hash-workers 0 starts");
});
