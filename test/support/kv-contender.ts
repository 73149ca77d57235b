// One of several processes sharing a KV file, as instances on one machine do: it
// increments a counter COUNT times by compare-and-set through Stowage's own KV
// opening (src/kv/open.ts) and prints how many increments failed with an error and
// the counter it saw last. Runs on Node (with tsx) and on Deno: `kv-contender.ts PATH COUNT`.
import { openKvAt } from "../../src/kv/open.ts";
import { currentRuntime } from "../../src/runtime/current.ts";

const runtime = await currentRuntime();
const [path, count] = runtime.args();
const kv = await openKvAt(runtime, { kind: "file", path: path! });
const errors: string[] = [];
for (let i = 0; i < Number(count); i++) {
  try {
    for (;;) {
      const current = await kv.get<number>(["counter"]);
      const result = await kv.atomic().check({ key: ["counter"], versionstamp: current.versionstamp })
        .set(["counter"], (current.value ?? 0) + 1).commit();
      if (result.ok) break;
    }
  } catch (err) {
    errors.push(err instanceof Error ? err.message.split("\n")[0]! : String(err));
  }
}
const counter = (await kv.get<number>(["counter"])).value ?? 0;
kv.close();
console.log(JSON.stringify({ errors: errors.length, first: errors[0] ?? null, counter }));
