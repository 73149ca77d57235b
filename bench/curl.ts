// Downloads with curl to /dev/null, so every peer is read by the same, cheap client and the
// benchmark's own event loop (which also runs the recording proxies) stays out of the client path.
import { execFile, spawn } from "node:child_process";

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

export type HashedDownload = Partial<Download> & { ok: boolean; sha256: string; curlExit: number; error: string };

/**
 * A GET whose body is hashed (by openssl, outside this process, with the CPU's SHA instructions:
 * coreutils sha256sum takes three times the CPU) instead of thrown away, for
 * runs where the bytes may be wrong. It never throws for a failed transfer: that is a result.
 */
export function curlHashed(url: string, size: number, digest: string, timeoutSeconds = 300): Promise<HashedDownload> {
  return new Promise((resolve, reject) => {
    const curl = spawn("curl", ["-sS", "--max-time", String(timeoutSeconds), "-o", "-", "-w", `%{stderr}${FORMAT}`, url], { stdio: ["ignore", "pipe", "pipe"] });
    const hasher = spawn("openssl", ["dgst", "-sha256", "-r"], { stdio: [curl.stdout, "pipe", "inherit"] });
    let err = "";
    let hash = "";
    curl.stderr.on("data", (c: Buffer) => (err += c.toString()));
    hasher.stdout.on("data", (c: Buffer) => (hash += c.toString()));
    // curl's stdout belongs to the hasher, so curl never emits "close" here: wait for its exit
    // and the end of its stderr instead.
    const curlDone = Promise.all([
      new Promise<number>((r, j) => (curl.once("error", j), curl.once("exit", (code) => r(code ?? -1)))),
      new Promise<void>((r) => curl.stderr.once("end", r)),
    ]).then(([code]) => code);
    const hasherDone = new Promise<void>((r, j) => (hasher.once("error", j), hasher.once("close", () => r())));
    Promise.all([curlDone, hasherDone]).then(([curlExit]) => {
      // -w output comes last on stderr; anything before it is curl's own error message.
      const lines = err.trim().split("\n");
      const [status, bytes, speed, ttfb, total] = (lines.pop() ?? "").split(" ").map(Number);
      const sha256 = "sha256:" + (hash.split(" ")[0] ?? "");
      const ok = curlExit === 0 && status === 200 && bytes === size && sha256 === digest;
      resolve({ status, bytes, speed, ttfb, total, ok, sha256, curlExit, error: lines.join(" ").trim() });
    }, reject);
  });
}
