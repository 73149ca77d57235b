// Process introspection for the benchmark: which pid listens on a port, its peak memory, and the
// CPU time its threads spent. Linux only (/proc, ss); the benchmark machine is Linux.
import { execFile } from "node:child_process";
import { readdir, readFile, writeFile } from "node:fs/promises";
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

/** CPU seconds (user+system) per thread name: node names its threads (libuv-worker, V8 workers, …). */
export type CpuByThread = Map<string, number>;

function parseStat(text: string): { comm: string; seconds: number } {
  // comm is in parentheses and may contain spaces, so split after the last ')'.
  const close = text.lastIndexOf(")");
  const comm = text.slice(text.indexOf("(") + 1, close);
  const fields = text.slice(close + 2).split(" ");
  // After comm: state is field 3 of stat(5), utime 14 and stime 15, i.e. indexes 11 and 12 here.
  const seconds = (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  return { comm, seconds };
}

type ThreadTimes = Map<number, { comm: string; seconds: number }>;

export async function threadTimes(pid: number): Promise<ThreadTimes> {
  const out: ThreadTimes = new Map();
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    try {
      const t = parseStat(await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8"));
      // The main thread shares its name with other threads; the event loop deserves its own line.
      if (Number(tid) === pid) t.comm = "main thread";
      out.set(Number(tid), t);
    } catch {
      // the thread ended between readdir and read
    }
  }
  return out;
}

/** CPU each thread name used between two snapshots (threads that ended in between are lost). */
export function cpuBetween(before: ThreadTimes, after: ThreadTimes): CpuByThread {
  const out: CpuByThread = new Map();
  for (const [tid, t] of after) {
    const spent = t.seconds - (before.get(tid)?.seconds ?? 0);
    if (spent > 0) out.set(t.comm, (out.get(t.comm) ?? 0) + spent);
  }
  return out;
}

export function totalCpu(c: CpuByThread): number {
  let s = 0;
  for (const v of c.values()) s += v;
  return s;
}
