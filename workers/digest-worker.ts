// Hashes blob bytes off the main thread so that digest verification never
// competes with serving clients. Messages (see src/digest/worker-pool.ts):
//   in:  { op: "start", id, algorithm, file? } | { op: "update", id, data: Uint8Array } | { op: "file", id, upTo }
//        | { op: "finish", id } | { op: "discard", id }
//   (`data` is transferred to us; `file`: a file the blob is being written to, which we read
//   ourselves as "file" messages say how far it is written, so its bytes never cross threads)
//   out: { op: "ack", id, bytes, buffer? } after each update (buffer: the transferred one, returned for reuse),
//        { op: "digest", id, hex, error? } after finish (hex null: the job failed, `error` says why)
import { createHash, type Hash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";

type Inbound =
  | { op: "start"; id: number; algorithm: "sha256" | "sha512"; file?: string }
  | { op: "update"; id: number; data: Uint8Array }
  | { op: "file"; id: number; upTo: number }
  | { op: "finish"; id: number }
  | { op: "discard"; id: number };

// A Web Worker's scope on every runtime (src/runtime/ provides it on Node).
const scope = globalThis as unknown as { postMessage(m: unknown, t?: ArrayBuffer[]): void; onmessage: ((e: { data: unknown }) => void) | null };
const port = {
  postMessage: (m: unknown, t?: ArrayBuffer[]) => scope.postMessage(m, t ?? []),
  listen: (fn: (msg: Inbound) => void) => (scope.onmessage = (e) => fn(e.data as Inbound)),
};

/** Bytes read from a file at a time; one buffer for the whole worker (it handles one message at a time). */
const READ_BYTES = 1024 * 1024;
let readBuffer: Uint8Array | null = null;

type Job = { hash: Hash; file: string | null; fd: number | null; hashed: number; error: string | null };
const jobs = new Map<number, Job>();

function closeFile(job: Job): void {
  if (job.fd !== null) {
    try {
      closeSync(job.fd);
    } catch {
      // nothing left to do with it
    }
    job.fd = null;
  }
}

/** Hashes the job's file from where it stopped up to `upTo` (bytes the writer says are there). */
function hashFile(job: Job, upTo: number): void {
  if (job.error !== null || job.file === null) return;
  try {
    job.fd ??= openSync(job.file, "r");
    readBuffer ??= new Uint8Array(READ_BYTES);
    while (job.hashed < upTo) {
      const n = readSync(job.fd, readBuffer, 0, Math.min(READ_BYTES, upTo - job.hashed), job.hashed);
      if (n === 0) throw new Error(`${job.file} ends at ${job.hashed} bytes, before the ${upTo} written`);
      job.hash.update(readBuffer.subarray(0, n));
      job.hashed += n;
    }
  } catch (err) {
    job.error = err instanceof Error ? err.message : String(err);
    closeFile(job);
  }
}

port.listen((msg: Inbound) => {
  switch (msg.op) {
    case "start":
      jobs.set(msg.id, { hash: createHash(msg.algorithm), file: msg.file ?? null, fd: null, hashed: 0, error: null });
      break;
    case "file": {
      const job = jobs.get(msg.id);
      if (job) hashFile(job, msg.upTo);
      break;
    }
    case "update": {
      jobs.get(msg.id)?.hash.update(msg.data);
      // Give a transferred buffer back for reuse: fresh 1 MiB buffers cost page faults and GC.
      const buffer = msg.data.buffer;
      if (buffer instanceof ArrayBuffer) port.postMessage({ op: "ack", id: msg.id, bytes: msg.data.byteLength, buffer }, [buffer]);
      else port.postMessage({ op: "ack", id: msg.id, bytes: msg.data.byteLength });
      break;
    }
    case "finish": {
      const job = jobs.get(msg.id);
      jobs.delete(msg.id);
      if (job) closeFile(job);
      if (!job) port.postMessage({ op: "digest", id: msg.id, hex: null });
      else if (job.error !== null) port.postMessage({ op: "digest", id: msg.id, hex: null, error: job.error });
      else port.postMessage({ op: "digest", id: msg.id, hex: job.hash.digest("hex") });
      break;
    }
    case "discard": {
      const job = jobs.get(msg.id);
      jobs.delete(msg.id);
      if (job) closeFile(job);
      break;
    }
  }
});
