// CNCF distribution (Debian docker-registry) as a real upstream, and skopeo to fill it.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import type { TestImage } from "./images.ts";
import { answers, freePort, madeByHarness, makeTempDir, procFor, type Proc, run, type RunResult, spawnTracked, waitUntil } from "./processes.ts";

const REGISTRY_BIN = "/usr/bin/docker-registry";

/**
 * CNCF distribution (Debian docker-registry) on 127.0.0.1. Restartable: stop({ keepData: true })
 * then startRegistry({ port, rootDir }) serves the same content on the same address.
 */
export async function startRegistry(
  opts: { proxyRemoteUrl?: string; proxyCredentials?: { username: string; password: string }; port?: number; rootDir?: string } = {},
): Promise<
  Proc & { url: string; port: number; rootDir: string }
> {
  const port = opts.port ?? (await freePort());
  // A root dir the harness made earlier (kept for a restart) is owned by the new process.
  const ownsRoot = !opts.rootDir || madeByHarness(opts.rootDir);
  const rootDir = opts.rootDir ?? (await makeTempDir("registry-data"));
  const confDir = await makeTempDir("registry-conf");
  const config: Record<string, unknown> = {
    version: 0.1,
    log: { level: "info", accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: rootDir }, delete: { enabled: true } },
    // A fixed secret keeps upload state valid across a restart.
    http: { addr: `127.0.0.1:${port}`, secret: "stowage-e2e-registry-secret" },
  };
  if (opts.proxyRemoteUrl) config.proxy = { remoteurl: opts.proxyRemoteUrl, ...opts.proxyCredentials };
  const configPath = join(confDir, "config.yml");
  await writeFile(configPath, toYaml(config));
  const s = spawnTracked(REGISTRY_BIN, ["serve", configPath]);
  const proc = procFor(s, { scratch: [confDir], data: ownsRoot ? [rootDir] : [] });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntil("docker-registry", s, 15_000, () => answers(`${url}/v2/`, (st) => st === 200 || st === 401));
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { ...proc, url, port, rootDir };
}

/**
 * docker-registry with a config file the caller wrote (TLS, token or htpasswd auth, storage
 * middleware); ready once `ready` says so. `scratch` dirs are removed when it stops.
 */
export async function startRegistryWithConfig(configPath: string, ready: () => Promise<boolean>, scratch: string[] = []): Promise<Proc> {
  const s = spawnTracked(REGISTRY_BIN, ["serve", configPath]);
  const proc = procFor(s, { scratch });
  try {
    await waitUntil("docker-registry", s, 15_000, ready);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

export async function skopeo(args: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return run("skopeo", args, opts.timeoutMs ?? 180_000);
}

const ALL_MANIFEST_TYPES = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
].join(", ");

/**
 * Pushes each image with `skopeo copy --all --preserve-digests` (so index/list digests stay exact),
 * then checks the registry serves each tag under the expected digest.
 * skopeo 1.9.3 copies a Docker manifest list from a `dir:` source with --all, so no image needs a
 * hand-rolled HTTP push.
 */
export async function pushTestImages(registryUrl: string, images: TestImage[]): Promise<void> {
  const host = new URL(registryUrl).host;
  await Promise.all(
    images.map(async (img) => {
      const dest = `docker://${host}/${img.repo}:${img.tag}`;
      const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false", img.source, dest]);
      if (r.code !== 0) throw new Error(`skopeo copy ${img.source} → ${dest} failed (${r.code}):\n${r.stderr}`);
    }),
  );
  for (const img of images) {
    for (const ref of [img.tag, img.digest]) {
      const res = await fetch(`${registryUrl}/v2/${img.repo}/manifests/${ref}`, { method: "HEAD", headers: { Accept: ALL_MANIFEST_TYPES } });
      const served = res.headers.get("docker-content-digest");
      if (res.status !== 200 || served !== img.digest) {
        throw new Error(`registry serves ${img.repo}:${ref} as ${res.status} ${served}, expected ${img.digest}`);
      }
    }
  }
}
