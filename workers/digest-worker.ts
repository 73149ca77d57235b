// Hashes blob bytes off the main thread so that digest verification never
// competes with serving clients. Messages (see src/digest/worker-pool.ts):
//   in:  { op: "start", id, algorithm } | { op: "update", id, data: Uint8Array } | { op: "finish", id } | { op: "discard", id }
//   (`data` is either transferred to us or a view of shared memory the sender no longer changes)
//   out: { op: "ack", id, bytes } after each update, { op: "digest", id, hex } after finish
import { createHash, type Hash } from "node:crypto";
import { parentPort } from "node:worker_threads";

type Inbound =
  | { op: "start"; id: number; algorithm: "sha256" | "sha512" }
  | { op: "update"; id: number; data: Uint8Array }
  | { op: "finish"; id: number }
  | { op: "discard"; id: number };

const port = parentPort;
if (!port) throw new Error("digest-worker must run as a worker thread");

const jobs = new Map<number, Hash>();

port.on("message", (msg: Inbound) => {
  switch (msg.op) {
    case "start":
      jobs.set(msg.id, createHash(msg.algorithm));
      break;
    case "update": {
      jobs.get(msg.id)?.update(msg.data);
      port.postMessage({ op: "ack", id: msg.id, bytes: msg.data.byteLength });
      break;
    }
    case "finish": {
      const hash = jobs.get(msg.id);
      jobs.delete(msg.id);
      port.postMessage({ op: "digest", id: msg.id, hex: hash ? hash.digest("hex") : null });
      break;
    }
    case "discard":
      jobs.delete(msg.id);
      break;
  }
});
