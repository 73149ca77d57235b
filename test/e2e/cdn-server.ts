// A blob CDN in front of a distribution's filesystem storage: distribution's `redirect` storage
// middleware answers blob GETs with a 307 to BASEURL + the storage path of the blob's data file,
// and this server serves that file. It logs every request with all its headers, so a test can
// show that no Authorization ever reached it.
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { join, normalize } from "node:path";
import type { Handler } from "./https-server.ts";

export type CdnLogEntry = { method: string; path: string; status: number; headers: IncomingHttpHeaders };

// Only blob data files, as the middleware names them: /docker/registry/v2/blobs/sha256/ab/<hex>/data
const BLOB_DATA = /^\/docker\/registry\/v2\/blobs\/sha256\/[a-f0-9]{2}\/[a-f0-9]{64}\/data$/;

export function makeCdn(storageRoot: string): { handler: Handler; log: CdnLogEntry[] } {
  const log: CdnLogEntry[] = [];
  const handler: Handler = async (req, res) => {
    const method = req.method ?? "GET";
    const path = new URL(req.url ?? "/", "https://cdn.invalid").pathname;
    const entry: CdnLogEntry = { method, path, status: 0, headers: { ...req.headers } };
    log.push(entry);
    const finish = (status: number, headers: Record<string, string> = {}, body = ""): void => {
      entry.status = status;
      res.writeHead(status, { "content-type": "text/plain", "content-length": String(Buffer.byteLength(body)), ...headers }).end(method === "HEAD" ? undefined : body);
    };
    if (method !== "GET" && method !== "HEAD") return finish(405, {}, "method not allowed\n");
    if (!BLOB_DATA.test(path)) return finish(404, {}, "not found\n");
    const file = join(storageRoot, normalize(path));
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile()) return finish(404, {}, "not found\n");

    let start = 0;
    let end = st.size - 1;
    let status = 200;
    const headers: Record<string, string> = { "content-type": "application/octet-stream", "accept-ranges": "bytes" };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (range) {
      start = Number(range[1]);
      if (range[2]) end = Math.min(end, Number(range[2]));
      if (start > end) return finish(416, { "content-range": `bytes */${st.size}` });
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${st.size}`;
    }
    headers["content-length"] = String(end - start + 1);
    entry.status = status;
    res.writeHead(status, headers);
    if (method === "HEAD" || st.size === 0) return void res.end();
    createReadStream(file, { start, end }).pipe(res);
  };
  return { handler, log };
}
