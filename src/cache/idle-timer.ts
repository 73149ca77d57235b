/**
 * Calls `onIdle` when `touch()` was not called for `ms`. One timer re-armed
 * lazily, so touching on every chunk of a fast stream costs almost nothing.
 */
export class IdleTimer {
  private last = Date.now();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;

  constructor(private readonly ms: number, private readonly onIdle: () => void) {
    this.arm(ms);
  }

  touch(): void {
    this.last = Date.now();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.stopped = true;
  }

  private arm(delay: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      const quiet = Date.now() - this.last;
      if (quiet >= this.ms) {
        // Keep watching: a resumed download may stall again.
        this.last = Date.now();
        this.arm(this.ms);
        this.onIdle();
      } else this.arm(this.ms - quiet);
    }, delay);
  }
}
