import type { Kv } from "../kv/kv.ts";

/** What the server answers requests with; `remoteAddress` is the peer's address (null where there is none, as on Unix sockets). */
export type ServeHandler = (request: Request, peer: { remoteAddress: string | null }) => Promise<Response>;

/** Where a listener binds: the address of --listen and --metrics-listen. */
export type Listen = { hostname: string; port: number };

export type Listening = { hostname: string; port: number; close(): Promise<void> };

/** The worker modules in workers/: each runtime knows where its form of them lives (TypeScript source, or the build in dist/). */
export type WorkerName = "digest-worker" | "password-worker";

/** A worker thread as the digest pool sees it, whatever kind of worker the runtime makes. */
export interface WorkerPort {
  post(message: unknown, transfer?: ArrayBuffer[]): void;
  onMessage(fn: (data: unknown) => void): void;
  /** The worker failed or exited: it will answer no more. */
  onFailure(fn: (err: Error) => void): void;
  terminate(): Promise<void>;
}

/**
 * Everything that differs between Deno and Node, and nothing else. The rest of
 * Stowage is written against this interface and web-standard APIs.
 */
export interface Runtime {
  readonly name: "node" | "deno";
  /**
   * Serves `handler`. A connection on which nothing moves for `clientTimeoutMs`
   * (a client that stopped reading a blob, or went quiet) is closed, where the
   * platform allows it (Node; Deno.serve offers no such control, and there
   * the blob bodies' own stall watchdog does the job).
   * Responses whose body is a direct body (storage/direct-body.ts: a stored file, a follower of
   * a download) may be sent from its source instead of the stream, calling its hooks as the
   * stream would (Node writes it to the socket itself, with reused buffers for a file; Deno sends the stream).
   */
  serve(handler: ServeHandler, listen: Listen, opts: { clientTimeoutMs: number; onClientTimeout?: () => void }): Promise<Listening>;
  /** Opens the KV store: a file path, ":memory:", a KV Connect URL, or undefined for the platform default (Deno Deploy). */
  openKv(path: string | undefined): Promise<Kv>;
  /** Whether there is a platform default KV (Deno's own; Node has none). */
  readonly hasPlatformKv: boolean;
  /**
   * Starts a worker thread running workers/NAME, or null where threads are unavailable.
   * The module sees a Web Worker's scope on every runtime: it answers with `postMessage` and
   * receives through `onmessage` on globalThis.
   */
  readonly spawnWorker: ((name: WorkerName) => WorkerPort) | null;
  /** Whether the local disk may be written (false under `deno run --deny-write` or on Deno Deploy). */
  canWrite(path: string): Promise<boolean>;
  onSignal(signal: "SIGINT" | "SIGTERM", fn: () => void): void;
  args(): string[];
  env(): Record<string, string | undefined>;
  /** Sets an environment variable of this process (libraries loaded later read it). */
  setEnv(name: string, value: string): void;
  /** The Node.js release, e.g. "v20.11.1", where Stowage runs on Node; null on Deno. */
  readonly nodeVersion: string | null;
  readTextFile(path: string): string;
  /** All of standard input as text (for secrets that must not appear in argv). */
  readStdin(): Promise<string>;
  exit(code: number): never;
  /**
   * fetch() for requests to upstream registries. Each new connection asks `guard`
   * for the address to connect to (--resolve overrides, and the policy on where an
   * upstream may lead). Where `pinsUpstreamAddresses` is false (Deno, whose fetch
   * resolves names itself), the guard vets the name before each request instead.
   */
  upstreamFetch(guard: AddressGuard): typeof fetch;
  readonly pinsUpstreamAddresses: boolean;
}

/** Resolves HOST:PORT to the one address a connection may use, or throws why not. */
export type AddressGuard = (host: string, port: number) => Promise<{ address: string; family: 4 | 6 }>;
