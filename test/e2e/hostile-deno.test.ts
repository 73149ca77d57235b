// The hostile redirects that hurt most on Deno, where fetch() itself can read file: URLs: with
// Stowage running on Deno (with the broad read permission the tests give it), an upstream that
// redirects a blob to Stowage's own KV file (it holds the private signing key) or to the cloud
// metadata address gets a 502, and not one byte of the target.
import t from "tap";
import { join } from "node:path";
import { startStowage } from "../harness/stowage.ts";
import { startHttpServer } from "../support/fake-registry.ts";

t.test("on Deno, redirects to file: and to the metadata address are refused", async (t) => {
  let location = "";
  const upstream = await startHttpServer(t, (_req, res) => void res.writeHead(307, { location, "content-length": 0 }).end());
  const stowage = await startStowage(["--upstream", `up=${upstream.url}`, "--upstream-timeout", "3s"], { runtime: "deno" });
  t.teardown(() => stowage.stop());

  const targets = [
    ["Stowage's own KV file", `file://${join(stowage.dataDir, "kv.sqlite3")}`],
    ["the metadata address", "http://169.254.169.254/latest/meta-data/"],
  ];
  for (const [what, target] of targets) {
    location = target!;
    const digest = `sha256:${"5".repeat(63)}${targets.findIndex((x) => x[1] === target)}`;
    const res = await fetch(`${stowage.url}/v2/up/app/blobs/${digest}`);
    const body = Buffer.from(await res.arrayBuffer());
    t.equal(res.status, 502, `${what}: 502`);
    t.match(res.headers.get("content-type") ?? "", /json/, `${what}: an OCI JSON error`);
    t.notOk(body.includes("SQLite"), `${what}: nothing of the target reaches the client`);
  }
  t.match(stowage.logs(), /not followed|may not lead Stowage there/, "the log says which rule refused it");
});
