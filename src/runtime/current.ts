import type { Runtime } from "./runtime.ts";

/**
 * The adapter for the runtime this process runs on. Apart from runtime.ts, so
 * that the adapters, which implement its interface, and the choice between
 * them import in one direction only.
 */
export async function currentRuntime(): Promise<Runtime> {
  if ("Deno" in globalThis) return (await import("./deno.ts")).denoRuntime;
  // Before node.ts loads @hono/node-server, which keeps the classes it sees as it loads.
  (await import("./node-fetch-classes.ts")).installLeanFetchClasses();
  return (await import("./node.ts")).nodeRuntime;
}
