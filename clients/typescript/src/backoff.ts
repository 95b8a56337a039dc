/**
 * Reconnect delays: exponential with full jitter (a random delay between
 * zero and the capped exponential), so that a thousand clients cut off at
 * once do not come back at once.
 */

export interface BackoffOptions {
  /** The cap of the first delay, in ms (default 500). */
  initialMs?: number;
  /** The largest delay, in ms (default 30,000). */
  maxMs?: number;
  /** A source of randomness in [0, 1) (default `Math.random`). */
  random?: () => number;
}

export class Backoff {
  private failures = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 500;
    this.maxMs = options.maxMs ?? 30_000;
    this.random = options.random ?? Math.random;
  }

  /** The delay before the next attempt, counting this failure. */
  next(): number {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.failures, 30));
    this.failures += 1;
    return Math.floor(this.random() * cap);
  }

  /** A connection worked: start again from the smallest delay. */
  reset(): void {
    this.failures = 0;
  }
}
