import type { Logger } from "../log.ts";

/** One warning or error as the admin page shows it. */
export type RecentError = { time: number; level: "warn" | "error"; msg: string; fields: Record<string, unknown> };

export const RECENT_ERRORS_KEPT = 100;

/**
 * The last warnings and errors logged, for the admin page: an operator who opens it sees what
 * went wrong lately without a shell on the host. A fixed ring, so a storm of errors costs no
 * more memory than a quiet day.
 */
export class RecentErrors {
  private readonly ring: RecentError[] = [];
  private next = 0;

  constructor(private readonly capacity = RECENT_ERRORS_KEPT, private readonly now: () => number = Date.now) {}

  add(level: "warn" | "error", msg: string, fields: Record<string, unknown>): void {
    const entry = { time: this.now(), level, msg, fields };
    if (this.ring.length < this.capacity) this.ring.push(entry);
    else this.ring[this.next] = entry;
    this.next = (this.next + 1) % this.capacity;
  }

  /** Newest first. */
  list(): RecentError[] {
    const n = this.ring.length;
    const out: RecentError[] = [];
    for (let i = 1; i <= n; i++) out.push(this.ring[(this.next - i + n * 2) % n]!);
    return out;
  }
}

/**
 * `log` as it was, and every warn/error line (with the fields of its child loggers, such as the
 * request id) also kept in `recent`. server.ts wraps its logger with this before anything else
 * uses it, so every part of the server feeds the page.
 */
export function keepingRecentErrors(log: Logger, recent: RecentErrors): Logger {
  return log.observing((level, msg, fields) => recent.add(level, msg, fields));
}
