#!/usr/bin/env node
// Runs the whole suite with tap and ends with the one-line summary CI reads:
// "N passed, N failed[, N skipped]". Extra arguments go to tap (e.g. a file).
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const tapBin = fileURLToPath(new URL("../node_modules/tap/dist/esm/run.mjs", import.meta.url));
const args = process.argv.slice(2);

// tap compiles its plugin set on first use; do it up front so a fresh clone
// never starts with the default (TypeScript) plugin that package.json disables.
// Only when needed: a build deletes the compiled plugins first, so a second run
// started meanwhile (several test runs at once) would find them missing.
const built = fileURLToPath(new URL("../node_modules/@tapjs/test/test-built/", import.meta.url));
const pluginsReady = () => {
  try {
    return existsSync(`${built}dist/esm/index.js`) && !/from ['"]@tapjs\/typescript['"]/.test(readFileSync(`${built}src/index.ts`, "utf8"));
  } catch {
    return false;
  }
};
if (!pluginsReady()) {
  await run([tapBin, "build"], "ignore");
  // The ESM half of the build can land a few seconds after tap build exits.
  for (let waited = 0; !pluginsReady() && waited < 60_000; waited += 250) await new Promise((r) => setTimeout(r, 250));
}

// The end-to-end tests start Stowage as `npm start` does, from dist/: build it from the source as it is now.
if ((await run([fileURLToPath(new URL("../bin/build.mjs", import.meta.url))], "inherit")) !== 0) {
  console.log("0 passed, 1 failed (npm run build failed: see above)");
  process.exit(1);
}

let output = "";
const code = await run([tapBin, "--reporter=tap", ...args], "pipe", (chunk) => {
  process.stdout.write(chunk);
  output += chunk;
  if (output.length > 1_000_000) output = output.slice(-100_000);
});

// tap's final comment: "# { total: N, pass: N, fail: N, skip: N, todo: N }"
const summary = /#\s*\{\s*total:\s*(\d+)([^}]*)\}/g;
let last = null;
for (const m of output.matchAll(summary)) last = m;
const count = (name) => Number(new RegExp(`${name}:\\s*(\\d+)`).exec(last?.[2] ?? "")?.[1] ?? 0);
const passed = count("pass");
let failed = count("fail");
const skipped = count("skip") + count("todo");
if (!last || code !== 0) failed = Math.max(failed, 1);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(code === 0 && failed === 0 ? 0 : 1);

function run(argv, stdout, onData) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, argv, { stdio: ["ignore", stdout, "inherit"] });
    if (onData) child.stdout.on("data", (d) => onData(d.toString()));
    child.on("close", (c) => resolve(c ?? 1));
  });
}
