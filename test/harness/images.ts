// Deterministic test images for the end-to-end tests, built offline with node built-ins.
// Same code → same bytes → same digests, so tests may rely on digests across runs.
import { createCipheriv, createHash } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { constants as zlibConstants, gzipSync } from "node:zlib";
import { fileSha256, sha256 } from "../support/oci.ts";

export type TestImage = {
  repo: string;
  tag: string;
  kind: "oci-manifest" | "oci-index" | "docker-manifest" | "docker-list";
  /** Digest of the top-level manifest/index exactly as pushed and served. */
  digest: string;
  mediaType: string;
  /** Children of an index/list; [] for a single manifest. */
  manifests: Array<{ digest: string; mediaType: string; size: number; platform?: { os: string; architecture: string } }>;
  /** Every config and layer blob of every platform. */
  blobs: Array<{ digest: string; size: number }>;
  /** A skopeo source reference: "oci:<layout>:<tag>" or "dir:<dir>". */
  source: string;
};

export const MEDIA_TYPES = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerTar: "application/vnd.oci.image.layer.v1.tar",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

/** Size of the file inside the big image's single layer. */
export const BIG_LAYER_PAYLOAD_BYTES = 256 * 1024 * 1024;
export const REPO_PREFIX = "stowage-test";
/** Where test files should build images so that runs (and parallel test files) share them. */
export const DEFAULT_IMAGE_CACHE_DIR = process.env.STOWAGE_TEST_IMAGES_DIR ?? join(tmpdir(), "stowage-test-images");

// Fixed timestamp for tar headers and image configs: wall-clock time would change digests.
const FIXED_EPOCH_SECONDS = 1704067200; // 2024-01-01T00:00:00Z
const FIXED_CREATED = "2024-01-01T00:00:00Z";
const BLOCK = 512;

// ---------------------------------------------------------------------------
// tar (ustar) writer

type TarEntry = { name: string; kind: "dir" } | { name: string; kind: "file"; content: Buffer };

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  // width-1 octal digits followed by NUL, as ustar expects.
  buf.write(value.toString(8).padStart(width - 1, "0") + "\0", offset, width, "ascii");
}

