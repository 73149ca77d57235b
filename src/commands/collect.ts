/**
 * `stowage gc` and `stowage purge` as main runs them: open the store and KV the settings name,
 * run the collector once, and print what it removed (or, with --dry-run, would remove): a
 * table and the total on a terminal, one JSON line per removal otherwise. Exit status 0, or 1
 * when another instance holds the collector lease and nothing was done.
 */
import process from "node:process";
import type { CollectCommand } from "./args.ts";
import { formatBytes } from "../cache/blob-bounds.ts";
import type { Config } from "../config/types.ts";
import type { CollectOptions, CollectReport, RemovedItem } from "../gc/collector.ts";
import { createLogger, type Logger } from "../log.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { openServices } from "../services.ts";
import { writeStderr } from "./io.ts";

/** Log lines go to standard error; below warn they would drown the listing. */
function commandLogger(config: Config): Logger {
  return createLogger(config.logLevel === "debug" ? "debug" : "warn", (line) => writeStderr(`${line}\n`));
}

/** What the command asks of the collector: gc applies the limits, purge only removes what it names. */
export function collectOptions(cmd: CollectCommand): CollectOptions {
  if (cmd.kind === "gc") {
    return {
      cacheTtlMs: cmd.config.cacheTtlSeconds === null ? null : cmd.config.cacheTtlSeconds * 1000,
      maxBytes: cmd.config.maxSizeBytes,
      dryRun: cmd.dryRun,
      by: "cli",
    };
  }
  return { cacheTtlMs: null, maxBytes: null, purge: cmd.selectors, dryRun: cmd.dryRun, by: "cli" };
}

export type Printer = { write(text: string): void; terminal: boolean };

export async function runCollect(cmd: CollectCommand, runtime: Runtime, out: Printer = stdoutPrinter()): Promise<number> {
  const log = commandLogger(cmd.config);
  const services = await openServices(cmd.config, runtime, log);
  try {
    if (cmd.kind === "gc" && cmd.config.cacheTtlSeconds === null && cmd.config.maxSizeBytes === null) {
      writeStderr(
        "stowage gc: no limit is set (--cache-ttl, --max-size): only records whose objects are missing and objects without records are cleared\n",
      );
    }
    const report = await services.collector.run(collectOptions(cmd));
    if (!report.ran) {
      writeStderr(`stowage ${cmd.kind}: another Stowage instance is collecting right now (it holds the collector lease); nothing was removed, try again later\n`);
      return 1;
    }
    printReport(report, out);
    return 0;
  } finally {
    await services.close();
  }
}

function stdoutPrinter(): Printer {
  return { write: (text) => void process.stdout.write(text), terminal: process.stdout.isTTY === true };
}

/** The listing: a table and a total for a person, or one JSON object a line for a program. */
export function printReport(report: CollectReport, out: Printer): void {
  if (!out.terminal) {
    for (const item of report.removed) out.write(`${JSON.stringify({ ...item, dryRun: report.dryRun })}\n`);
    writeStderr(`${summary(report)}\n`);
    return;
  }
  if (report.removed.length > 0) out.write(`${table(report.removed)}\n`);
  out.write(`${summary(report)}\n`);
}

function table(items: readonly RemovedItem[]): string {
  const rows = [["KIND", "NAME", "SIZE", "REASON"], ...items.map((i) => [i.kind, i.name, formatBytes(i.bytes), i.reason])];
  const widths = [0, 1, 2].map((c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === 3 ? cell : c === 2 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join("  ")).join("\n");
}

function summary(r: CollectReport): string {
  const n = r.removed.length;
  const what = `${n} item${n === 1 ? "" : "s"}`;
  if (r.dryRun) {
    return n === 0 ? "dry run: nothing would be removed" : `dry run: would remove ${what}, freeing ${formatBytes(r.bytesFreed)} (store: ${formatBytes(r.storeBytesBefore)})`;
  }
  return n === 0
    ? `nothing removed (store: ${formatBytes(r.storeBytesAfter)})`
    : `removed ${what}, freed ${formatBytes(r.bytesFreed)} (store: ${formatBytes(r.storeBytesBefore)} -> ${formatBytes(r.storeBytesAfter)}) in ${(r.durationMs / 1000).toFixed(1)}s`;
}
