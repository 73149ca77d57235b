// The benchmark's warning when the disk's write speed swung between the peers' cold runs
// (bench/report-text.ts): cold figures taken at such different moments are not comparable.
import t from "tap";
import { diskSwing } from "../../bench/report-text.ts";
import type { Results } from "../../bench/results.ts";

const MB = 1e6;
const withDisk = (speeds: Record<string, number[]>) =>
  ({ peers: Object.fromEntries(Object.entries(speeds).map(([k, xs]) => [k, xs.map((v) => ({ "ref.diskWrite": v }))])) }) as unknown as Results;

t.test("no warning while the disk wrote at a similar speed for every peer", async (t) => {
  t.equal(diskSwing(withDisk({ stowage: [900 * MB], distribution: [1200 * MB], nginx: [700 * MB] })), null);
  t.equal(diskSwing(withDisk({ stowage: [400 * MB] })), null, "one peer: nothing to compare");
  t.equal(diskSwing(withDisk({})), null);
});

t.test("a warning naming the slowest and the fastest when it swung more than 2x", async (t) => {
  // The figures of one run on this machine: 187, 1378 and 140 MB/s.
  const w = diskSwing(withDisk({ stowage: [187 * MB], distribution: [1378 * MB], nginx: [140 * MB] }));
  t.match(w, /140 MB\/s next to nginx proxy_cache's cold GET and at 1378 MB\/s next to distribution proxy's/);
  t.match(w, /run the bench again/);
});

t.test("each peer's median over rounds is what counts", async (t) => {
  t.equal(diskSwing(withDisk({ stowage: [100 * MB, 900 * MB, 1000 * MB], nginx: [800 * MB, 850 * MB, 90 * MB] })), null, "medians 900 and 800");
});
