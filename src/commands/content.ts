/**
 * The content commands (prefill, export, import) as main runs them: open the store and KV
 * the settings name, run the engine with progress on standard error, and say how it went.
 * Each returns the exit status: 0 when everything succeeded, 1 when anything failed.
 */
import process from "node:process";
import type { ExportCommand, ImportCommand, PrefillCommand } from "./args.ts";
import { exportBundle } from "../bundle/export.ts";
import { importBundle } from "../bundle/import.ts";
import { recordReferrers } from "../cache/referrers-cache.ts";
import { ConfigError } from "../config/problems.ts";
import type { Config } from "../config/types.ts";
import { createLogger, type Logger } from "../log.ts";
import { ImageListError, imageRefsFromText } from "../prefill/image-list.ts";
import { prefill } from "../prefill/prefill.ts";
import { createProgress, type Progress } from "../progress/progress.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { openServices } from "../services.ts";
import { listSourceFiles, openInput, openOutput, readText, stderrIsTerminal, writeStderr } from "./io.ts";

/** Log lines go to standard error with the progress; below warn they would drown it. */
function commandLogger(config: Config): Logger {
  return createLogger(config.logLevel === "debug" ? "debug" : "warn", (line) => writeStderr(`${line}\n`));
}

function progressOnStderr(): Progress {
  return createProgress({ interactive: stderrIsTerminal(), write: writeStderr, columns: process.stderr.columns ?? 80 });
}

export async function runPrefill(cmd: PrefillCommand, runtime: Runtime): Promise<number> {
  const log = commandLogger(cmd.config);
  const refs = [...cmd.refs];
  const sources: string[] = [];
  for (const from of cmd.from) sources.push(...(from === "-" ? ["-"] : await listSourceFiles(from)));
  for (const source of sources) {
    const text = source === "-" ? await runtime.readStdin() : await readText(source, "--from file");
    let found: ReturnType<typeof imageRefsFromText>;
    try {
      found = imageRefsFromText(text);
    } catch (err) {
      if (err instanceof ImageListError) throw new ConfigError(`--from ${source === "-" ? "standard input" : source}: ${err.message}`);
      throw err;
    }
    for (const s of found.skipped) log.warn("skipped an image reference that cannot be used as written", { from: source, ...s });
    if (found.refs.length === 0) log.warn("no image references found", { from: source });
    refs.push(...found.refs);
  }
  if (refs.length === 0) throw new ConfigError("nothing to prefill: no image references were given or found");
  const services = await openServices(cmd.config, runtime, log);
  const progress = progressOnStderr();
  try {
    const result = await prefill(
      { ...services, upstreams: cmd.config.upstreams, defaultUpstream: cmd.config.defaultUpstream },
      { refs: [...new Set(refs)], platforms: cmd.platforms, jobs: cmd.jobs, withReferrers: cmd.withReferrers },
      progress,
      log,
    );
    progress.finish();
    return result.images.some((i) => i.status === "failed") ? 1 : 0;
  } finally {
    await services.close();
  }
}

export async function runExport(cmd: ExportCommand, runtime: Runtime): Promise<number> {
  const log = commandLogger(cmd.config);
  const since = cmd.since === null ? null : await openInput(cmd.since, "--since bundle");
  const output = await openOutput(cmd.output);
  const services = await openServices(cmd.config, runtime, log).catch(async (err: unknown) => {
    await output.discard();
    throw err;
  });
  const progress = progressOnStderr();
  let finished = false;
  try {
    const result = await exportBundle(
      { kv: services.kv, store: services.store, upstreams: cmd.config.upstreams, defaultUpstream: cmd.config.defaultUpstream },
      { refs: cmd.refs, since: since?.stream ?? null, withReferrers: cmd.withReferrers },
      output.stream,
      progress,
      log,
    );
    progress.finish();
    await output.finish();
    finished = true;
    return result.images.some((i) => i.status === "failed") ? 1 : 0;
  } finally {
    if (!finished) await output.discard();
    await services.close();
  }
}

export async function runImport(cmd: ImportCommand, runtime: Runtime): Promise<number> {
  const log = commandLogger(cmd.config);
  const input = await openInput(cmd.input, "bundle");
  const services = await openServices(cmd.config, runtime, log);
  const progress = progressOnStderr();
  try {
    const result = await importBundle(
      {
        kv: services.kv,
        store: services.store,
        hashers: services.hashers,
        upstreams: cmd.config.upstreams,
        defaultUpstream: cmd.config.defaultUpstream,
        recordReferrers: (upstream, repo, subject, descriptors) =>
          recordReferrers({ kv: services.kv, store: services.store }, upstream, repo, subject, descriptors),
      },
      { stream: input.stream, size: input.size },
      progress,
      log,
    );
    progress.finish();
    return result.images.some((i) => i.status === "failed") || result.problems.length > 0 ? 1 : 0;
  } finally {
    await services.close();
  }
}
