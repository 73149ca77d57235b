// The code type-checks for both runtimes it ships on: tsc (Node's view, with @types/node)
// and deno check (Deno's own lib types, which differ in places, e.g. WebCrypto key types).
import t from "tap";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { denoBinary } from "../harness/processes.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

function run(cmd: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: root, timeout: 180_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

t.test("tsc --noEmit (src, workers, test, bench)", async (t) => {
  // lib/tsc.js, not the extensionless bin/tsc: tap's process-info hook (pirates) in the
  // child would load that ES module through require() (ERR_REQUIRE_CYCLE_MODULE).
  const tsc = fileURLToPath(new URL("../../node_modules/typescript/lib/tsc.js", import.meta.url));
  const r = await run(process.execPath, [tsc, "--noEmit", "-p", "."]);
  t.equal(r.code, 0, r.code === 0 ? "clean" : r.output.slice(0, 4000));
});

t.test("deno check of the entry point and the digest worker", async (t) => {
  const r = await run(await denoBinary(), ["check", "src/main.ts", "workers/digest-worker.ts"]);
  t.equal(r.code, 0, r.code === 0 ? "clean" : r.output.replace(/\x1b\[[0-9;]*m/g, "").slice(0, 4000));
});
