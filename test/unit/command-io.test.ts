// The content commands' files and streams: backpressure by bytes (a bundle never piles up in
// memory between the disk and the tar code) and what --from DIR reads.
import t from "tap";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable, Writable } from "node:stream";
import { listSourceFiles, pulledFrom, pushedTo } from "../../src/commands/io.ts";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test("reading: the source is read only as fast as the consumer takes chunks", async (t) => {
  let produced = 0;
  const source = new Readable({
    highWaterMark: MiB,
    read() {
      if (produced >= 512 * MiB) return void this.push(null);
      produced += MiB;
      this.push(Buffer.alloc(MiB));
    },
  });
  const reader = pulledFrom(source).getReader();
  await reader.read();
  await sleep(200);
  t.ok(produced <= 4 * MiB, `after one chunk taken, ${produced / MiB} MiB were read from the source`);
  await reader.cancel();
  t.ok(source.destroyed, "cancelling destroys the source");
});

t.test("reading: every byte arrives, in order, then the end", async (t) => {
  const parts = Array.from({ length: 50 }, (_, i) => Buffer.alloc(1000 + i, i));
  const got = Buffer.from(await new Response(pulledFrom(Readable.from(parts))).arrayBuffer());
  t.ok(got.equals(Buffer.concat(parts)));
});

t.test("reading: a consumer busy with the last chunk still sees the end (and an error)", async (t) => {
  // `stowage import` of a cut bundle hung for good in CI this way: the source emitted 'end'
  // while the consumer was still writing the last bytes, and the next read waited for an 'end' that had passed.
  const ended = new PassThrough();
  ended.end(Buffer.from("last"));
  const reader = pulledFrom(ended).getReader();
  t.same(Buffer.from((await reader.read()).value!).toString(), "last");
  await sleep(50); // the consumer is busy; meanwhile the source ends
  const end = await Promise.race([reader.read(), sleep(2000).then(() => "hung" as const)]);
  t.same(end, { done: true, value: undefined }, "the end, not a read that never returns");

  const failing = new PassThrough();
  failing.write(Buffer.from("some"));
  const r2 = pulledFrom(failing).getReader();
  await r2.read();
  failing.destroy(new Error("disk read failed"));
  await sleep(50);
  await t.rejects(Promise.race([r2.read(), sleep(2000).then(() => "hung")]), { message: "disk read failed" }, "an error between reads surfaces at the next one");
});

t.test("writing: a slow destination holds the writer back", { timeout: 30_000 }, async (t) => {
  let written = 0;
  const slow = new Writable({
    highWaterMark: MiB,
    write(chunk: Buffer, _enc, done) {
      written += chunk.byteLength;
      setTimeout(done, 20);
    },
  });
  let offered = 0;
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offered >= 256 * MiB) return controller.close();
      offered += MiB;
      controller.enqueue(new Uint8Array(MiB));
    },
  });
  const piping = source.pipeTo(pushedTo(slow));
  await sleep(300);
  t.ok(offered - written <= 8 * MiB, `${(offered - written) / MiB} MiB queued ahead of a slow destination (Writable.toWeb queues 249 MiB here)`);
  await piping.catch(() => {});
});

t.test("--from DIR: every .yaml, .yml and .json file under it, in name order, hidden folders left out", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-from-dir-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, "apps", "web"), { recursive: true });
  await mkdir(join(dir, ".git"), { recursive: true });
  for (const f of ["b.yaml", "a.yml", "notes.txt", "apps/web/deploy.json", "apps/web/README.md", ".git/config.yaml"]) await writeFile(join(dir, f), "x");
  t.same(await listSourceFiles(dir), [join(dir, "a.yml"), join(dir, "apps", "web", "deploy.json"), join(dir, "b.yaml")]);
  t.same(await listSourceFiles(join(dir, "notes.txt")), [join(dir, "notes.txt")], "a file is itself, whatever its name");
  await t.rejects(listSourceFiles(join(dir, "missing")), /cannot read --from .*missing: no such file or directory/);
});
