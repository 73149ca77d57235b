// Preloaded into Stowage (NODE_OPTIONS=--import) by `npm run bench -- --profile`, so that only the
// measured request is profiled, not start-up or warm-up: the first SIGUSR2 starts the V8 CPU
// profiler on the main thread, the second stops it and writes the profile to
// $STOWAGE_BENCH_PROFILE. Plain JS: it loads before tsx is registered.
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { isMainThread } from "node:worker_threads";

const out = process.env.STOWAGE_BENCH_PROFILE;
if (isMainThread && out) {
  const session = new Session();
  session.connect();
  let running = false;
  const post = (method, params) =>
    new Promise((resolve, reject) => session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res))));
  process.on("SIGUSR2", () => {
    if (!running) {
      running = true;
      post("Profiler.enable")
        .then(() => post("Profiler.setSamplingInterval", { interval: 250 }))
        .then(() => post("Profiler.start"))
        .then(() => writeFileSync(`${out}.started`, ""));
    } else {
      running = false;
      post("Profiler.stop").then((res) => writeFileSync(out, JSON.stringify(res.profile)));
    }
  });
}
