// A TCP pass-through that a test can shut: for a server that goes down (connections reset)
// or stalls (connections accepted, nothing answered) and comes back, which no real server does
// on cue.
import { createConnection, createServer, type Socket } from "node:net";

export type GateState = "open" | "down" | "stall";

export type TcpGate = {
  /** host:port of the gate. */
  address: string;
  /**
   * "open": forward to the target; "down": reset every connection, open or new; "stall": keep
   * every connection, open or new, but forward nothing either way (a server that hangs).
   * Leaving "stall" closes the stalled connections.
   */
  set(state: GateState): void;
  stop(): Promise<void>;
};

export async function startTcpGate(targetHost: string, targetPort: number): Promise<TcpGate> {
  let state: GateState = "open";
  const live = new Set<Socket>();
  const pairs = new Set<{ client: Socket; upstream: Socket; held: boolean }>();
  const stalled = new Set<Socket>();
  const hold = (client: Socket) => {
    stalled.add(client);
    client.on("error", () => {});
    client.on("close", () => stalled.delete(client));
    client.resume(); // read and drop whatever it sends
  };
  const server = createServer((client) => {
    if (state === "down") {
      client.resetAndDestroy();
      return;
    }
    if (state === "stall") return hold(client);
    const upstream = createConnection({ host: targetHost, port: targetPort });
    const pair = { client, upstream, held: false };
    pairs.add(pair);
    for (const s of [client, upstream]) {
      live.add(s);
      s.on("close", () => live.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => {
      pairs.delete(pair);
      upstream.destroy();
    });
    upstream.on("close", () => {
      if (!pair.held) client.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    address: `127.0.0.1:${port}`,
    set(next) {
      if (state === "stall" && next !== "stall") for (const s of stalled) s.destroy();
      state = next;
      if (next === "down") for (const s of live) s.resetAndDestroy();
      if (next === "stall") {
        // Live connections stop forwarding: the upstream side goes quiet, the client's bytes are dropped.
        for (const pair of pairs) {
          pair.held = true;
          pair.client.unpipe(pair.upstream);
          pair.upstream.unpipe(pair.client);
          pair.upstream.destroy();
          live.delete(pair.client);
          hold(pair.client);
        }
        pairs.clear();
      }
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of [...live, ...stalled]) s.destroy();
        server.close(() => resolve());
      }),
  };
}
