import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { processIdleCollector } from "./node-idle-gc.ts";
import type { WorkerName, WorkerPort } from "./runtime.ts";

/** The part of esbuild's API used here. */
type Esbuild = {
  transform(input: string, options: { loader: "ts"; format: "esm"; target: string; sourcefile: string }): Promise<{ code: string }>;
  stop(): Promise<void>;
};

/** Each worker module as plain JavaScript in a data: URL (the workers import only node: builtins). */
const workerModules = new Map<WorkerName, Promise<URL>>();

/**
 * Put before each worker module: gives it the scope of a Web Worker (as on Deno), postMessage
 * and onmessage on globalThis, over node:worker_threads. One line, so line numbers stay right.
 */
const WEB_WORKER_SCOPE =
  `import { parentPort as stowageParentPort } from "node:worker_threads";` +
  `globalThis.postMessage = (message, transfer) => stowageParentPort.postMessage(message, transfer ?? []);` +
  `stowageParentPort.on("message", (data) => globalThis.onmessage?.({ data }));`;

/**
 * Whether this adapter runs as TypeScript (the tests, `npm run stowage`) or from the build in
 * dist/ (`npm start`, the `stowage` bin, the image), where the workers are built JavaScript too.
 */
const FROM_SOURCE = import.meta.url.endsWith(".ts");

/** A worker's JavaScript and where it came from (for stack traces). */
async function workerCode(name: WorkerName): Promise<{ code: string; href: string }> {
  if (!FROM_SOURCE) {
    // bin/build.mjs writes dist/workers/NAME.js next to the chunk this code is bundled into.
    const built = new URL(`./workers/${name}.js`, import.meta.url);
    return { code: await readFile(built, "utf8"), href: built.href };
  }
  // Node 20 cannot strip TypeScript types itself. Instead of registering tsx in every worker (a
  // module-hooks thread, tsx and esbuild per worker: ≈20 MiB each), strip the types of the worker
  // module once, here, with the esbuild that tsx depends on, and stop esbuild's helper process again.
  // The async API: the sync one would leave a thread behind, and a defunct process once stopped.
  // One at a time: esbuild's service is one per process, and stopping it while another worker's
  // transform is in flight fails that one ("The service was stopped").
  const turn = stripping.then(() => stripTypes(name));
  stripping = turn.then(() => undefined, () => undefined);
  return turn;
}

/** Where the previous type stripping is; the next one starts after it. */
let stripping: Promise<void> = Promise.resolve();

async function stripTypes(name: WorkerName): Promise<{ code: string; href: string }> {
  const source = new URL(`../../workers/${name}.ts`, import.meta.url);
  // Resolved through tsx, whose dependency it is, so that it is found whatever the node_modules layout.
  const esbuild = createRequire(createRequire(import.meta.url).resolve("tsx/package.json"))("esbuild") as Esbuild;
  try {
    const { code } = await esbuild.transform(await readFile(source, "utf8"), {
      loader: "ts",
      format: "esm",
      target: `node${process.versions.node}`,
      sourcefile: fileURLToPath(source),
    });
    return { code, href: source.href };
  } finally {
    await esbuild.stop();
  }
}

function workerModule(name: WorkerName): Promise<URL> {
  let url = workerModules.get(name);
  if (!url) {
    url = workerCode(name).then(({ code, href }) => new URL(`data:text/javascript,${encodeURIComponent(`${WEB_WORKER_SCOPE}${code}//# sourceURL=${href}\n`)}`));
    workerModules.set(name, url);
    // A failure is not kept: the next worker of that name tries again.
    url.catch(() => workerModules.delete(name));
  }
  return url;
}

/**
 * Starts the worker as soon as its JavaScript is ready; messages posted before then wait, in order
 * (transferred buffers stay ours until they are actually posted).
 */
export function spawnNodeWorker(name: WorkerName): WorkerPort {
  let worker: Worker | null = null;
  let terminated = false;
  const queued: Array<[unknown, ArrayBuffer[] | undefined]> = [];
  const onMessage: Array<(data: unknown) => void> = [];
  const onFailure: Array<(err: Error) => void> = [];
  const fail = (err: Error) => onFailure.forEach((fn) => fn(err));
  workerModule(name).then(
    (url) => {
      if (terminated) return;
      const w = new Worker(url, {
        // None of this process's flags: `--import tsx` (how the tests and `npm start` run Stowage)
        // would register tsx again in the worker, and V8 flags are refused in a worker's execArgv.
        execArgv: [],
        // The digest worker keeps next to nothing on its heap (blob bytes arrive in transferred buffers).
        resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 32 },
      });
      w.on("message", (data) => onMessage.forEach((fn) => fn(data)));
      w.on("error", (err) => fail(err instanceof Error ? err : new Error(String(err))));
      w.on("exit", (code) => fail(new Error(`worker exited with code ${code}`)));
      worker = w;
      for (const [message, transfer] of queued.splice(0)) w.postMessage(message, transfer);
    },
    (err) => fail(new Error(`cannot prepare worker ${name}: ${err instanceof Error ? err.message : String(err)}`)),
  );
  return {
    post: (message, transfer) => (worker ? worker.postMessage(message, transfer) : void queued.push([message, transfer])),
    onMessage: (fn) => void onMessage.push(fn),
    onFailure: (fn) => void onFailure.push(fn),
    terminate: async () => {
      terminated = true;
      queued.length = 0;
      if (worker) {
        await worker.terminate();
        processIdleCollector().threadStopped();
      }
    },
  };
}

