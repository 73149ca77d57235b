// How fast this machine's disk takes a blob: the ceiling of any cache that stores a blob while
// serving it from one upstream fetch with bounded memory (Stowage paces its clients to its store
// writes). Plain 1 MiB writes from one reused buffer, no fsync (the peers fsync after the last
// byte), into the temp dir where the peers keep their data.
//
// It is run right before every cold measurement, for a second reason: on a VM that hands free
// memory back to its host (virtio-balloon free page reporting, as on the machine this bench was
// written on), the first write to a page the guest freed a few seconds ago costs a fault in the
// host. Page-cache writes then run at ~180 MB/s instead of GB/s, and a peer that happened to
// start right after another peer's cleanup (whose freed pages were still backed) looked several
// times faster cold. Writing and removing a file as large as what the peer will store leaves
// backed pages for the peer's own writes, whichever peer it is.
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { makeTempDir } from "../test/harness/processes.ts";

const CHUNK = 1024 * 1024;

/** Bytes per second of writing `bytes` to a new file on the peers' filesystem. */
export async function diskWriteSpeed(bytes: number): Promise<number> {
  const dir = await makeTempDir("bench-disk");
  const path = join(dir, "write-test");
  const buf = new Uint8Array(CHUNK).fill(0x5a);
  const handle = await open(path, "w");
  try {
    const t0 = performance.now();
    for (let done = 0; done < bytes; ) {
      const { bytesWritten } = await handle.write(buf, 0, Math.min(CHUNK, bytes - done), done);
      done += bytesWritten;
    }
    return bytes / ((performance.now() - t0) / 1000);
  } finally {
    await handle.close();
    await rm(dir, { recursive: true, force: true });
  }
}
