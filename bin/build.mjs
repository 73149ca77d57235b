#!/usr/bin/env node
// `npm run build` (and `npm ci`, through `prepare`): Stowage for Node as plain JavaScript in dist/,
// so that nothing compiles TypeScript at run time (tsx cost ~45 MiB and about a second per start).
//
//   dist/main.js                  the command (bin/stowage.js runs it), with its chunks beside it
//   dist/workers/NAME.js          the worker threads (src/runtime/node-workers.ts looks there)
//   dist/yaml.cjs, dist/zod.cjs   two packages on their own (see lazyYaml and zodCached below)
//
// Bundled, because Node 20 loads many small ES modules slowly (zod alone is ~80 files and takes
// twice as long to load as its bundle). Split, so that what only some commands need (prefill,
// export, import, gc, the S3 store) is loaded only by them. Identifiers are kept, so stack
// traces in the log stay readable. Deno runs the TypeScript in src/ directly and needs none of this.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const outdir = process.argv[2] ?? `${root}dist`;

/** Whether an import is Stowage's own (src/), not a dependency's, wherever the checkout lives (even under a "src" directory). */
const fromOurSource = (importer) => resolve(importer).startsWith(resolve(root, "src") + sep);

const common = {
  absWorkingDir: root,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: "linked",
  logLevel: "warning",
  metafile: true,
};

/** Every file this build wrote, by absolute path (what the prune at the end keeps). */
const written = new Set();
const record = (result) => {
  for (const out of Object.keys(result.metafile.outputs)) written.add(resolve(root, out));
};

/**
 * A plugin that hands every import of `filter` made from a file `from` accepts a module of our
 * own instead, with the JavaScript `contents`: how the build swaps out the parts below.
 */
function replaceImport(name, filter, from, contents) {
  return {
    name,
    setup(b) {
      b.onResolve({ filter }, (args) => (from(args.importer) ? { path: name, namespace: "stowage" } : undefined));
      b.onLoad({ filter: new RegExp(`^${name}$`), namespace: "stowage" }, () => ({ loader: "js", contents }));
    },
  };
}

/**
 * zod re-exports all its ~40 locales (350 KiB, a third of what start-up loads) as `z.locales`,
 * which Stowage never uses: its messages are English, zod's default, which zod imports itself.
 */
const zodEnglishOnly = replaceImport("zod-locales", /^\.\.\/locales\/index\.js$/, (importer) => /[\\/]node_modules[\\/]zod[\\/]/.test(importer), "export {};");

/**
 * @deno/kv is bundled like the rest (left external, Node loaded its ~40 small modules one by one:
 * ~40 ms of every start), except its native addon. The package finds the addon through a
 * CommonJS loader, `_napi_index.cjs`, which a split ES bundle cannot hand back as named exports
 * and which asks `process.report` for the libc (~6 ms). It is replaced by this small one; the
 * `@deno/kv-<platform>` package stays external and is loaded from node_modules as is.
 */
const denoKvAddon = replaceImport("deno-kv-addon", /^\.\/_napi_index\.cjs$/, (importer) => /[\\/]node_modules[\\/]@deno[\\/]kv[\\/]/.test(importer), `
  import { createRequire } from "node:module";
  const { platform, arch } = process;
  const name = "@deno/kv-" + platform + "-" + arch + (platform === "linux" ? "-gnu" : platform === "win32" ? "-msvc" : "");
  let addon;
  try {
    addon = createRequire(import.meta.url)(name);
  } catch (err) {
    throw new Error("the KV's native addon " + name + " cannot be loaded (" + String(err?.message ?? err).split("\\n")[0] + "); " +
      "@deno/kv ships it for glibc Linux, macOS and Windows on x64 and arm64 only: elsewhere give --kv a KV Connect URL, or run Stowage on Deno");
  }
  export const { open, close, snapshotRead, atomicWrite, dequeueNextMessage, finishMessage, startWatch, dequeueNextWatchMessage, endWatch } = addon;
`);

/**
 * yaml (160 KiB, about a sixth of what `serve` loads) is needed only to read a config file, by
 * `token create` and by prefill's image lists. src/ imports it as usual; the bundle gets a stand-in
 * whose functions load it on their first call, from yaml.cjs beside main.js (built on its own
 * below). The load is a synchronous require, as reading the config file is synchronous.
 * A name src/ imports from yaml that is missing here fails the build.
 */
const lazyYaml = replaceImport("lazy-yaml", /^yaml$/, fromOurSource, `
  import { createRequire } from "node:module";
  let yaml;
  const load = () => (yaml ??= createRequire(import.meta.url)("./yaml.cjs"));
  export function parseDocument(...args) { return load().parseDocument(...args); }
  export function parseAllDocuments(...args) { return load().parseAllDocuments(...args); }
  export function stringify(...args) { return load().stringify(...args); }
`);

