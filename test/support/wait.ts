// Waiting in tests: on a condition or a promise, always bounded, so a broken
// behaviour fails the test with a reason instead of hanging it.

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it holds; throws after `ms`. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 10_000, everyMs = 10): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${ms} ms`);
    await sleep(everyMs);
  }
}

/** A wait on a promise that fails the test instead of hanging it. */
export function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}