export function tarHeader(name: string, kind: "dir" | "file", size: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar name too long: ${name}`);
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, "utf8");
  writeOctal(h, 100, 8, kind === "dir" ? 0o755 : 0o644);
  writeOctal(h, 108, 8, 0); // uid
  writeOctal(h, 116, 8, 0); // gid
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, FIXED_EPOCH_SECONDS);
  h.fill(0x20, 148, 156); // checksum is computed with its own field as spaces
  h.write(kind === "dir" ? "5" : "0", 156, 1, "ascii");
  h.write("ustar\0", 257, 6, "ascii");
  h.write("00", 263, 2, "ascii");
  h.write("root", 265, 32, "ascii");
  h.write("root", 297, 32, "ascii");
  writeOctal(h, 329, 8, 0);
  writeOctal(h, 337, 8, 0);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8, "ascii");
  return h;
}

function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

const TAR_END = Buffer.alloc(2 * BLOCK);

export function makeTar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    if (e.kind === "dir") {
      parts.push(tarHeader(e.name.endsWith("/") ? e.name : e.name + "/", "dir", 0));
    } else {
      parts.push(tarHeader(e.name, "file", e.content.length), e.content, padding(e.content.length));
    }
  }
  parts.push(TAR_END);
  return Buffer.concat(parts);
}

/**
 * gzip with output that does not depend on the machine: Huffman-only skips the match finder
 * (whose hashing varies with CPU features in some zlib builds), mtime is 0, and the OS byte
 * is pinned to Unix.
 */
export function stableGzip(data: Buffer): Buffer {
  const out = gzipSync(data, { level: 9, strategy: zlibConstants.Z_HUFFMAN_ONLY });
  out[9] = 3;
  return out;
}

// ---------------------------------------------------------------------------
// Image models (everything except the big layer lives in memory: it is small)

type Blob = { digest: string; size: number; bytes: Buffer };
type Descriptor = { mediaType: string; digest: string; size: number; platform?: { os: string; architecture: string } };
type Platform = { os: string; architecture: string };

function blobOf(bytes: Buffer): Blob {
  return { digest: sha256(bytes), size: bytes.length, bytes };
}

function descriptor(mediaType: string, b: { digest: string; size: number }, platform?: Platform): Descriptor {
  return platform ? { mediaType, digest: b.digest, size: b.size, platform } : { mediaType, digest: b.digest, size: b.size };
}

function jsonBlob(value: unknown): Blob {
  return blobOf(Buffer.from(JSON.stringify(value)));
}

/** A small gzip layer with a couple of text files whose content is unique to (image, index). */
function smallLayer(image: string, index: number, extra = 0): { gz: Blob; diffId: string } {
  const dir = `stowage-test/${image}`;
  const lines = [`image=${image}`, `layer=${index}`];
  for (let i = 0; i < 20 + extra; i++) lines.push(`line ${i} of layer ${index} in ${image}`);
  const tar = makeTar([
    { name: "stowage-test", kind: "dir" },
    { name: dir, kind: "dir" },
    { name: `${dir}/layer-${index}.txt`, kind: "file", content: Buffer.from(lines.join("\n") + "\n") },
    { name: `${dir}/layer-${index}.json`, kind: "file", content: Buffer.from(JSON.stringify({ image, index }) + "\n") },
  ]);
  return { gz: blobOf(stableGzip(tar)), diffId: sha256(tar) };
}

function imageConfig(image: string, platform: Platform, diffIds: string[]): Blob {
  return jsonBlob({
    architecture: platform.architecture,
    os: platform.os,
    created: FIXED_CREATED,
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      Labels: { "org.stowage.test.image": image },
    },
    rootfs: { type: "layers", diff_ids: diffIds },
    history: diffIds.map((_, i) => ({ created: FIXED_CREATED, created_by: `stowage test layer ${i}` })),
  });
}

type Format = "oci" | "docker";

/** One platform's manifest with its config and layers. */
type BuiltManifest = { manifest: Blob; mediaType: string; config: Blob; layers: Blob[]; platform: Platform };

function buildManifest(format: Format, image: string, platform: Platform, layerCount: number): BuiltManifest {
  const layers = Array.from({ length: layerCount }, (_, i) => smallLayer(`${image}-${platform.architecture}`, i, i % 3));
  const config = imageConfig(image, platform, layers.map((l) => l.diffId));
  const mt =
    format === "oci"
      ? { manifest: MEDIA_TYPES.ociManifest, config: MEDIA_TYPES.ociConfig, layer: MEDIA_TYPES.ociLayerGzip }
      : { manifest: MEDIA_TYPES.dockerManifest, config: MEDIA_TYPES.dockerConfig, layer: MEDIA_TYPES.dockerLayerGzip };
  const manifest = jsonBlob({
    schemaVersion: 2,
    mediaType: mt.manifest,
    config: descriptor(mt.config, config),
    layers: layers.map((l) => descriptor(mt.layer, l.gz)),
  });
  return { manifest, mediaType: mt.manifest, config, layers: layers.map((l) => l.gz), platform };
}

function buildIndex(format: Format, children: BuiltManifest[]): { index: Blob; mediaType: string; descriptors: Descriptor[] } {
  const mediaType = format === "oci" ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.dockerList;
  const descriptors = children.map((c) => descriptor(c.mediaType, c.manifest, c.platform));
  return { index: jsonBlob({ schemaVersion: 2, mediaType, manifests: descriptors }), mediaType, descriptors };
}

// ---------------------------------------------------------------------------
// On-disk layouts

/** Writes the file atomically, and only when its content differs (other processes may be reading). */
async function writeIfChanged(path: string, bytes: Buffer): Promise<void> {
  try {
    const current = await readFile(path);
    if (current.equals(bytes)) return;
  } catch {
    // missing: write it
  }
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await writeFile(tmp, bytes);
  await rename(tmp, path);
}

/** Deletes files a previous build left that this build does not produce. */
async function pruneExcept(dir: string, keep: Set<string>): Promise<void> {
  for (const name of await readdir(dir)) {
    if (!keep.has(name) && !name.includes(".tmp-")) await rm(join(dir, name), { recursive: true, force: true });
  }
}

const hex = (digest: string): string => digest.slice("sha256:".length);

/** OCI image layout with one tagged top-level manifest/index. `bigBlobs` are already in place. */
async function writeOciLayout(dir: string, tag: string, top: { blob: Blob; mediaType: string }, blobs: Blob[], bigBlobs: string[] = []): Promise<void> {
  const blobDir = join(dir, "blobs", "sha256");
  await mkdir(blobDir, { recursive: true });
  for (const b of [top.blob, ...blobs]) await writeIfChanged(join(blobDir, hex(b.digest)), b.bytes);
  await writeIfChanged(join(dir, "oci-layout"), Buffer.from(JSON.stringify({ imageLayoutVersion: "1.0.0" })));
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociIndex,
    manifests: [{ ...descriptor(top.mediaType, top.blob), annotations: { "org.opencontainers.image.ref.name": tag } }],
  };
  await writeIfChanged(join(dir, "index.json"), Buffer.from(JSON.stringify(index)));
  await pruneExcept(blobDir, new Set([top.blob, ...blobs].map((b) => hex(b.digest)).concat(bigBlobs.map(hex))));
  await pruneExcept(dir, new Set(["blobs", "oci-layout", "index.json"]));
}

/**
 * containers/image `dir:` transport layout: `version`, `manifest.json`, blobs named by hex digest,
 * and for a list, each instance as `<hex>.manifest.json`.
 */
async function writeDirLayout(dir: string, top: Blob, instances: Blob[], blobs: Blob[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  const files = new Map<string, Buffer>();
  files.set("version", Buffer.from("Directory Transport Version: 1.1\n"));
  files.set("manifest.json", top.bytes);
  for (const m of instances) files.set(`${hex(m.digest)}.manifest.json`, m.bytes);
  for (const b of blobs) files.set(hex(b.digest), b.bytes);
  for (const [name, bytes] of files) await writeIfChanged(join(dir, name), bytes);
  await pruneExcept(dir, new Set(files.keys()));
}

// ---------------------------------------------------------------------------
// The big layer: streamed to disk while hashing, never held in memory

const BIG_CHUNK = 4 * 1024 * 1024;
// Recorded next to the blob; a change in how the layer is made must change this string.
const BIG_LAYER_RECIPE = `tar(stowage-test/big.bin, aes-128-ctr zero key/iv keystream, ${BIG_LAYER_PAYLOAD_BYTES} bytes, mtime ${FIXED_EPOCH_SECONDS}) v1`;

type BigLayerRecord = { recipe: string; digest: string; size: number };

/**
 * AES-CTR keystream as the PRNG: deterministic, incompressible, and fast (AES-NI) — a
 * JS-level PRNG would dominate the build time.
 */
function keystream(): { next(bytes: number): Buffer } {
  const cipher = createCipheriv("aes-128-ctr", Buffer.alloc(16, 0x5a), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(BIG_CHUNK);
  return { next: (bytes) => cipher.update(zeros.subarray(0, bytes)) };
}


async function readRecord(path: string): Promise<BigLayerRecord | undefined> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as BigLayerRecord;
  } catch {
    return undefined;
  }
}

/** Returns the big layer's descriptor, writing it into `blobDir` unless a verified copy is there. */
async function ensureBigLayer(blobDir: string, recordPath: string): Promise<{ digest: string; size: number }> {
  await mkdir(blobDir, { recursive: true });
  const rec = await readRecord(recordPath);
  if (rec && rec.recipe === BIG_LAYER_RECIPE) {
    const path = join(blobDir, hex(rec.digest));
    const st = await stat(path).catch(() => undefined);
    if (st?.size === rec.size && (await fileSha256(path)) === rec.digest) return { digest: rec.digest, size: rec.size };
  }
  const tmp = join(blobDir, `big.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const hash = createHash("sha256");
  const file = await open(tmp, "w");
  let size = 0;
  const put = async (buf: Buffer): Promise<void> => {
    hash.update(buf);
    size += buf.length;
    await file.write(buf);
  };
  try {
    await put(tarHeader("stowage-test/", "dir", 0));
    await put(tarHeader("stowage-test/big.bin", "file", BIG_LAYER_PAYLOAD_BYTES));
    const ks = keystream();
    for (let left = BIG_LAYER_PAYLOAD_BYTES; left > 0; left -= BIG_CHUNK) await put(ks.next(Math.min(BIG_CHUNK, left)));
    await put(padding(BIG_LAYER_PAYLOAD_BYTES));
    await put(TAR_END);
  } finally {
    await file.close();
  }
  const digest = "sha256:" + hash.digest("hex");
  await rename(tmp, join(blobDir, hex(digest)));
  await writeIfChanged(recordPath, Buffer.from(JSON.stringify({ recipe: BIG_LAYER_RECIPE, digest, size } satisfies BigLayerRecord)));
  return { digest, size };
}