/**
 * zod is a third of what `serve` loads, and compiling it was a good part of every start (in a
 * profile of the start, V8's module compiling went from 78 to 44 ms without it). So it is built
 * on its own as zod.cjs, and the bundle gets a stand-in that runs it through node:vm with a V8
 * code cache (zod.cjs.cache) made at build time: V8 then reads compiled code instead of
 * compiling. V8 takes the cache only from the same Node and the same V8 flags (it is made with the
 * launcher's, bin/stowage.js); otherwise it compiles as before (`cachedDataRejected`), slower
 * but the same. Identifiers are kept there too, so stack traces name zod's functions and zod.cjs.
 */
/**
 * How zod.cjs is run, both by the stand-in and by the build when it makes the cache: V8 takes a
 * code cache only for the very same source, so the wrapping is written once, here. Expects `file`,
 * `cachedData` and `requireZod` in scope; leaves `script` and `module`.
 */
const RUN_ZOD = `
  const script = new Script("(function (exports, require, module) {" + readFileSync(file, "utf8") + "\\n})", { filename: file, cachedData });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, requireZod, module);
`;
const zodCached = replaceImport("zod-cached", /^zod$/, fromOurSource, `
  import { readFileSync } from "node:fs";
  import { createRequire } from "node:module";
  import { fileURLToPath } from "node:url";
  import { Script } from "node:vm";
  const file = fileURLToPath(new URL("./zod.cjs", import.meta.url));
  let cachedData;
  try {
    cachedData = readFileSync(file + ".cache");
  } catch {}
  const requireZod = createRequire(file);
  ${RUN_ZOD}
  export const z = module.exports.z;
`);

// Written over in place, never emptied first: a Stowage started from dist/ (a test run next to
// this build) may still load one of its chunks later. Chunk names carry a hash of their content;
// the stale ones are pruned at the end.
record(await build({
  ...common,
  entryPoints: { main: "src/main.ts" },
  outdir,
  splitting: true,
  plugins: [denoKvAddon, lazyYaml, zodCached],
  // Some bundled packages are CommonJS and `require` node's built-ins, which an ES module lacks.
  banner: { js: `import { createRequire as __stowageRequire } from "node:module"; const require = __stowageRequire(import.meta.url);` },
  chunkNames: "[name]-[hash]",
  external: [
    // @deno/kv's native addon (see denoKvAddon), loaded from node_modules as is.
    "@deno/kv-*",
    // Large and loaded only with an S3 store.
    "@aws-sdk/*",
    // Only the TypeScript (source) side of src/runtime/node-workers.ts uses these.
    "tsx",
    "esbuild",
  ],
}));
record(await build({
  ...common,
  entryPoints: { "workers/digest-worker": "workers/digest-worker.ts", "workers/password-worker": "workers/password-worker.ts" },
  outdir,
  // Run from a data: URL (src/runtime/node-workers.ts), so they may import node's built-ins only.
  external: ["node:*"],
}));
// yaml on its own, for the stand-in above (lazyYaml).
record(await build({
  ...common,
  stdin: { contents: `module.exports = require("yaml");`, resolveDir: root, sourcefile: "yaml-entry.cjs", loader: "js" },
  format: "cjs",
  outfile: `${outdir}/yaml.cjs`,
}));
// zod on its own, for the stand-in above (zodCached), and its code cache, made by a Node with the
// launcher's V8 flags: running zod's start-up code first puts what it compiles in the cache too.
record(await build({
  ...common,
  stdin: { contents: `export { z } from "zod";`, resolveDir: root, sourcefile: "zod-entry.js", loader: "js" },
  format: "cjs",
  outfile: `${outdir}/zod.cjs`,
  plugins: [zodEnglishOnly],
}));
const launcherFlags = readFileSync(`${root}bin/stowage.js`, "utf8").split("\n")[0].split(/\s+/).filter((w) => w.startsWith("--"));
execFileSync(process.execPath, [...launcherFlags, "-e", `
  const { readFileSync, writeFileSync } = require("node:fs");
  const { Script } = require("node:vm");
  const file = ${JSON.stringify(resolve(root, outdir, "zod.cjs"))};
  const cachedData = undefined;
  const requireZod = require;
  ${RUN_ZOD}
  writeFileSync(file + ".cache", script.createCachedData());
`], { stdio: "inherit" });
written.add(resolve(root, outdir, "zod.cjs.cache"));

// What earlier builds left and this one did not write (chunk names change with their content) is
// removed once a day old: a Stowage started from an earlier build may still load its chunks lazily.
const STALE_MS = 24 * 60 * 60 * 1000;
for (const dir of [resolve(root, outdir), resolve(root, outdir, "workers")]) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = resolve(dir, entry.name);
    if (!entry.isFile() || written.has(path)) continue;
    if (Date.now() - statSync(path).mtimeMs > STALE_MS) rmSync(path, { force: true });
  }
}
