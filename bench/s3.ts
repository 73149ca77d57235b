// The S3 store the S3 peers use: a Ceph RGW the bench starts (objects in memory), or an endpoint
// given with --s3-endpoint (bucket `stowage-bench`, credentials from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY). Every call the bench's own client makes has a deadline: a stuck S3
// connection once held a whole run forever after its last S3 scenario.
import { S3Client } from "@aws-sdk/client-s3";
import { rgwUnavailable, startRgw } from "../test/harness/rgw.ts";
import { withTimeout } from "./deadline.ts";
import { progress } from "./measure.ts";
import type { S3Target } from "./peers.ts";

export type S3Source = "rgw" | { endpoint: string };

const RGW_START_MS = 3 * 60_000;
const RGW_STOP_MS = 30_000;

const message = (err: unknown) => (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";

/** Runs `fn` with an S3 target; resolves to why S3 was skipped, or null when `fn` ran. */
export async function withS3(source: S3Source, fn: (s3: S3Target) => Promise<void>): Promise<string | null> {
  // The SDK in this process (the bench's own bucket client) would warn about node 20 on stderr.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";
  if (source !== "rgw") {
    const credentials = { accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "STOWAGETESTKEY", secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "stowage-test-secret" };
    const client = new S3Client({
      region: "us-east-1",
      endpoint: source.endpoint,
      forcePathStyle: true,
      credentials,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      requestHandler: { connectionTimeout: 5_000, requestTimeout: 20_000 },
      maxAttempts: 2,
    });
    try {
      await fn({ endpoint: source.endpoint, bucket: "stowage-bench", credentials, client });
    } finally {
      client.destroy();
    }
    return null;
  }
  const missing = rgwUnavailable();
  if (missing) return missing;
  progress("starting Ceph RGW for the S3 store");
  let rgw: Awaited<ReturnType<typeof startRgw>>;
  const starting = startRgw();
  try {
    rgw = await withTimeout(starting, RGW_START_MS, "starting Ceph RGW");
  } catch (err) {
    // Should it come up after all, it must not be left running.
    void starting.then((r) => r.stop(), () => {});
    return `Ceph RGW did not start: ${message(err)}`;
  }
  try {
    await fn(rgw);
  } finally {
    await withTimeout(rgw.stop(), RGW_STOP_MS, "stopping Ceph RGW").catch((err: unknown) => progress(`  ${message(err)}`));
  }
  return null;
}
