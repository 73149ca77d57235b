// nginx as a registry pull-through cache, as the popular nginx-based registry mirrors build one:
// proxy_cache in front of the registry, blobs cached for long (they are content-addressed),
// manifests for a short while (tags move), and proxy_cache_lock so that clients asking for the
// same uncached blob wait for one upstream fetch instead of each starting their own. Tuned as a
// careful operator would (large buffers, sendfile, temp files on the cache's disk), so that it is
// a strong peer, not a strawman. One process (master_process off), like the bench's other nginx.
import { createHash } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { startNginx, type Nginx } from "./nginx.ts";

export type NginxCache = Nginx & { port: number; hasBlob(digest: string, size: number): Promise<boolean> };

// nginx's cache file for a key: md5 of the key, in dirs named by its last characters (levels=1:2).
function cacheFile(cacheDir: string, key: string): string {
  const h = createHash("md5").update(key).digest("hex");
  return join(cacheDir, h.slice(-1), h.slice(-3, -1), h);
}

export async function startNginxCache(upstreamUrl: string, port: number): Promise<NginxCache> {
  const upstream = new URL(upstreamUrl);
  let cacheDir = "";
  const n = await startNginx((p, dir) => {
    cacheDir = join(dir, "cache");
    return `
  access_log off;
  sendfile on;
  tcp_nopush on;
  # use_temp_path=off: a response being cached is written next to the cache and renamed into it.
  proxy_cache_path ${cacheDir} levels=1:2 keys_zone=registry:16m max_size=32g inactive=30d use_temp_path=off;
  upstream origin { server ${upstream.host}; keepalive 16; }
  server {
    listen 127.0.0.1:${p};
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 300s;
    proxy_buffer_size 256k;
    proxy_buffers 16 256k;
    proxy_busy_buffers_size 1m;
    proxy_max_temp_file_size 32768m;
    proxy_temp_file_write_size 1m;
    # One upstream fetch per uncached object: the others wait (polling every 500 ms) for it to
    # land in the cache. lock_age as long as the timeout, or after 5 s a second copy would start.
    proxy_cache_lock on;
    proxy_cache_lock_timeout 900s;
    proxy_cache_lock_age 900s;
    # Registries send their own Cache-Control; the mirror decides what to keep and for how long.
    proxy_ignore_headers Cache-Control Expires Set-Cookie;
    add_header X-Cache-Status $upstream_cache_status always;

    location ~ "^/v2/.+/blobs/(?<digest>sha256:[0-9a-f]{64})$" {
      proxy_pass http://origin;
      proxy_cache registry;
      proxy_cache_key $digest;
      proxy_cache_valid 200 206 30d;
    }
    location ~ ^/v2/.+/manifests/ {
      proxy_pass http://origin;
      proxy_cache registry;
      # A tag's manifest depends on the Accept header; kept as long as Stowage keeps a tag (60 s).
      proxy_cache_key $uri|$http_accept;
      proxy_cache_valid 200 60s;
    }
    location / {
      proxy_pass http://origin;
    }
  }`;
  }, { port });
  return {
    ...n,
    port,
    // The file appears (renamed from its temp file) once the whole body is in; it holds a header too.
    hasBlob: (digest, size) => stat(cacheFile(cacheDir, digest)).then((s) => s.size > size, () => false),
  };
}
