import { join, resolve } from "node:path";
import { retryWhileBusy, whileBusy } from "./busy-retry.ts";
import type { Kv } from "./kv.ts";
import type { KvLocation } from "./location.ts";

/** What opening a KV needs from the runtime (src/runtime/ provides it). */
export interface KvOpener {
  /** A file path, ":memory:", a KV Connect URL, or undefined for the platform default. */
  openKv(path: string | undefined): Promise<Kv>;
  /** Whether `openKv(undefined)` means a KV of the platform's own (Deno's, on Deno Deploy the project's). */
  readonly hasPlatformKv: boolean;
}

/** Where the KV is when the operator did not say (`configured` null): beside the blobs, or the platform's own when there is no disk. */
export function kvLocationFor(configured: KvLocation | null, dataDir: string, diskWritable: boolean): KvLocation {
  if (configured) return configured;
  return diskWritable ? { kind: "file", path: join(resolve(dataDir), "kv.sqlite3") } : { kind: "platform" };
}

/** For logs: never shows more than the origin of a remote KV. */
export function describeKv(location: KvLocation): string {
  switch (location.kind) {
    case "file":
      return `file ${location.path}`;
    case "memory":
      return "in memory (forgotten on exit)";
    case "remote":
      return `KV Connect at ${new URL(location.url).origin}`;
    case "platform":
      return "the platform's default KV (Deno.openKv(); on Deno Deploy, the project's KV)";
  }
}

export class KvOpenError extends Error {}

const firstLine = (err: unknown) => (err instanceof Error ? err.message : String(err)).split("\n")[0];

/** Opens the KV, or explains to the operator what to change. */
export async function openKvAt(runtime: KvOpener, location: KvLocation): Promise<Kv> {
  if (location.kind === "platform" && !runtime.hasPlatformKv) {
    throw new KvOpenError(
      "there is no platform KV on Node: give --kv a file path on a writable disk, or a KV Connect URL shared by every instance",
    );
  }
  const arg = location.kind === "file" ? location.path : location.kind === "memory" ? ":memory:" : location.kind === "remote" ? location.url : undefined;
  try {
    // A file may be shared by instances on one machine, each locking it while it writes: opening
    // it (which reads and may set up the schema) can meet that lock too.
    if (location.kind !== "file") return await runtime.openKv(arg);
    return retryWhileBusy(await whileBusy(() => runtime.openKv(arg)));
  } catch (err) {
    // @deno/kv reports a native addon that would not load as the cause of a generic error; the
    // cause says what to do (see bin/build.mjs), and a hint about the path would mislead.
    const addon = err instanceof Error && err.cause instanceof Error ? err.cause : null;
    const why = firstLine(addon ?? err);
    const hint = addon ? "" : location.kind === "platform"
      ? "outside Deno Deploy, give --kv a file path on a writable disk, :memory:, or a KV Connect URL"
      : location.kind === "remote"
      ? "check the URL and that DENO_KV_ACCESS_TOKEN holds a valid access token"
      : location.kind === "file"
      ? "check that the directory exists and is writable, or choose another path with --kv"
      : "";
    throw new KvOpenError(`cannot open the KV store (${describeKv(location)}): ${why}${hint ? `; ${hint}` : ""}`);
  }
}
