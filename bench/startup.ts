// Start-up time: from spawning a peer's process to its first answered GET /v2/ (200, or 401 with
// access control on). The harness's own readiness check polls every 50 ms, too coarse for a
// 300 ms target, so this probe runs next to it every 5 ms on the port the peer was told to use.
import { request } from "node:http";

const POLL_MS = 5;

function answered(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 || res.statusCode === 401);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
    req.end();
  });
}

/**
 * Call right before spawning the peer. `measured` resolves to the milliseconds from this call to
 * the first answer, or NaN if `done` is called first (the start failed) or 60 s pass.
 */
export function startupProbe(baseUrl: string): { measured: Promise<number>; done(): void } {
  const t0 = performance.now();
  let over = false;
  const measured = (async () => {
    while (!over && performance.now() - t0 < 60_000) {
      if (await answered(`${baseUrl}/v2/`)) return performance.now() - t0;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return NaN;
  })();
  return { measured, done: () => void (over = true) };
}
