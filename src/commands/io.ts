/**
 * Files and standard streams for the content commands, as Web Streams. node:fs and
 * node:process behave the same on Node and Deno here, so no runtime adapter is needed.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { Readable, Writable } from "node:stream";
import { ConfigError } from "../config/problems.ts";

export type Input = { stream: ReadableStream<Uint8Array>; size: number | null; name: string };

/** A file, or "-" for standard input; a missing file is the operator's mistake, said plainly. */
export async function openInput(path: string, what: string): Promise<Input> {
  if (path === "-") return { stream: Readable.toWeb(process.stdin) as ReadableStream<Uint8Array>, size: null, name: "standard input" };
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError(`cannot read ${what} ${path}: ${err.code === "ENOENT" ? "no such file" : err.message}`);
  });
  if (!info.isFile()) throw new ConfigError(`${what} ${path} is not a file`);
  return { stream: Readable.toWeb(createReadStream(path, { highWaterMark: 1024 * 1024 })) as ReadableStream<Uint8Array>, size: info.size, name: path };
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

/** A file (written as FILE.partial, renamed when complete, so a broken export never looks whole), or "-" for standard output. */
export function openOutput(path: string): Output {
  if (path === "-") {
    return { stream: Writable.toWeb(process.stdout) as WritableStream<Uint8Array>, finish: async () => {}, discard: async () => {}, name: "standard output" };
  }
  const partial = `${path}.partial`;
  const file = createWriteStream(partial, { highWaterMark: 1024 * 1024 });
  return {
    stream: Writable.toWeb(file) as WritableStream<Uint8Array>,
    finish: () => rename(partial, path),
    discard: () => rm(partial, { force: true }),
    name: path,
  };
}

/** Progress bars only on a terminal; otherwise JSON lines (CI logs, log collectors). */
export function stderrIsTerminal(): boolean {
  return process.stderr.isTTY === true;
}

export function writeStderr(text: string): void {
  process.stderr.write(text);
}
