import { UpstreamError } from "./upstream-error.ts";

/**
 * How an upstream has been answering, for the operator's page: the last answer it gave (a 404
 * counts: it answered), the last failure and why, and requests (with their bodies) in flight.
 */
export type UpstreamStatus = {
  lastSuccessAt: number | null;
  lastFailureAt: number | null;
  lastFailure: string | null;
  inFlight: number;
};

/** Kept by the upstream client as requests go out and come back. */
export class UpstreamHealth {
  private readonly state: UpstreamStatus = { lastSuccessAt: null, lastFailureAt: null, lastFailure: null, inFlight: 0 };

  status(): UpstreamStatus {
    return { ...this.state };
  }

  /** A request goes out; the function returned says it is over (body read or abandoned), once. */
  started(): () => void {
    this.state.inFlight++;
    let over = false;
    return () => {
      if (over) return;
      over = true;
      this.state.inFlight--;
    };
  }

  answered(): void {
    this.state.lastSuccessAt = Date.now();
  }

  /** A 404 is an answer, not a failure of the upstream; everything else is kept with its reason. */
  failed(err: unknown): void {
    if (err instanceof UpstreamError && err.failure === "not-found") return this.answered();
    this.state.lastFailureAt = Date.now();
    this.state.lastFailure = err instanceof Error ? err.message : String(err);
  }
}
