// A private containerd for pulls as a real runtime makes them.
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { makeTempDir, procFor, type Proc, run, type RunResult, spawnTracked, waitUntil } from "./processes.ts";

/**
 * A private containerd (root, temp --root/--state, own unix socket, CRI off, no TCP listener).
 * ctr 1.6 talks plain HTTP to 127.0.0.1/localhost registries without --plain-http; pass it
 * yourself for any other host.
 */
export async function startContainerd(): Promise<
  Proc & { address: string; ctr(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult> }
> {
  const dir = await makeTempDir("containerd");
  const address = join(dir, "containerd.sock");
  const q = (s: string) => JSON.stringify(s);
  const config = [
    "version = 2",
    `root = ${q(join(dir, "root"))}`,
    `state = ${q(join(dir, "state"))}`,
    // CRI would start its own servers and want CNI; the others only fail noisily here.
    `disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]`,
    "[grpc]",
    `  address = ${q(address)}`,
    "[ttrpc]",
    `  address = ${q(address + ".ttrpc")}`,
    "[debug]",
    '  address = ""',
    "[metrics]",
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(dir, "opt"))}`,
    "",
  ].join("\n");
  const configPath = join(dir, "config.toml");
  await writeFile(configPath, config);
  const s = spawnTracked("containerd", ["--config", configPath]);
  const proc = procFor(s, { scratch: [dir] });
  const ctr = (args: string[], opts: { timeoutMs?: number } = {}) => run("ctr", ["--address", address, ...args], opts.timeoutMs ?? 180_000);
  try {
    await waitUntil("containerd", s, 15_000, async () => existsSync(address) && (await ctr(["version"], { timeoutMs: 5_000 })).code === 0);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { ...proc, address, ctr };
}
