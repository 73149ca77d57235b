import * as fs from "node:fs";

/** The part of node:fs statfs that free space is computed from. */
export type StatFs = (path: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>;

/**
 * node:fs statfs (callback form: Deno exported it from node:fs before
 * node:fs/promises), or null where the runtime has none, in which case free
 * space is not checked at all rather than failing downloads.
 */
export const systemStatFs: StatFs | null = typeof fs.statfs === "function"
  ? (path) =>
    new Promise((resolve, reject) => {
      fs.statfs(path, (err, stats) => (err ? reject(err) : resolve(stats)));
    })
  : null;

/**
 * Bytes an unprivileged process may still write on the file system holding
 * `path` (blocks reserved for root do not count); null when it cannot be told.
 */
export async function freeBytes(statfs: StatFs | null, path: string): Promise<number | null> {
  if (!statfs) return null;
  try {
    const { bavail, bsize } = await statfs(path);
    const free = Number(bavail) * Number(bsize);
    return Number.isFinite(free) && free >= 0 ? free : null;
  } catch {
    // Not permitted or not supported here: no check, as on a runtime without statfs.
    return null;
  }
}
