// The Node peer runs the built JavaScript, as `npm start`, the `stowage` bin and the image do: the
// bench builds it first (`npm run build`). If that cannot be done, Stowage on Node runs through
// tsx instead, and the report says so, since start-up and memory then include compiling.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { PROJECT_ROOT } from "../test/harness/processes.ts";
import type { NodeRuntime } from "./peers.ts";

const BUILD_TIMEOUT_MS = 5 * 60_000;

export async function prepareNodeRuntime(build: boolean): Promise<{ runtime: NodeRuntime; note: string | null }> {
  // The harness learns "node-built" from test/harness/stowage.ts; older trees only know tsx.
  const harness = await readFile(join(PROJECT_ROOT, "test", "harness", "stowage.ts"), "utf8").catch(() => "");
  if (!harness.includes('"node-built"')) return { runtime: "node", note: "Stowage on Node ran through tsx: the test harness cannot start the built JavaScript yet" };
  if (build) {
    const failure = await new Promise<string | null>((resolve) => {
      execFile("npm", ["run", "build"], { cwd: PROJECT_ROOT, timeout: BUILD_TIMEOUT_MS, killSignal: "SIGKILL" }, (err, _out, stderr) =>
        resolve(err ? `${err.message.split("\n")[0]} ${stderr.split("\n").slice(-3).join(" / ")}`.trim() : null),
      );
    });
    if (failure) return { runtime: "node", note: `Stowage on Node ran through tsx: npm run build failed (${failure.slice(0, 300)})` };
  }
  if (!existsSync(join(PROJECT_ROOT, "dist", "main.js")) || !existsSync(join(PROJECT_ROOT, "bin", "stowage.js"))) {
    return { runtime: "node", note: "Stowage on Node ran through tsx: there is no dist/main.js (npm run build)" };
  }
  return { runtime: "node-built", note: build ? null : "--no-build: Stowage on Node ran the dist/ already there" };
}
