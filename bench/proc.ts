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

type Stat = { comm: string; minflt: number; seconds: number };

function parseStat(text: string): Stat {
  // comm is in parentheses and may contain spaces, so split after the last ')'.
  const close = text.lastIndexOf(")");
  const comm = text.slice(text.indexOf("(") + 1, close);
  const f = text.slice(close + 2).split(" ");
  // Fields after comm, 0-based: minflt is 7, utime 11, stime 12 (stat(5) numbers 10, 14, 15).
  return { comm, minflt: Number(f[7]), seconds: (Number(f[11]) + Number(f[12])) / CLOCK_TICKS };
}

/** Whole-process figures, ended threads included. */
export async function processStat(pid: number): Promise<Stat> {
  return parseStat(await readFile(`/proc/${pid}/stat`, "utf8"));
}

export async function processCpuSeconds(pid: number): Promise<number> {
  return (await processStat(pid)).seconds;
}

type ThreadTimes = { process: Stat; threads: Map<number, number> };

/** CPU seconds per thread id, plus the whole-process totals. */
export async function threadTimes(pid: number): Promise<ThreadTimes> {
  const threads = new Map<number, number>();
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    try {
      threads.set(Number(tid), parseStat(await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8")).seconds);
    } catch {
      // the thread ended between readdir and read
    }
  }
  return { process: await processStat(pid), threads };
}

/**
 * CPU used between two snapshots: the main thread (the event loop), and each other thread that
 * did anything. Node does not name its threads on this build (all are "node"), so the others
 * (digest workers, libuv pool, V8 GC and compiler threads) are told apart only by how busy they are.
 */
export type CpuUse = { total: number; main: number; others: number[]; minorFaults: number };

export function cpuBetween(pid: number, before: ThreadTimes, after: ThreadTimes): CpuUse {
  const others: number[] = [];
  let main = 0;
  for (const [tid, secs] of after.threads) {
    const spent = secs - (before.threads.get(tid) ?? 0);
    if (tid === pid) main = spent;
    else if (spent > 0) others.push(spent);
  }
  others.sort((a, b) => b - a);
  return {
    total: after.process.seconds - before.process.seconds,
    main,
    others,
    minorFaults: after.process.minflt - before.process.minflt,
  };
}