// ---------------------------------------------------------------------------

const AMD64: Platform = { os: "linux", architecture: "amd64" };
const ARM64: Platform = { os: "linux", architecture: "arm64" };

function uniqueBlobs(manifests: BuiltManifest[]): Blob[] {
  const seen = new Map<string, Blob>();
  for (const m of manifests) for (const b of [m.config, ...m.layers]) seen.set(b.digest, b);
  return [...seen.values()];
}

const blobSummary = (blobs: Array<{ digest: string; size: number }>) => blobs.map((b) => ({ digest: b.digest, size: b.size }));

/**
 * Builds (or reuses) the six test images under `cacheDir`:
 * oci-single, oci-index, docker-list, docker-single, many-layers (50 layers),
 * big-layer (one uncompressed layer of ≥256 MiB).
 */
export async function buildTestImages(cacheDir: string): Promise<TestImage[]> {
  await mkdir(cacheDir, { recursive: true });
  const images: TestImage[] = [];

  // Single-manifest images share one shape; only format and layer count differ.
  const single = async (name: string, format: Format, layerCount: number): Promise<TestImage> => {
    const m = buildManifest(format, name, AMD64, layerCount);
    const dir = join(cacheDir, name);
    const blobs = uniqueBlobs([m]);
    if (format === "oci") await writeOciLayout(dir, "v1", { blob: m.manifest, mediaType: m.mediaType }, blobs);
    else await writeDirLayout(dir, m.manifest, [], blobs);
    return {
      repo: `${REPO_PREFIX}/${name}`,
      tag: "v1",
      kind: format === "oci" ? "oci-manifest" : "docker-manifest",
      digest: m.manifest.digest,
      mediaType: m.mediaType,
      manifests: [],
      blobs: blobSummary(blobs),
      source: format === "oci" ? `oci:${dir}:v1` : `dir:${dir}`,
    };
  };

  const multi = async (name: string, format: Format): Promise<TestImage> => {
    const children = [buildManifest(format, name, AMD64, 1), buildManifest(format, name, ARM64, 1)];
    const idx = buildIndex(format, children);
    const dir = join(cacheDir, name);
    const blobs = uniqueBlobs(children);
    if (format === "oci") {
      await writeOciLayout(dir, "v1", { blob: idx.index, mediaType: idx.mediaType }, [...children.map((c) => c.manifest), ...blobs]);
    } else {
      await writeDirLayout(dir, idx.index, children.map((c) => c.manifest), blobs);
    }
    return {
      repo: `${REPO_PREFIX}/${name}`,
      tag: "v1",
      kind: format === "oci" ? "oci-index" : "docker-list",
      digest: idx.index.digest,
      mediaType: idx.mediaType,
      manifests: idx.descriptors.map((d) => ({ ...d })),
      blobs: blobSummary(blobs),
      source: format === "oci" ? `oci:${dir}:v1` : `dir:${dir}`,
    };
  };

  images.push(await single("oci-single", "oci", 2));
  images.push(await multi("oci-index", "oci"));
  images.push(await multi("docker-list", "docker"));
  images.push(await single("docker-single", "docker", 1));
  images.push(await single("many-layers", "oci", 50));
  images.push(await buildBigImage(cacheDir));
  return images;
}

