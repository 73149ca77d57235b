// The bundle's tar: what we write is read back the same and by GNU tar; what GNU tar and
// skopeo write is read by us; truncated and damaged tars are reported as such.
import t from "tap";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { fileHeader, parseHeader, TarCorruptError } from "../../src/bundle/tar-format.ts";
import { readTar, TarTruncatedError, tarWriter, type TarWriteEntry } from "../../src/bundle/tar.ts";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR } from "../harness/images.ts";

const run = promisify(execFile);

async function bytesOf(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  return Buffer.from(await new Response(stream).arrayBuffer());
}

/** A stream of `bytes` in pieces of the given sizes (cycled), to cross every boundary. */
function piecesOf(bytes: Uint8Array, sizes: number[] = [7, 1000, 1]): ReadableStream<Uint8Array> {
  let offset = 0;
  let i = 0;
  return new ReadableStream({
    pull(c) {
      if (offset >= bytes.byteLength) return c.close();
      const n = sizes[i++ % sizes.length]!;
      c.enqueue(bytes.slice(offset, offset + n));
      offset += n;
    },
  });
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Array<{ name: string; type: string; bytes: Buffer }>> {
  const out = [];
  for await (const e of readTar(stream)) out.push({ name: e.name, type: e.type, bytes: await bytesOf(e.body) });
  return out;
}

const long = (n: number, prefix = "") => (prefix + "x".repeat(n)).slice(0, n);
const table: Array<{ name: string; bytes: Buffer }> = [
  { name: "empty", bytes: Buffer.alloc(0) },
  { name: "one", bytes: randomBytes(1) },
  { name: "dir/511", bytes: randomBytes(511) },
  { name: "512", bytes: randomBytes(512) },
  { name: "513", bytes: randomBytes(513) },
  { name: "blobs/sha256/" + "a".repeat(64), bytes: randomBytes(100_000) },
  { name: long(100), bytes: randomBytes(3) },
  { name: `${long(120, "p/")}/${long(90)}`, bytes: randomBytes(4) }, // fits the ustar prefix split
  { name: `${long(200, "q")}/${long(200, "r")}/${long(60, "s")}`, bytes: randomBytes(5) }, // needs a PAX path
  { name: "ünïcødé/名前", bytes: randomBytes(6) },
];

t.test("round trip: what tarWriter writes, readTar reads back the same", async (t) => {
  for (const asStream of [false, true]) {
    const entries: TarWriteEntry[] = table.map((e) => ({ name: e.name, size: e.bytes.length, body: asStream ? piecesOf(e.bytes) : e.bytes }));
    const tar = await bytesOf(tarWriter(entries));
    t.equal(tar.length % 512, 0, "a whole number of blocks");
    for (const sizes of [[tar.length], [1], [513, 7], [65536]]) {
      const back = await readAll(piecesOf(tar, sizes));
      t.same(back.map((e) => e.name), table.map((e) => e.name), `names (bodies as ${asStream ? "streams" : "bytes"}, read in pieces of ${sizes.join("/")})`);
      t.ok(back.every((e, i) => e.bytes.equals(table[i]!.bytes) && e.type === "file"), "contents");
    }
  }
});

t.test("an entry whose body is not read (or is cancelled) is skipped, the next one is whole", async (t) => {
  const tar = await bytesOf(tarWriter(table.map((e) => ({ name: e.name, size: e.bytes.length, body: e.bytes }))));
  const seen: string[] = [];
  let i = 0;
  for await (const e of readTar(piecesOf(tar, [333]))) {
    if (i % 3 === 0) await e.body.cancel();
    else if (i % 3 === 1) {
      const r = e.body.getReader();
      await r.read(); // a part only
      r.releaseLock();
    } else t.ok((await bytesOf(e.body)).equals(table[i]!.bytes), `${e.name} read whole after skipped ones`);
    seen.push(e.name);
    i++;
  }
  t.same(seen, table.map((e) => e.name));
});

t.test("sizes above 8 GiB use GNU base-256 in the header and read back", async (t) => {
  for (const size of [8 * 1024 ** 3 - 1, 8 * 1024 ** 3, 9 * 1024 ** 3 + 7, 2 ** 40 + 3]) {
    const h = fileHeader("blobs/sha256/big", size);
    t.equal(h.length, 512);
    t.equal(parseHeader(h).size, size, `size ${size}`);
    t.equal(h[124]! & 0x80, size > 8 * 1024 ** 3 - 1 ? 0x80 : 0, "base-256 only when octal cannot hold it");
  }
  t.throws(() => fileHeader("x", -1), RangeError);
});

t.test("GNU tar reads what we write (long names, empty and odd sizes)", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-tar-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, "ours.tar");
  await writeFile(file, await bytesOf(tarWriter(table.map((e) => ({ name: e.name, size: e.bytes.length, body: e.bytes })))));
  const listed = (await run("tar", ["-tf", file], { maxBuffer: 1 << 20 })).stdout.trim().split("\n");
  t.same(listed, table.map((e) => e.name), "tar -t lists every name in full");
  const out = join(dir, "x");
  await mkdir(out);
  await run("tar", ["-xf", file, "-C", out]);
  for (const e of table) t.ok((await readFile(join(out, e.name))).equals(e.bytes), `tar -x: ${e.name.slice(0, 40)}`);
});

