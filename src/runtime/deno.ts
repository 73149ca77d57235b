import { Worker } from "node:worker_threads";
import type { Kv } from "../kv/kv.ts";
import type { Runtime } from "./runtime.ts";

// Only the Deno globals this adapter touches, so the file type-checks under Node's tsc too.
type DenoApi = {
  serve(
    options: { hostname: string; port: number; onListen?: (addr: { hostname: string; port: number }) => void },
    handler: (request: Request) => Promise<Response>,
  ): { finished: Promise<void>; shutdown(): Promise<void>; addr: { hostname: string; port: number } };
  openKv(path?: string): Promise<unknown>;
  permissions: { query(desc: { name: "write"; path?: string }): Promise<{ state: string }> };
  mkdir(path: string, options?: { recursive?: boolean }): Promise<void>;
  addSignalListener(signal: string, fn: () => void): void;
  readTextFileSync(path: string): string;
  stdin: { readable: ReadableStream<Uint8Array> };
  env: { toObject(): Record<string, string> };
  args: string[];
  exit(code: number): never;
};
const Deno = (globalThis as unknown as { Deno: DenoApi }).Deno;

/** Deno Deploy has no worker threads; there `new Worker` throws, and we hash inline. */
function workersAvailable(): boolean {
  return typeof (globalThis as { Worker?: unknown }).Worker === "function";
}

export const denoRuntime: Runtime = {
  name: "deno",
  serve(handler, listen) {
    return new Promise((resolve) => {
      const server = Deno.serve(
        {
          hostname: listen.hostname,
          port: listen.port,
          onListen: (addr) => resolve({ hostname: addr.hostname, port: addr.port, close: () => server.shutdown() }),
        },
        handler,
      );
    });
  },
  async openKv(path) {
    return (await Deno.openKv(path)) as Kv;
  },
  spawnWorker: workersAvailable() ? (script) => new Worker(script) : null,
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
  args: () => Deno.args,
  env: () => Deno.env.toObject(),
  readTextFile: (path) => Deno.readTextFileSync(path),
  readStdin: () => new Response(Deno.stdin.readable).text(),
  exit: (code) => Deno.exit(code),
};
