// The 1 GiB test blob and the one-layer image around it, for the large-blob scenarios.
//
// The blob is an uncompressed tar of one file of AES-CTR keystream (deterministic and
// incompressible, fast to make with AES-NI), exactly 1 GiB long. It is built once into the test
// image cache dir and reused while its recorded digest still matches; it is pushed to the
// upstream with the distribution push API, streamed from the file, because skopeo would read and
// check the gigabyte once more for nothing.
import { createCipheriv, createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, stat, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { Readable } from "node:stream";
import { join } from "node:path";
import { MEDIA_TYPES, tarHeader } from "../test/harness/images.ts";
import { fileSha256, sha256 } from "../test/support/oci.ts";

export const GiB = 1024 * 1024 * 1024;
const CHUNK = 4 * 1024 * 1024;
const TAR_BLOCK = 512;
// One file header in front, the two-block end marker behind; the payload fills the rest.
const PAYLOAD_BYTES = GiB - 3 * TAR_BLOCK;
// Recorded next to the blob; any change in how it is made must change this string.
const RECIPE = `tar(stowage-bench/one-gib.bin, aes-128-ctr key 0x42×16 iv 0, ${PAYLOAD_BYTES} bytes) v1`;

export type BigBlob = { path: string; digest: string; size: number };

/** The image the blob is pushed in: what a client would pull, and the manifest the peers cache. */
export type BigBlobImage = {
  repo: string;
  tag: string;
  manifestDigest: string;
  manifestMediaType: string;
  blob: BigBlob;
  /** Config and layer, as a client pulls them. */
  blobs: Array<{ digest: string; size: number }>;
};


/** Returns the blob in `cacheDir`, building it unless a copy whose digest still checks out is there. */
export async function ensureBigBlob(cacheDir: string): Promise<BigBlob> {
  const dir = join(cacheDir, "bench-one-gib");
  const path = join(dir, "blob.tar");
  const recordPath = join(dir, "record.json");
  await mkdir(dir, { recursive: true });
  const rec = await readFile(recordPath, "utf8").then((t) => JSON.parse(t) as { recipe: string; digest: string }, () => null);
  if (rec?.recipe === RECIPE && (await stat(path).then((s) => s.size === GiB, () => false)) && (await fileSha256(path)) === rec.digest) {
    return { path, digest: rec.digest, size: GiB };
  }

  const tmp = `${path}.tmp-${process.pid}`;
  const hash = createHash("sha256");
  const file = await open(tmp, "w");
  const put = async (buf: Buffer) => {
    hash.update(buf);
    await file.write(buf);
  };
  try {
    await put(tarHeader("stowage-bench/one-gib.bin", "file", PAYLOAD_BYTES));
    const cipher = createCipheriv("aes-128-ctr", Buffer.alloc(16, 0x42), Buffer.alloc(16, 0));
    const zeros = Buffer.alloc(CHUNK);
    for (let left = PAYLOAD_BYTES; left > 0; left -= CHUNK) await put(cipher.update(zeros.subarray(0, Math.min(CHUNK, left))));
    await put(Buffer.alloc(2 * TAR_BLOCK));
  } finally {
    await file.close();
  }
  const digest = "sha256:" + hash.digest("hex");
  await rename(tmp, path);
  await writeFile(recordPath, JSON.stringify({ recipe: RECIPE, digest }));
  return { path, digest, size: GiB };
}

/** Monolithic blob upload: POST for an upload URL, then one PUT ?digest= with the whole body. */
async function pushBlob(registryUrl: string, repo: string, digest: string, size: number, body: () => NodeJS.ReadableStream): Promise<void> {
  const start = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: "POST", signal: AbortSignal.timeout(30_000) });
  await start.body?.cancel();
  const location = start.headers.get("location");
  if (start.status !== 202 || !location) throw new Error(`POST blob upload to ${repo}: ${start.status}`);
  const target = new URL(location, registryUrl);
  target.searchParams.set("digest", digest);
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(target, { method: "PUT", headers: { "content-type": "application/octet-stream", "content-length": size } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    // No progress for a minute means the upstream is stuck: fail rather than wait forever.
    req.setTimeout(60_000, () => req.destroy(new Error(`PUT blob ${digest}: no progress for 60 s`)));
    req.on("error", reject);
    body().pipe(req);
  });
  if (status !== 201) throw new Error(`PUT blob ${digest} to ${repo}: ${status}`);
}

export async function pushBigBlobImage(registryUrl: string, blob: BigBlob): Promise<BigBlobImage> {
  const repo = "stowage-bench/one-gib";
  const tag = "v1";
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      created: "2024-01-01T00:00:00Z",
      rootfs: { type: "layers", diff_ids: [blob.digest] },
    }),
  );
  const configDesc = { mediaType: MEDIA_TYPES.ociConfig, digest: sha256(config), size: config.length };
  const layerDesc = { mediaType: MEDIA_TYPES.ociLayerTar, digest: blob.digest, size: blob.size };
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config: configDesc, layers: [layerDesc] }));

  await pushBlob(registryUrl, repo, blob.digest, blob.size, () => createReadStream(blob.path, { highWaterMark: CHUNK }));
  await pushBlob(registryUrl, repo, configDesc.digest, config.length, () => Readable.from([config]));
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    headers: { "content-type": MEDIA_TYPES.ociManifest },
    body: manifest,
    signal: AbortSignal.timeout(30_000),
  });
  await res.body?.cancel();
  if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${tag}: ${res.status}`);
  return {
    repo,
    tag,
    manifestDigest: sha256(manifest),
    manifestMediaType: MEDIA_TYPES.ociManifest,
    blob,
    blobs: [configDesc, layerDesc].map(({ digest, size }) => ({ digest, size })),
  };
}
