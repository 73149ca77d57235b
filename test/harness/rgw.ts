// A throwaway Ceph RGW (S3) on 127.0.0.1 for the S3 store tests: one monitor, one in-memory
// OSD and radosgw, no authentication inside the cluster, everything in one temp dir.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { freePort, makeTempDir, removeTempDir } from "./processes.ts";

export const RGW_BINARIES = ["/usr/bin/ceph-mon", "/usr/bin/ceph-osd", "/usr/bin/radosgw", "/usr/bin/radosgw-admin", "/usr/bin/monmaptool", "/usr/bin/ceph"];

/** Why RGW cannot run here (binaries missing), or null when it can. */
export function rgwUnavailable(): string | null {
  const missing = RGW_BINARIES.filter((b) => !existsSync(b));
  return missing.length ? `Ceph RGW is not installed (missing ${missing.join(", ")}; run test/setup.sh)` : null;
}

export type Rgw = {
  endpoint: string;
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** An SDK client for the test's own checks (list, delete). */
  client: S3Client;
  /** radosgw's log, which records each request with its status and Range. */
  log(): Promise<string>;
  /** How long start-up took, for the test's own report. */
  readyMs: number;
  stop(): Promise<void>;
};

const READY_TIMEOUT_MS = 60_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// The kernel kills these daemons when the test process dies, even by SIGKILL.
const SETPRIV = "/usr/bin/setpriv";

export async function startRgw(): Promise<Rgw> {
  const started = Date.now();
  const dir = await makeTempDir("rgw");
  const children: ChildProcess[] = [];
  const output: string[] = [];
  const daemon = (cmd: string, args: string[]): ChildProcess => {
    const [file, argv] = existsSync(SETPRIV) ? [SETPRIV, ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.on("data", (d: Buffer) => output.push(d.toString()));
    child.stderr?.on("data", (d: Buffer) => output.push(d.toString()));
    children.push(child);
    return child;
  };
  const stop = async (): Promise<void> => {
    for (const c of [...children].reverse()) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const exited = new Promise((r) => c.once("close", r));
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await removeTempDir(dir);
  };
  process.once("exit", () => children.forEach((c) => c.kill("SIGKILL")));

  try {
    const [monPort, rgwPort] = [await freePort(), await freePort()];
    const conf = join(dir, "ceph.conf");
    const fsid = crypto.randomUUID();
    for (const d of ["mon", "osd", "run", "log", "rgw"]) await mkdir(join(dir, d));
    await writeFile(
      conf,
      [
        "[global]",
        `fsid = ${fsid}`,
        `mon host = v2:127.0.0.1:${monPort}`,
        "mon initial members = a",
        "ms bind msgr1 = false",
        "auth cluster required = none",
        "auth service required = none",
        "auth client required = none",
        // Without these, clients ask for "secure" mode the mon will not offer, and rgw waits 300 s.
        "ms mon client mode = crc secure",
        "ms client mode = crc secure",
        "osd objectstore = memstore",
        "memstore device bytes = 2147483648",
        "mon allow pool size one = true",
        "mon max pg per osd = 1000",
        "mon warn on pool no redundancy = false",
        "osd pool default size = 1",
        "osd pool default min size = 1",
        "osd pool default pg num = 8",
        "osd pool default pgp num = 8",
        "osd pool default pg autoscale mode = off",
        "osd crush chooseleaf type = 0",
        `run dir = ${dir}/run`,
        `admin socket = ${dir}/run/$name.$pid.asok`,
        `log file = ${dir}/log/$name.log`,
        "keyring = /dev/null",
        "[mon.a]",
        `mon data = ${dir}/mon`,
        "[osd.0]",
        `osd data = ${dir}/osd`,
        "public addr = 127.0.0.1",
        "cluster addr = 127.0.0.1",
        "[client.rgw]",
        `rgw frontends = beast endpoint=127.0.0.1:${rgwPort}`,
        `rgw data = ${dir}/rgw`,
        // A deleted object's data stays until RGW's garbage collection, by default two hours
        // later: in the 2 GiB memstore, the bench's second 1 GiB blob (the Deno peer's, after
        // the Node peer's was deleted) filled the OSD and its upload hung. Collect at once.
        "rgw gc obj min wait = 0",
        "rgw gc processor period = 2",
        "",
      ].join("\n"),
    );
    const monmap = join(dir, "monmap");
    await runTool("monmaptool", ["--create", "--fsid", fsid, "--addv", "a", `[v2:127.0.0.1:${monPort}]`, monmap]);
    await runTool("ceph-mon", ["--mkfs", "-i", "a", "-c", conf, "--monmap", monmap]);
    daemon("ceph-mon", ["-f", "-i", "a", "-c", conf]);
    const osdId = (await runTool("ceph", ["-c", conf, "--connect-timeout", "20", "osd", "create"])).trim();
    if (osdId !== "0") throw new Error(`ceph osd create returned ${JSON.stringify(osdId)}, expected 0`);
    await runTool("ceph-osd", ["-i", "0", "--mkfs", "-c", conf]);
    daemon("ceph-osd", ["-f", "-i", "0", "-c", conf]);
    daemon("radosgw", ["-f", "-n", "client.rgw", "-c", conf]);

    const endpoint = `http://127.0.0.1:${rgwPort}`;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
      if (dead) throw new Error(`${dead.spawnargs.join(" ")} exited early`);
      const status = await fetch(endpoint, { signal: AbortSignal.timeout(2_000) }).then((r) => (void r.body?.cancel(), r.status), () => 0);
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`radosgw not ready after ${READY_TIMEOUT_MS} ms`);
      await sleep(200);
    }

    const credentials = { accessKeyId: "STOWAGETESTKEY", secretAccessKey: "stowage-test-secret" };
    await runTool("radosgw-admin", [
      "-c", conf, "-n", "client.rgw", "user", "create", "--uid", "stowage", "--display-name", "stowage",
      "--access-key", credentials.accessKeyId, "--secret-key", credentials.secretAccessKey,
    ]);
    const client = new S3Client({
      region: "us-east-1",
      endpoint,
      forcePathStyle: true,
      credentials,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      // Without deadlines a stuck RGW connection holds a test (or the bench) forever.
      requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 },
    });
    const bucket = "stowage-e2e";
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    const readyMs = Date.now() - started;
    return {
      endpoint,
      bucket,
      credentials,
      client,
      readyMs,
      log: () => readFile(join(dir, "log", "client.rgw.log"), "utf8"),
      async stop() {
        client.destroy();
        await stop();
      },
    };
  } catch (err) {
    const logs = output.join("").slice(-4000);
    await stop();
    throw new Error(`cannot start Ceph RGW: ${err instanceof Error ? err.message : String(err)}\n${logs}`);
  }
}

/** Runs a Ceph tool to completion (30 s at most); its stdout, or an error with its output. */
function runTool(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(" ")} failed (${code}): ${err.slice(-2000)}`));
    });
  });
}
