/**
 * Wakes everyone waiting for "something changed" (more bytes, done, failed).
 * Waiters re-check state after waking, so a missed wake-up costs nothing.
 */
export class ChangeSignal {
  private waiters: Array<() => void> = [];

  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
