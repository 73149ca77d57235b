/**
 * Time limits on work that may hang (a stalled peer, a worker that never answers). The timer
 * never outlives the work: an idle timer left per request would keep a process alive and add
 * up under load.
 */

/** Runs `work`; calls `expire` once if it has not settled within `ms` (to abort it, say). */
export async function within<T>(ms: number, expire: () => void, work: () => Promise<T>): Promise<T> {
  const timer = setTimeout(expire, ms);
  try {
    return await work();
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `work` with a signal that aborts after `ms`; when it fails after that, the failure is
 * reported as `timedOut(cause)`, which should say what did not answer in time.
 */
export async function withAbortDeadline<T>(
  ms: number,
  work: (signal: AbortSignal) => Promise<T>,
  timedOut: (cause: unknown) => Error,
): Promise<T> {
  const deadline = new AbortController();
  try {
    return await within(ms, () => deadline.abort(), () => work(deadline.signal));
  } catch (err) {
    if (deadline.signal.aborted) throw timedOut(err);
    throw err;
  }
}

/**
 * `promise`'s outcome, or a rejection with `timedOut()` when it has not settled within `ms`.
 * For work that cannot be aborted: it goes on, its late outcome is ignored.
 */
export function rejectAfter<T>(promise: Promise<T>, ms: number, timedOut: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timedOut()), ms);
    promise.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (e) => (clearTimeout(timer), reject(e)),
    );
  });
}

/** Resolves when `promise` settles or `ms` have passed, whichever is first; never rejects. */
export async function waitAtMost(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([promise.then(() => {}, () => {}), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise<void>((resolve) => setTimeout(resolve, ms));
}
