import type { Runtime } from "./runtime.ts";

/** Upstream requests on Node: undici's fetch through an Agent that connects only where the guard allows. */
export const nodeUpstreamFetch: Runtime["upstreamFetch"] = (guard) => {
  // undici is loaded at the first upstream request, not at start-up (~0.15 s and ~20 MiB here).
  let ready: Promise<(input: string | URL | Request, init?: RequestInit) => Promise<Response>> | null = null;
  const load = async () => {
    const { Agent, buildConnector, fetch: undiciFetch } = await import("undici");
    // undici's own connector does TLS (SNI and certificate checks against the name in
    // the URL); we only choose the address it connects to.
    const connectTo = buildConnector({});
    const agent = new Agent({
      connect: (opts, callback) => {
        const port = Number(opts.port) || (opts.protocol === "https:" ? 443 : 80);
        guard(opts.hostname, port).then(
          (target) => connectTo({ ...opts, hostname: target.address }, callback),
          (err: Error) => callback(err, null),
        );
      },
    });
    return (input: string | URL | Request, init?: RequestInit) =>
      undiciFetch(input as Parameters<typeof undiciFetch>[0], { ...(init as Parameters<typeof undiciFetch>[1]), dispatcher: agent }) as unknown as Promise<Response>;
  };
  return (async (input: string | URL | Request, init?: RequestInit) => (await (ready ??= load()))(input, init)) as typeof fetch;
};
