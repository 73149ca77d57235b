// A TCP pass-through that a test can shut: for a server that goes down (connections reset)
// and comes back, which no real server does on cue.
import { createConnection, createServer, type Socket } from "node:net";

export type TcpGate = {
  /** host:port of the gate. */
  address: string;
  /** "open": forward to the target; "down": reset every connection, open or new. */
  set(state: "open" | "down"): void;
  stop(): Promise<void>;
};

export async function startTcpGate(targetHost: string, targetPort: number): Promise<TcpGate> {
  let state: "open" | "down" = "open";
  const live = new Set<Socket>();
  const server = createServer((client) => {
    if (state === "down") {
      client.resetAndDestroy();
      return;
    }
    const upstream = createConnection({ host: targetHost, port: targetPort });
    for (const s of [client, upstream]) {
      live.add(s);
      s.on("close", () => live.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    address: `127.0.0.1:${port}`,
    set(next) {
      state = next;
      if (next === "down") for (const s of live) s.resetAndDestroy();
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of live) s.destroy();
        server.close(() => resolve());
      }),
  };
}
