// Every way Stowage is started on Node gives V8 the same flags as `npx stowage`. They are not
// cosmetic: they set how far V8's heap grows before a full collection, which the bench's peak
// memory and warm reads both depend on, and the build's code cache for zod is only taken under
// the same flags. NODE_OPTIONS cannot carry them, so each launcher spells them out, and this keeps
// them from drifting apart.
import t from "tap";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));
const read = (path: string) => readFileSync(`${root}${path}`, "utf8");
const v8Flags = (words: string[]) => words.filter((w) => /^--(max-semi-space-size|initial-old-space-size|heap-growing-percent)=/.test(w)).sort();

t.test("npm start, npm run stowage, the Docker image and the tests start Node with the bin's V8 flags", async (t) => {
  const shebang = read("bin/stowage.js").split("\n")[0]!;
  const expected = v8Flags(shebang.split(/\s+/));
  t.ok(expected.some((f) => f.startsWith("--initial-old-space-size=")), `the bin sets the initial old space: ${shebang}`);

  const scripts = JSON.parse(read("package.json")).scripts as Record<string, string>;
  for (const name of ["start", "stowage"]) t.same(v8Flags(scripts[name]!.split(/\s+/)), expected, `npm run ${name}`);

  const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read("Dockerfile"))?.[1];
  t.ok(entrypoint, "the Dockerfile has an exec-form ENTRYPOINT");
  t.same(v8Flags(JSON.parse(entrypoint ?? "[]")), expected, "Dockerfile ENTRYPOINT");

  const spawned = /const NODE_FLAGS = (\[[^\]]*\])/.exec(read("test/harness/stowage.ts"))?.[1];
  t.ok(spawned, "test/harness/stowage.ts starts Node Stowage with NODE_FLAGS");
  t.same(v8Flags(JSON.parse(spawned ?? "[]")), expected, "the end-to-end tests and the bench");
});
