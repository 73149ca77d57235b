// The progress display: JSON lines a log collector follows, and live bars with a summary
// table on a terminal. Time is a test clock where figures depend on it.
import t from "tap";
import { fitLeft, formatBytes, formatDuration, textTable } from "../../src/progress/format.ts";
import { createProgress } from "../../src/progress/progress.ts";

const clock = () => {
  let ms = 1_000_000;
  return { now: () => ms, advance: (by: number) => (ms += by) };
};

t.test("JSON lines: progress at most every 2 s per item, then done or failed, then the summary", async (t) => {
  const c = clock();
  const out: string[] = [];
  const p = createProgress({ interactive: false, write: (s) => out.push(s), now: c.now });
  const a = p.item("docker.io/library/alpine:3.20", 1000);
  const b = p.item("ghcr.io/acme/app:1", null);
  for (let i = 0; i < 50; i++) {
    c.advance(100);
    a.add(10);
    b.add(1);
  }
  // 5 s with bytes every 100 ms: a line at 2 s and at 4 s for each item, no more.
  const lines = () => out.join("").trim().split("\n").map((l) => JSON.parse(l));
  t.equal(out.every((s) => s.endsWith("\n")), true, "whole lines");
  t.same(lines().map((l) => [l.event, l.item, l.bytes]), [
    ["progress", "docker.io/library/alpine:3.20", 200],
    ["progress", "ghcr.io/acme/app:1", 20],
    ["progress", "docker.io/library/alpine:3.20", 400],
    ["progress", "ghcr.io/acme/app:1", 40],
  ]);
  const first = lines()[0];
  t.match(first, { total: 1000, ms: 2000, bytesPerSecond: 100, etaMs: 8000 }, "total, elapsed time, rate and time left");
  t.equal(first.time, new Date(1_002_000).toISOString(), "timestamped by the clock");
  t.notOk("etaMs" in lines()[1], "no ETA without a total");

  a.done("300 B already cached");
  b.fail("manifest ghcr.io/acme/app:1 is not known to the upstream");
  a.fail("too late"); // an item ends once
  b.done();
  p.item("quay.io/x/y:2", 5).add(2); // still running at finish
  p.finish();
  p.finish();
  const events = lines().slice(4);
  t.match(events, [
    { event: "done", item: "docker.io/library/alpine:3.20", bytes: 500, total: 1000, note: "300 B already cached" },
    { event: "failed", item: "ghcr.io/acme/app:1", bytes: 50, reason: "manifest ghcr.io/acme/app:1 is not known to the upstream" },
    { event: "summary", items: 3, done: 1, failed: 1, unfinished: 1, bytes: 552, failures: [{ item: "ghcr.io/acme/app:1", reason: /not known/ }] },
  ]);
  t.equal(events.length, 3, "nothing after the first end of an item, one summary");
});

t.test("terminal: bars with bytes, rate and ETA, a line per finished item, a summary table", async (t) => {
  const c = clock();
  let out = "";
  const p = createProgress({ interactive: true, write: (s) => (out += s), columns: 100, now: c.now });
  const a = p.item("docker.io/library/alpine:3.20", 1000);
  c.advance(1000);
  a.add(500);
  await new Promise((r) => setTimeout(r, 250)); // the bars redraw every 100 ms
  t.match(out, /docker\.io\/library\/alpine:3\.20 +\[=+-+\] +500 B\/1\.0 kB +500 B\/s +ETA 1\.0s/, "label, bar, bytes of total, rate, ETA");
  t.ok(out.split("\n").every((l) => l.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").length <= 100), "no line wider than the terminal");

  const b = p.item("ghcr.io/acme/app:1", null);
  c.advance(500);
  b.fail("upstream ghcr.io is offline");
  a.add(500);
  a.done("1.2 MB already cached");
  p.item("quay.io/x/y:2", 10);
  p.finish();
  t.match(out, /✗ ghcr\.io\/acme\/app:1  upstream ghcr\.io is offline\n/, "a failed item says why");
  t.match(out, /✓ docker\.io\/library\/alpine:3\.20  1\.0 kB in 1\.5s  1\.2 MB already cached\n/, "a finished item says what it came to");
  const table = out.slice(out.lastIndexOf("ITEM"));
  t.same(table.split("\n").map((l) => l.trimEnd()), [
    "ITEM                           STATUS      SIZE      TIME  NOTE",
    "docker.io/library/alpine:3.20  done        1.0 kB    1.5s  1.2 MB already cached",
    "ghcr.io/acme/app:1             failed      0 B       0.5s  upstream ghcr.io is offline",
    "quay.io/x/y:2                  unfinished  0 B/10 B  0.0s",
    "",
    "1 done, 1 failed, 1 unfinished; 1.0 kB in 1.5s",
    "",
  ]);
  const before = out.length;
  await new Promise((r) => setTimeout(r, 250));
  t.equal(out.length, before, "nothing is drawn after finish");
});

t.test("terminal: redrawn at most about 10 times a second however often bytes arrive", async (t) => {
  let frames = 0;
  const p = createProgress({ interactive: true, write: (s) => void (s.includes("busy:1") && frames++), columns: 80 });
  const item = p.item("busy:1", 1e9);
  const started = Date.now();
  while (Date.now() - started < 1000) {
    item.add(1000);
    await new Promise((r) => setImmediate(r));
  }
  p.finish();
  t.ok(frames >= 5 && frames <= 13, `${frames} frames in a second`);
});

t.test("figures as people read them", async (t) => {
  t.same([0, 999, 1000, 1500, 123_456, 1e9, 2.5e12].map(formatBytes), ["0 B", "999 B", "1.0 kB", "1.5 kB", "123 kB", "1.0 GB", "2.5 TB"]);
  t.same([400, 9_940, 12_400, 185_000, 3_725_000].map(formatDuration), ["0.4s", "9.9s", "12s", "3m05s", "1h02m"]);
  t.equal(fitLeft("docker.io/library/alpine:3.20", 12), "…alpine:3.20", "a long label keeps its end (the tag)");
  t.equal(fitLeft("abc", 5), "abc  ");
  t.equal(textTable(["A", "BB"], [["xyz", "1"]]), "A    BB\nxyz  1\n");
});
