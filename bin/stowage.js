#!/usr/bin/env -S node --max-semi-space-size=2 --initial-old-space-size=32 --heap-growing-percent=50
// The `stowage` command on Node: the JavaScript that `npm run build` (run by `npm ci`) writes to
// dist/. From a checkout without a build, `npm run stowage -- ARGS` runs the TypeScript instead.
try {
  await import("../dist/main.js");
} catch (err) {
  const missing = err?.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes("/dist/main.js");
  if (!missing) throw err;
  console.error("stowage: dist/main.js is missing: build it with `npm run build` (npm ci runs it too)");
  process.exit(2);
}
