// Worker threads from the TypeScript source (as the tests and `npm run stowage` run): each
// worker's types are stripped once with esbuild. Two kinds started at the same moment (a server
// with access control starts its digest and password workers together) must both come up.
import t from "tap";
import { createHash } from "node:crypto";
import { PasswordChecks } from "../../src/auth/password-checks.ts";
import { WorkerHasherFactory } from "../../src/digest/worker-pool.ts";
import { nodeRuntime } from "../../src/runtime/node.ts";

t.test("the digest and the password workers, started together, both answer", async (t) => {
  const spawn = nodeRuntime.spawnWorker!;
  const [h1, p1] = await Promise.allSettled([WorkerHasherFactory.start(1, spawn), PasswordChecks.workers(spawn)]);
  // Whatever started is stopped again, so that a failure cannot leave a thread keeping the test alive.
  t.teardown(async () => {
    if (h1.status === "fulfilled") await h1.value.close();
    if (p1.status === "fulfilled") await p1.value.close();
  });
  if (h1.status === "rejected") throw h1.reason;
  if (p1.status === "rejected") throw p1.reason;
  const [hashers, passwords] = [h1.value, p1.value];
  t.equal(passwords.mode, "worker", "the password checks run in a worker thread");
  const h = hashers.create("sha256");
  await h.update(new TextEncoder().encode("stowage"));
  t.equal(await h.finish(), createHash("sha256").update("stowage").digest("hex"), "the digest worker hashes");
});
