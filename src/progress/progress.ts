/**
 * Progress of long operations (prefill, export, import): one item per image or blob, counted
 * in bytes. On a terminal, live bars and a summary table (terminal.ts); otherwise JSON lines a
 * log collector can follow (json-lines.ts). Everything goes to the writer given, never to
 * stdout on its own, since a bundle may be streaming there.
 */
import { createJsonLinesProgress } from "./json-lines.ts";
import { createTerminalProgress } from "./terminal.ts";
import type { Progress, ProgressOptions } from "./types.ts";

export type { ItemRecord, ItemStatus, Progress, ProgressItem, ProgressOptions } from "./types.ts";

export function createProgress(options: ProgressOptions): Progress {
  return options.interactive ? createTerminalProgress(options) : createJsonLinesProgress(options);
}

/** A progress that shows nothing (library callers and tests that do not look at it). */
export const silentProgress: Progress = {
  item: () => ({ add() {}, setTotal() {}, done() {}, fail() {} }),
  finish() {},
};
