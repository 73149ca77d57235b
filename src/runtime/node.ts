import { serve } from "@hono/node-server";
import { openKv } from "@deno/kv";
import { access, constants, mkdir } from "node:fs/promises";
import { readFileSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { Worker } from "node:worker_threads";
import type { Kv } from "../kv/kv.ts";
import type { Runtime, WorkerPort } from "./runtime.ts";

/** Node 20 cannot load TypeScript by itself: a worker first registers tsx, then imports the module. */
function spawnTsWorker(script: URL): WorkerPort {
  const source = `import("tsx/esm/api").then((m) => { m.register(); return import(${JSON.stringify(script.href)}); })`;
  const worker = new Worker(source, { eval: true });
  return {
    post: (message, transfer) => worker.postMessage(message, transfer),
    onMessage: (fn) => void worker.on("message", fn),
    onFailure: (fn) => {
      worker.on("error", (err) => fn(err instanceof Error ? err : new Error(String(err))));
      worker.on("exit", (code) => fn(new Error(`worker exited with code ${code}`)));
    },
    terminate: () => worker.terminate().then(() => {}),
  };
}

export const nodeRuntime: Runtime = {
  name: "node",
  serve(handler, listen, opts) {
    return new Promise((resolve, reject) => {
      const server = serve({ fetch: handler, hostname: listen.hostname, port: listen.port, overrideGlobalObjects: false });
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
  readTextFile: (path) => readFileSync(path, "utf8"),
  async readStdin() {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  },
  exit: (code) => process.exit(code),
};
