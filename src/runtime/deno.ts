import type { Kv } from "../kv/kv.ts";
import type { Runtime, WorkerName, WorkerPort } from "./runtime.ts";

// Only the Deno globals this adapter touches, so the file type-checks under Node's tsc too.
type DenoApi = {
  serve(
    options: { hostname: string; port: number; onListen?: (addr: { hostname: string; port: number }) => void },
    handler: (request: Request, info: { remoteAddr?: { transport?: string; hostname?: string } }) => Promise<Response>,
  ): { finished: Promise<void>; shutdown(): Promise<void>; addr: { hostname: string; port: number } };
  openKv(path?: string): Promise<unknown>;
  permissions: { query(desc: { name: "write"; path?: string }): Promise<{ state: string }> };
  mkdir(path: string, options?: { recursive?: boolean }): Promise<void>;
  addSignalListener(signal: string, fn: () => void): void;
  readTextFileSync(path: string): string;
  stdin: { readable: ReadableStream<Uint8Array> };
  env: { toObject(): Record<string, string>; set(name: string, value: string): void };
  args: string[];
  exit(code: number): never;
};
const Deno = (globalThis as unknown as { Deno: DenoApi }).Deno;

/** Deno Deploy has no worker threads; there `new Worker` throws, and we hash inline. */
function workersAvailable(): boolean {
  return typeof (globalThis as { Worker?: unknown }).Worker === "function";
}

/**
 * Deno's own Web Workers: transferring buffers to them is fast, while its
 * node:worker_threads emulation copies slowly (15 MB/s measured here).
 */
function spawnWebWorker(name: WorkerName): WorkerPort {
  // Deno runs the TypeScript source (src/runtime/ -> workers/).
  const worker = new Worker(new URL(`../../workers/${name}.ts`, import.meta.url).href, { type: "module" });
  return {
    post: (message, transfer) => worker.postMessage(message, transfer ?? []),
    onMessage: (fn) => worker.addEventListener("message", (e) => fn((e as MessageEvent).data)),
    onFailure: (fn) => {
      worker.addEventListener("error", (e) => {
        e.preventDefault();
        fn(new Error((e as ErrorEvent).message || "worker failed"));
      });
    },
    terminate: async () => worker.terminate(),
  };
}

export const denoRuntime: Runtime = {
  name: "deno",
  serve(handler, listen, _opts) {
    return new Promise((resolve) => {
      const server = Deno.serve(
        {
          hostname: listen.hostname,
          port: listen.port,
          onListen: (addr) => resolve({ hostname: addr.hostname, port: addr.port, close: () => server.shutdown() }),
        },
        // The peer address, for throttling failed sign-ins (Unix sockets have none).
        (request, info) => handler(request, { remoteAddress: info?.remoteAddr?.hostname ?? null }),
      );
    });
  },
  async openKv(path) {
    return (await Deno.openKv(path)) as Kv;
  },
  hasPlatformKv: true,
  spawnWorker: workersAvailable() ? spawnWebWorker : null,
  async canWrite(path) {
    const status = await Deno.permissions.query({ name: "write", path });
    if (status.state !== "granted") return false;
    try {
      await Deno.mkdir(path, { recursive: true });
      return true;
    } catch {
      return false;
    }
  },
  onSignal(signal, fn) {
    Deno.addSignalListener(signal, fn);
  },
  // Deno Deploy gives no command line: there, serve, configured by STOWAGE_* variables.
  args: () => (Deno.args.length === 0 && Deno.env.toObject().DENO_DEPLOYMENT_ID ? ["serve"] : Deno.args),
  env: () => Deno.env.toObject(),
  setEnv: (name, value) => Deno.env.set(name, value),
  nodeVersion: null,
  readTextFile: (path) => Deno.readTextFileSync(path),
  readStdin: () => new Response(Deno.stdin.readable).text(),
  exit: (code) => Deno.exit(code),
  upstreamFetch(guard) {
    return async (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      await guard(url.hostname, Number(url.port) || (url.protocol === "https:" ? 443 : 80));
      return fetch(input, init);
    };
  },
  pinsUpstreamAddresses: false,
};
