// Process introspection for the benchmark: which pid listens on a port, its peak memory, and the
// CPU time it spent. Linux only (/proc, ss); the benchmark machine is Linux.
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/** The harness does not expose child pids, so find the process by the port it listens on. */
export async function pidListeningOn(port: number): Promise<number> {
  const { stdout } = await execFileP("ss", ["-H", "-ltnp", `sport = :${port}`]);
  const m = /pid=(\d+)/.exec(stdout);
  if (!m) throw new Error(`no process found listening on port ${port}:\n${stdout}`);
  return Number(m[1]);
}

async function statusKb(pid: number, field: "VmRSS" | "VmHWM"): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, "utf8");
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
  if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
  return Number(m[1]);
}

export async function rssBytes(pid: number): Promise<number> {
  return (await statusKb(pid, "VmRSS")) * 1024;
}

/**
 * Peak RSS of a process over a stretch of time. VmHWM is exact but covers the whole life of the
 * process, so it is reset first (writing 5 to clear_refs, root only); if that is refused, VmRSS
 * sampled every 50 ms stands in. Either way the larger of the two is reported.
 */
export class PeakRss {
  private sampled = 0;
  private timer: NodeJS.Timeout | null = null;
  private hwmReset = false;

  private constructor(private readonly pid: number) {}

  static async start(pid: number): Promise<PeakRss> {
    const p = new PeakRss(pid);
    try {
      await writeFile(`/proc/${pid}/clear_refs`, "5");
      p.hwmReset = true;
    } catch {
      // not permitted here: the sampler alone will have to do
    }
    p.sampled = await rssBytes(pid);
    p.timer = setInterval(() => {
      rssBytes(pid).then(
        (b) => (p.sampled = Math.max(p.sampled, b)),
        () => {},
      );
    }, 50);
    return p;
  }

  async stop(): Promise<number> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const now = await rssBytes(this.pid);
    const hwm = this.hwmReset ? (await statusKb(this.pid, "VmHWM")) * 1024 : 0;
    return Math.max(this.sampled, now, hwm);
  }
}

const CLOCK_TICKS = 100; // USER_HZ; `getconf CLK_TCK` is 100 on every Linux the benchmark targets

/** User + system CPU seconds of the whole process, ended threads included. */
export async function cpuSeconds(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/stat`, "utf8");
  // comm is in parentheses and may contain spaces, so split after the last ')'.
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // Fields after comm, 0-based: utime is 11, stime 12 (stat(5) numbers 14, 15).
  return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
}
