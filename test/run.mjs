#!/usr/bin/env node
// Runs the whole suite with tap and ends with the one-line summary CI reads:
// "N passed, N failed[, N skipped]". Extra arguments go to tap (e.g. a file).
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
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

// tap runs one file at a time on 2 cores. Files that mostly wait (for a TTL to pass, for a killed
// collector's lease to expire) run in a second lane beside that sequence, so their waits overlap
// with the other files' work; their output is printed after the first lane's. Only for the whole
// suite; STOWAGE_TEST_LANES=1 runs it all in one lane.
const ALONGSIDE = ["e2e/gc.test.ts"].map((f) => fileURLToPath(new URL(f, import.meta.url)));
const lanes =
  args.length === 0 && process.env.STOWAGE_TEST_LANES !== "1"
    ? [testFiles(fileURLToPath(new URL(".", import.meta.url))).filter((f) => !ALONGSIDE.includes(f)), ALONGSIDE.filter((f) => existsSync(f))].filter((l) => l.length > 0)
    : [args];
const results = await Promise.all(
  lanes.map((laneArgs, i) => {
    let output = "";
    const buffered = [];
    const done = run([tapBin, "--reporter=tap", ...laneArgs], "pipe", (chunk) => {
      if (i === 0) process.stdout.write(chunk);
      else buffered.push(chunk);
      output += chunk;
      if (output.length > 1_000_000) output = output.slice(-100_000);
    });
    return done.then((code) => ({ code, output: () => output, buffered }));
  }),
);
for (const r of results.slice(1)) process.stdout.write(r.buffered.join(""));

// tap's final comment: "# { total: N, pass: N, fail: N, skip: N, todo: N }"
let [passed, failed, skipped] = [0, 0, 0];
for (const { code, output } of results) {
  let last = null;
  for (const m of output().matchAll(/#\s*\{\s*total:\s*(\d+)([^}]*)\}/g)) last = m;
  const count = (name) => Number(new RegExp(`${name}:\\s*(\\d+)`).exec(last?.[2] ?? "")?.[1] ?? 0);
  passed += count("pass");
  failed += !last || code !== 0 ? Math.max(count("fail"), 1) : count("fail");
  skipped += count("skip") + count("todo");
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed === 0 ? 0 : 1);

/** The suite's files, as tap's `include` (test/**\/*.test.ts) finds them: absolute paths, sorted. */
function testFiles(dir) {
  const found = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) found.push(...testFiles(path));
    else if (e.name.endsWith(".test.ts")) found.push(path);
  }
  return found.sort();
}

function run(argv, stdout, onData) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, argv, { stdio: ["ignore", stdout, "inherit"] });
    if (onData) child.stdout.on("data", (d) => onData(d.toString()));
    child.on("close", (c) => resolve(c ?? 1));
  });
}