/** The test image stowage-test/NAME among `images`. */
export function testImage(images: readonly TestImage[], name: string): TestImage {
  const found = images.find((i) => i.repo === `${REPO_PREFIX}/${name}`);
  if (!found) throw new Error(`no test image ${name}`);
  return found;
}

async function buildBigImage(cacheDir: string): Promise<TestImage> {
  const name = "big-layer";
  const dir = join(cacheDir, name);
  const layer = await ensureBigLayer(join(dir, "blobs", "sha256"), join(cacheDir, `${name}.layer.json`));
  // The layer is an uncompressed tar, so its diff_id is its own digest.
  const config = imageConfig(name, AMD64, [layer.digest]);
  const manifest = jsonBlob({
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociManifest,
    config: descriptor(MEDIA_TYPES.ociConfig, config),
    layers: [descriptor(MEDIA_TYPES.ociLayerTar, layer)],
  });
  await writeOciLayout(dir, "v1", { blob: manifest, mediaType: MEDIA_TYPES.ociManifest }, [config], [layer.digest]);
  return {
    repo: `${REPO_PREFIX}/${name}`,
    tag: "v1",
    kind: "oci-manifest",
    digest: manifest.digest,
    mediaType: MEDIA_TYPES.ociManifest,
    manifests: [],
    blobs: blobSummary([config, layer]),
    source: `oci:${dir}:v1`,
  };
}
