// Downloads with curl to /dev/null, so every peer is read by the same, cheap client and the
// benchmark's own event loop (which also runs the recording proxies) stays out of the client path.
import { execFile } from "node:child_process";

export type Download = {
  status: number;
  bytes: number;
  /** Mean download speed as curl measured it, bytes/s. */
  speed: number;
  /** Seconds from start to the first response byte, and to the end. */
  ttfb: number;
  total: number;
};

const FORMAT = "%{http_code} %{size_download} %{speed_download} %{time_starttransfer} %{time_total}";

export function curlGet(url: string, timeoutSeconds = 120): Promise<Download> {
  return new Promise((resolve, reject) => {
    execFile(
      "curl",
      ["-sS", "-o", "/dev/null", "--max-time", String(timeoutSeconds), "-w", FORMAT, url],
      { timeout: (timeoutSeconds + 5) * 1000 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`curl ${url}: ${err.message}\n${stderr}`));
        const [status, bytes, speed, ttfb, total] = stdout.trim().split(" ").map(Number);
        if (status === undefined || bytes === undefined || speed === undefined || ttfb === undefined || total === undefined) {
          return reject(new Error(`curl ${url}: unexpected output ${JSON.stringify(stdout)}`));
        }
        resolve({ status, bytes, speed, ttfb, total });
      },
    );
  });
}

/** A GET that must return the whole blob; anything else means the figures would be meaningless. */
export async function curlBlob(url: string, size: number): Promise<Download> {
  const d = await curlGet(url);
  if (d.status !== 200 || d.bytes !== size) throw new Error(`GET ${url}: status ${d.status}, ${d.bytes} of ${size} bytes`);
  return d;
}
