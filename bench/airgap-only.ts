// Only the air-gap rows of the benchmark: `npx tsx bench/airgap-only.ts`.
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR } from "../test/harness/images.ts";
import { pushTestImages, startRegistry } from "../test/harness/registry.ts";
import { ensureBigBlob, pushBigBlobImage } from "./big-blob.ts";
import { airgapTransfers, printAirgap } from "./scenarios/airgap.ts";

const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
const bigBlob = await ensureBigBlob(DEFAULT_IMAGE_CACHE_DIR);
const upstream = await startRegistry();
try {
  await pushTestImages(upstream.url, images);
  const bigImg = await pushBigBlobImage(upstream.url, bigBlob);
  const all = [...images.map((i) => ({ ref: `${i.repo}:${i.tag}`, blobs: i.blobs })), { ref: `${bigImg.repo}:${bigImg.tag}`, blobs: bigImg.blobs }];
  const unique = new Map(all.flatMap((i) => i.blobs.map((b) => [b.digest, b.size] as const)));
  printAirgap(await airgapTransfers(upstream.url, all.map((i) => i.ref), [...unique.values()].reduce((a, b) => a + b, 0)));
} finally {
  await upstream.stop();
}
process.exit(0);
