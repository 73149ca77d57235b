import { FsBlobStore } from "./src/storage/fs-store.ts";
import { parseDigest } from "./src/registry/reference.ts";
const store = await FsBlobStore.open("/tmp/smoke/denofs");
const d = parseDigest("sha256:" + "a".repeat(64))!;
const up = await store.begin(d);
const r = await up.openReader();
const t = performance.now();
const ps = [];
for (let i = 0; i < 64; i++) { const b = new Uint8Array(1 << 20).fill(i); ps.push(up.write(b)); if (ps.length >= 4) await ps.shift(); }
await Promise.all(ps);
console.log("wrote", performance.now() - t);
const x = await r.read(5 << 20, 10);
console.log("read", x);
await up.abort();
