/**
 * The KV store. Instances that share a bucket must share one of these too:
 * a file on one machine, or a KV Connect server / Deno Deploy's KV across machines.
 */
export type KvLocation =
  | { kind: "file"; path: string }
  | { kind: "memory" }
  /** A KV Connect endpoint (a denokv server); the token comes from DENO_KV_ACCESS_TOKEN. */
  | { kind: "remote"; url: string }
  /** `Deno.openKv()` with no argument: on Deno Deploy, the project's own KV. */
  | { kind: "platform" };
