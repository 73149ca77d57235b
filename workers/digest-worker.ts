// Hashes blob bytes off the main thread so that digest verification never
// competes with serving clients. Messages (see src/digest/worker-pool.ts):
//   in:  { op: "start", id, algorithm } | { op: "update", id, data: Uint8Array } | { op: "finish", id } | { op: "discard", id }
//   (`data` is transferred to us)
//   out: { op: "ack", id, bytes, buffer? } after each update (buffer: the transferred one, returned for reuse),
//        { op: "digest", id, hex } after finish
import { createHash, type Hash } from "node:crypto";

type Inbound =
  | { op: "start"; id: number; algorithm: "sha256" | "sha512" }
  | { op: "update"; id: number; data: Uint8Array }
  | { op: "finish"; id: number }
  | { op: "discard"; id: number };

// A Web Worker's scope on every runtime (src/runtime/ provides it on Node).
const scope = globalThis as unknown as { postMessage(m: unknown, t?: ArrayBuffer[]): void; onmessage: ((e: { data: unknown }) => void) | null };
const port = {
  postMessage: (m: unknown, t?: ArrayBuffer[]) => scope.postMessage(m, t ?? []),
  listen: (fn: (msg: Inbound) => void) => (scope.onmessage = (e) => fn(e.data as Inbound)),
};

const jobs = new Map<number, Hash>();

port.listen((msg: Inbound) => {
  switch (msg.op) {
    case "start":
      jobs.set(msg.id, createHash(msg.algorithm));
      break;
    case "update": {
      jobs.get(msg.id)?.update(msg.data);
      // Give a transferred buffer back for reuse: fresh 1 MiB buffers cost page faults and GC.
      const buffer = msg.data.buffer;
      if (buffer instanceof ArrayBuffer) port.postMessage({ op: "ack", id: msg.id, bytes: msg.data.byteLength, buffer }, [buffer]);
      else port.postMessage({ op: "ack", id: msg.id, bytes: msg.data.byteLength });
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
