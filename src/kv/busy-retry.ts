import type { Kv, KvAtomic, KvKey } from "./kv.ts";
import { sleep } from "../util/deadline.ts";

/**
 * A KV file shared by several processes (instances on one machine) is one
 * SQLite database: while one process writes, another's write fails at once
 * with "database is locked" (SQLITE_BUSY; neither Deno KV nor @deno/kv waits
 * for the lock). Such a failure means nothing was applied, so the operation is
 * simply tried again, with a short backoff, for up to BUSY_BUDGET_MS.
 */
const BUSY_BUDGET_MS = 5_000;
const FIRST_BACKOFF_MS = 2;
const MAX_BACKOFF_MS = 100;

export function isBusy(err: unknown): boolean {
  const text = err instanceof Error ? err.message : String(err);
  return /database is locked|SQLITE_BUSY|database table is locked/i.test(text);
}


/** `op`, tried again while it fails because another process holds the database's lock. */
export async function whileBusy<T>(op: () => Promise<T>, budgetMs = BUSY_BUDGET_MS): Promise<T> {
  const deadline = Date.now() + budgetMs;
  for (let backoff = FIRST_BACKOFF_MS; ; backoff = Math.min(backoff * 2, MAX_BACKOFF_MS)) {
    try {
      return await op();
    } catch (err) {
      if (!isBusy(err) || Date.now() + backoff > deadline) throw err;
      // Jitter, so that two processes that collided do not collide again in step.
      await sleep(backoff / 2 + Math.random() * backoff);
    }
  }
}

type Op =
  | { kind: "check"; checks: Array<{ key: KvKey; versionstamp: string | null }> }
  | { kind: "set"; key: KvKey; value: unknown; options?: { expireIn?: number } }
  | { kind: "delete"; key: KvKey };

/** Records an atomic operation so that a busy commit can be replayed on a fresh one. */
class ReplayableAtomic implements KvAtomic {
  private readonly ops: Op[] = [];
  constructor(private readonly kv: Kv, private readonly budgetMs: number) {}

  check(...checks: Array<{ key: KvKey; versionstamp: string | null }>): KvAtomic {
    this.ops.push({ kind: "check", checks });
    return this;
  }
  set(key: KvKey, value: unknown, options?: { expireIn?: number }): KvAtomic {
    this.ops.push({ kind: "set", key, value, options });
    return this;
  }
  delete(key: KvKey): KvAtomic {
    this.ops.push({ kind: "delete", key });
    return this;
  }
  commit(): Promise<{ ok: boolean; versionstamp?: string }> {
    return whileBusy(() => {
      let atomic = this.kv.atomic();
      for (const op of this.ops) {
        if (op.kind === "check") atomic = atomic.check(...op.checks);
        else if (op.kind === "set") atomic = atomic.set(op.key, op.value, op.options);
        else atomic = atomic.delete(op.key);
      }
      return atomic.commit();
    }, this.budgetMs);
  }
}

/** `kv` with every operation retried while the database is locked by another process. */
export function retryWhileBusy(kv: Kv, budgetMs = BUSY_BUDGET_MS): Kv {
  return {
    get: (key) => whileBusy(() => kv.get(key), budgetMs),
    set: (key, value, options) => whileBusy(() => kv.set(key, value, options), budgetMs),
    delete: (key) => whileBusy(() => kv.delete(key), budgetMs),
    list<T>(selector: { prefix: KvKey }, options?: { limit?: number }) {
      return {
        async *[Symbol.asyncIterator]() {
          // Only the first read can be retried safely: after that, entries were already handed out.
          const { iterator, first } = await whileBusy(async () => {
            const iterator = kv.list<T>(selector, options)[Symbol.asyncIterator]();
            return { iterator, first: await iterator.next() };
          }, budgetMs);
          if (first.done) return;
          try {
            yield first.value;
            for (;;) {
              const next = await iterator.next();
              if (next.done) return;
              yield next.value;
            }
          } finally {
            // A consumer that stops early (break) must not leave the KV's cursor open.
            await iterator.return?.();
          }
        },
      };
    },
    atomic: () => new ReplayableAtomic(kv, budgetMs),
    close: () => kv.close(),
  };
}
