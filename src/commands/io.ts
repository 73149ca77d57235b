/**
 * Files and standard streams for the content commands, as Web Streams. node:fs and
 * node:process behave the same on Node and Deno here, so no runtime adapter is needed.
 */
import { createReadStream } from "node:fs";
import { open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import type { Readable, Writable } from "node:stream";
import { ConfigError } from "../config/problems.ts";

export type Input = { stream: ReadableStream<Uint8Array>; size: number | null; name: string };

/** A file, or "-" for standard input; a missing file is the operator's mistake, said plainly. */
export async function openInput(path: string, what: string): Promise<Input> {
  if (path === "-") return { stream: pulledFrom(process.stdin), size: null, name: "standard input" };
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError(`cannot read ${what} ${path}: ${err.code === "ENOENT" ? "no such file" : err.message}`);
  });
  if (!info.isFile()) throw new ConfigError(`${what} ${path} is not a file`);
  return { stream: pulledFrom(createReadStream(path, { highWaterMark: 1024 * 1024 })), size: info.size, name: path };
}

export async function readText(path: string, what: string): Promise<string> {
  const input = await openInput(path, what);
  return await new Response(input.stream).text();
}

/**
 * The files `--from PATH` means: the file itself, or every .yaml, .yml and .json file under a
 * directory (a folder of Kubernetes manifests), in name order.
 */
export async function listSourceFiles(path: string): Promise<string[]> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError(`cannot read --from ${path}: ${err.code === "ENOENT" ? "no such file or directory" : err.message}`);
  });
  if (!info.isDirectory()) return [path];
  const found: string[] = [];
  for (const entry of (await readdir(path, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = join(path, entry.name);
    if (entry.isDirectory() && !entry.name.startsWith(".")) found.push(...(await listSourceFiles(full)));
    else if (entry.isFile() && /\.(ya?ml|json)$/i.test(entry.name)) found.push(full);
  }
  return found;
}

export type Output = {
  stream: WritableStream<Uint8Array>;
  /** Puts a finished file in place (written under a temporary name until then). */
  finish(): Promise<void>;
  /** Removes what was written of a file that did not finish. */
  discard(): Promise<void>;
  name: string;
};

/** A file (written as FILE.partial, synced and renamed when complete, so a broken export never looks whole), or "-" for standard output. */
export async function openOutput(path: string): Promise<Output> {
  if (path === "-") return { stream: pushedTo(process.stdout), finish: async () => {}, discard: async () => {}, name: "standard output" };
  const partial = `${path}.partial`;
  const handle = await open(partial, "w").catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError(`cannot write ${partial}: ${err.message}`);
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await handle.close();
  };
  let position = 0;
  const stream = new WritableStream<Uint8Array>(
    {
      async write(chunk) {
        for (let done = 0; done < chunk.byteLength;) {
          const { bytesWritten } = await handle.write(chunk, done, chunk.byteLength - done, position);
          done += bytesWritten;
          position += bytesWritten;
        }
      },
      // On the disk before it gets its name: the file is about to be carried away.
      async close() {
        await handle.sync();
        await close();
      },
      abort: close,
    },
    new ByteLengthQueuingStrategy({ highWaterMark: QUEUED_BYTES }),
  );
  return {
    stream,
    finish: () => rename(partial, path),
    discard: async () => {
      await close().catch(() => {});
      await rm(partial, { force: true });
    },
    name: path,
  };
}

/**
 * Web Streams over Node streams with backpressure by bytes. Writable.toWeb counts chunks
 * against the Node stream's byte high-water mark, so a fast producer can queue up to a million
 * chunks ahead of the disk: a whole bundle in memory (249 of 256 MiB queued in the unit test's
 * setting). Reading pulls a chunk only when one is asked for, so the bound does not depend on
 * a runtime's Readable.toWeb.
 */
const QUEUED_BYTES = 4 * 1024 * 1024;

/** Reads a chunk only when the consumer asks for one. */
export function pulledFrom(readable: Readable): ReadableStream<Uint8Array> {
  // Always listened to: an 'error' between two pulls with no listener on would be thrown at the process.
  let failed: Error | null = null;
  readable.on("error", (err) => (failed ??= err));
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        // 'end' (or 'error') may have been emitted between two pulls, while no listener was on:
        // after the read that took the last bytes, while the consumer was busy with them.
        if (readable.readableEnded) {
          controller.close();
          return;
        }
        if (failed) return Promise.reject(failed);
        return new Promise<void>((resolve, reject) => {
          const cleanup = () => {
            readable.off("readable", tryRead);
            readable.off("end", onEnd);
            readable.off("error", onError);
          };
          const tryRead = () => {
            const chunk = readable.read() as Buffer | null;
            if (chunk === null) return;
            cleanup();
            controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
            resolve();
          };
          const onEnd = () => {
            cleanup();
            controller.close();
            resolve();
          };
          const onError = (err: Error) => {
            cleanup();
            reject(err);
          };
          readable.on("readable", tryRead);
          readable.on("end", onEnd);
          readable.on("error", onError);
          tryRead();
        });
      },
      cancel() {
        readable.destroy();
      },
    },
    { highWaterMark: 0 },
  );
}

/** Writes a chunk, then waits for the stream to drain before taking more. */
export function pushedTo(writable: Writable): WritableStream<Uint8Array> {
  let failed: Error | null = null;
  writable.on("error", (err) => (failed ??= err));
  return new WritableStream<Uint8Array>(
    {
      write(chunk) {
        if (failed) return Promise.reject(failed);
        return new Promise<void>((resolve, reject) => {
          if (writable.write(chunk)) return resolve();
          const onDrain = () => {
            writable.off("error", onError);
            resolve();
          };
          const onError = (err: Error) => {
            writable.off("drain", onDrain);
            reject(err);
          };
          writable.once("drain", onDrain);
          writable.once("error", onError);
        });
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: QUEUED_BYTES }),
  );
}

/** Progress bars only on a terminal; otherwise JSON lines (CI logs, log collectors). */
export function stderrIsTerminal(): boolean {
  return process.stderr.isTTY === true;
}

export function writeStderr(text: string): void {
  process.stderr.write(text);
}