t.test("we read what GNU tar writes: gnu (long-name records), pax and ustar formats, directories skipped", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "stowage-tar-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const src = join(dir, "src");
  const files = table.filter((e) => Buffer.byteLength(e.name) < 250 && !e.name.includes("ü")).concat([{ name: `deep/${long(200, "d")}/f`, bytes: randomBytes(700) }]);
  for (const e of files) {
    await mkdir(join(src, e.name, ".."), { recursive: true });
    await writeFile(join(src, e.name), e.bytes);
  }
  const expected = new Map(files.map((e) => [e.name, e.bytes]));
  for (const format of ["gnu", "pax", "ustar"]) {
    const file = join(dir, `${format}.tar`);
    // ustar cannot hold every name; it writes the others and complains, which is fine here.
    await run("tar", [`--format=${format}`, "-cf", file, "-C", src, ...files.map((e) => e.name)]).catch(() => {});
    const back = await readAll(piecesOf(await readFile(file), [4096, 77]));
    t.ok(back.length > 0, `${format}: entries read`);
    for (const e of back) t.ok(expected.get(e.name)?.equals(e.bytes), `${format}: ${e.name.slice(0, 50)} (${e.name.length} chars)`);
    if (format !== "ustar") t.equal(back.length, files.length, `${format}: every file`);
  }
  // A directory tree: directories are not entries.
  const treeTar = join(dir, "tree.tar");
  await run("tar", ["-cf", treeTar, "-C", src, "."]);
  const names = (await readAll(piecesOf(await readFile(treeTar)))).map((e) => e.name.replace(/^\.\//, ""));
  t.same(names.sort(), files.map((e) => e.name).sort(), "a tar of a tree yields its files only");
});

t.test("we read an oci-archive written by skopeo; every blob hashes to its name", async (t) => {
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const image = images.find((i) => i.kind === "oci-index")!;
  const dir = await mkdtemp(join(tmpdir(), "stowage-tar-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const archive = join(dir, "skopeo.tar");
  await run("skopeo", ["copy", "--all", image.source, `oci-archive:${archive}:example.com/test:v1`]);
  const names: string[] = [];
  for await (const e of readTar(piecesOf(await readFile(archive), [10_000]))) {
    const name = e.name.replace(/^\.\//, "");
    names.push(name);
    const bytes = await bytesOf(e.body);
    t.equal(bytes.length, e.size, `${name}: size as the header says`);
    const m = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(name);
    if (m) t.equal(createHash("sha256").update(bytes).digest("hex"), m[1], `${name.slice(0, 24)}… hashes to its name`);
  }
  t.ok(names.includes("index.json") && names.includes("oci-layout"), "index.json and oci-layout");
  t.ok(names.includes(`blobs/sha256/${image.digest.slice(7)}`), "the index itself");
  for (const b of image.blobs) t.ok(names.includes(`blobs/sha256/${b.digest.slice(7)}`), `blob ${b.digest.slice(7, 19)}`);
});

t.test("truncated and damaged tars are reported as such, saying where", async (t) => {
  const entries = [
    { name: "a", bytes: randomBytes(2000) },
    { name: "blobs/sha256/bbb", bytes: randomBytes(5000) },
  ];
  const tar = await bytesOf(tarWriter(entries.map((e) => ({ name: e.name, size: e.bytes.length, body: e.bytes }))));
  const secondData = 512 + 2048 + 512;

  const attempt = async (bytes: Uint8Array, readBodies = true) => {
    const got: string[] = [];
    try {
      for await (const e of readTar(piecesOf(bytes, [1000]))) {
        got.push(e.name);
        if (readBodies) await bytesOf(e.body);
        else await e.body.cancel();
      }
      return { got, error: null };
    } catch (error) {
      return { got, error: error as Error };
    }
  };

  let r = await attempt(tar.subarray(0, secondData + 1234));
  t.type(r.error, TarTruncatedError, "cut in a body");
  t.match(r.error?.message, /ends inside blobs\/sha256\/bbb: 1234 of its 5000 bytes/, String(r.error?.message));
  t.same(r.got, ["a", "blobs/sha256/bbb"], "the entries before it were whole");

  r = await attempt(tar.subarray(0, secondData + 1234), false);
  t.type(r.error, TarTruncatedError, "cut in a body that is skipped");
  t.match(r.error?.message, /inside blobs\/sha256\/bbb/);

  r = await attempt(tar.subarray(0, 512 + 2048 + 100));
  t.type(r.error, TarTruncatedError, "cut in a header");
  t.match(r.error?.message, /inside the header of entry 2/);

  r = await attempt(tar.subarray(0, secondData + 5120));
  t.type(r.error, TarTruncatedError, "cut at an entry boundary, before the end-of-archive blocks");
  t.match(r.error?.message, /without its end-of-archive blocks/);
  t.same(r.got, ["a", "blobs/sha256/bbb"]);

  const damaged = Buffer.from(tar);
  damaged[512 + 2048 + 3] = damaged[512 + 2048 + 3]! ^ 0x20; // a letter of the second name
  r = await attempt(damaged);
  t.type(r.error, TarCorruptError, "a header byte flipped");
  t.match(r.error?.message, /bad checksum/);
  t.same(r.got, ["a"]);

  r = await attempt(randomBytes(4096));
  t.type(r.error, TarCorruptError, "not a tar at all");
});

t.test("the writer pulls a body only as fast as its output is read", async (t) => {
  const MiB = 1024 * 1024;
  let produced = 0;
  const body = new ReadableStream<Uint8Array>(
    {
      pull(c) {
        if (produced >= 64 * MiB) return c.close();
        c.enqueue(new Uint8Array(MiB));
        produced += MiB;
      },
    },
    { highWaterMark: 0 },
  );
  const reader = tarWriter([{ name: "big", size: 64 * MiB, body }]).getReader();
  let consumed = 0;
  let maxAhead = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    consumed += value.byteLength;
    maxAhead = Math.max(maxAhead, produced - consumed);
    if (consumed % (8 * MiB) < MiB) await new Promise((r) => setTimeout(r, 5));
  }
  t.equal(consumed, 64 * MiB + 512 + 1024);
  t.ok(maxAhead <= 2 * MiB, `the body ran at most ${maxAhead} bytes ahead of the reader`);

  const short = tarWriter([{ name: "short", size: 10, body: piecesOf(new Uint8Array(5)) }]);
  await t.rejects(bytesOf(short), /ended after 5 of the 10 bytes/, "a body shorter than declared fails the tar");
});
