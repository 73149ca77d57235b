import { serve } from "@hono/node-server";
import { openKv } from "@deno/kv";
import { access, constants, mkdir, readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import type { Kv } from "../kv/kv.ts";
import type { Runtime, WorkerPort } from "./runtime.ts";

/** The part of esbuild's API used here. */
type Esbuild = {
  transform(input: string, options: { loader: "ts"; format: "esm"; target: string; sourcefile: string }): Promise<{ code: string }>;
  stop(): Promise<void>;
};

/** Each worker module as plain JavaScript in a data: URL (the workers import only node: builtins). */
const workerModules = new Map<string, Promise<URL>>();

/**
 * Put before each worker module: gives it the scope of a Web Worker (as on Deno), postMessage
 * and onmessage on globalThis, over node:worker_threads. One line, so line numbers stay right.
 */
const WEB_WORKER_SCOPE =
  `import { parentPort as stowageParentPort } from "node:worker_threads";` +
  `globalThis.postMessage = (message, transfer) => stowageParentPort.postMessage(message, transfer ?? []);` +
  `stowageParentPort.on("message", (data) => globalThis.onmessage?.({ data }));`;

/**
 * Node 20 cannot strip TypeScript types itself. Instead of registering tsx in every worker (a
 * module-hooks thread, tsx and esbuild per worker: ≈20 MiB each), strip the types of the worker
 * module once, here, with the esbuild that tsx depends on, and stop esbuild's helper process again.
 * The async API: the sync one would leave a thread behind, and a defunct process once stopped.
 */
function workerModule(script: URL): Promise<URL> {
  let url = workerModules.get(script.href);
  if (!url) {
    url = (async () => {
      // Resolved through tsx, whose dependency it is, so that it is found whatever the node_modules layout.
      const esbuild = createRequire(createRequire(import.meta.url).resolve("tsx/package.json"))("esbuild") as Esbuild;
      try {
        const { code } = await esbuild.transform(await readFile(script, "utf8"), {
          loader: "ts",
          format: "esm",
          target: `node${process.versions.node}`,
          sourcefile: fileURLToPath(script),
        });
        return new URL(`data:text/javascript,${encodeURIComponent(`${WEB_WORKER_SCOPE}${code}//# sourceURL=${script.href}\n`)}`);
      } finally {
        await esbuild.stop();
      }
    })();
    workerModules.set(script.href, url);
  }
  return url;
}

/**
 * Starts the worker as soon as its JavaScript is ready; messages posted before then wait, in order
 * (transferred buffers stay ours until they are actually posted).
 */
function spawnTsWorker(script: URL): WorkerPort {
  let worker: Worker | null = null;
  let terminated = false;
  const queued: Array<[unknown, ArrayBuffer[] | undefined]> = [];
  const onMessage: Array<(data: unknown) => void> = [];
  const onFailure: Array<(err: Error) => void> = [];
  const fail = (err: Error) => onFailure.forEach((fn) => fn(err));
  workerModule(script).then(
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
    (err) => fail(new Error(`cannot prepare worker ${script.href}: ${err instanceof Error ? err.message : String(err)}`)),
  );
  return {
    post: (message, transfer) => (worker ? worker.postMessage(message, transfer) : void queued.push([message, transfer])),
    onMessage: (fn) => void onMessage.push(fn),
    onFailure: (fn) => void onFailure.push(fn),
    terminate: async () => {
      terminated = true;
      queued.length = 0;
      if (worker) await worker.terminate();
    },
  };
}

export const nodeRuntime: Runtime = {
  name: "node",
  serve(handler, listen, opts) {
    return new Promise((resolve, reject) => {
      const server = serve({
        // @hono/node-server passes { incoming, outgoing } as the second argument: the peer address is the socket's.
        fetch: (request: Request, env: { incoming?: { socket?: { remoteAddress?: string } } }) =>
          handler(request, { remoteAddress: env?.incoming?.socket?.remoteAddress ?? null }),
        hostname: listen.hostname,
        port: listen.port,
        overrideGlobalObjects: false,
      });
      // Socket inactivity: a client that stops reading leaves its socket idle once the buffers fill.
      (server as HttpServer).setTimeout(opts.clientTimeoutMs, (socket: Socket) => {
        opts.onClientTimeout?.();
        socket.destroy();
      });
      server.once("error", reject);
      server.once("listening", () => {
        const address = server.address() as AddressInfo;
        resolve({
          hostname: address.address,
          port: address.port,
          close: () =>
            new Promise<void>((done) => {
              server.close(() => done());
              (server as { closeAllConnections?: () => void }).closeAllConnections?.();
            }),
        });
      });
    });
  },
  async openKv(path) {
    return (await openKv(path)) as unknown as Kv;
  },
  hasPlatformKv: false,
  spawnWorker: spawnTsWorker,
  async canWrite(path) {
    try {
      await mkdir(path, { recursive: true });
      await access(path, constants.W_OK);
      return true;
    } catch {
      return false;
    }
  },
  onSignal(signal, fn) {
    process.on(signal, fn);
  },
  args: () => process.argv.slice(2),
  env: () => process.env,
  setEnv: (name, value) => void (process.env[name] = value),
  nodeVersion: process.version,
  readTextFile: (path) => readFileSync(path, "utf8"),
  async readStdin() {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  },
  exit: (code) => process.exit(code),
  upstreamFetch(guard) {
    // undici is loaded at the first upstream request, not at start-up (~0.15 s and ~20 MiB here).
    let ready: Promise<(input: string | URL | Request, init?: RequestInit) => Promise<Response>> | null = null;
    const load = async () => {
      const { Agent, buildConnector, fetch: undiciFetch } = await import("undici");
      // undici's own connector does TLS (SNI and certificate checks against the name in
      // the URL); we only choose the address it connects to.
      const connectTo = buildConnector({});
      const agent = new Agent({
        connect: (opts, callback) => {
          const port = Number(opts.port) || (opts.protocol === "https:" ? 443 : 80);
          guard(opts.hostname, port).then(
            (target) => connectTo({ ...opts, hostname: target.address }, callback),
            (err: Error) => callback(err, null),
          );
        },
      });
      return (input: string | URL | Request, init?: RequestInit) =>
        undiciFetch(input as Parameters<typeof undiciFetch>[0], { ...(init as Parameters<typeof undiciFetch>[1]), dispatcher: agent }) as unknown as Promise<Response>;
    };
    return (async (input: string | URL | Request, init?: RequestInit) => (await (ready ??= load()))(input, init)) as typeof fetch;
  },
  pinsUpstreamAddresses: true,
};
