// Latency percentiles and a sliding-window rate for the live demo.

/** Keeps the most recent `cap` samples; percentiles by nearest rank. */
export class LatencyWindow {
  private samples: number[] = [];
  constructor(private readonly cap = 10_000) {}

  push(ms: number): void {
    this.samples.push(ms);
    if (this.samples.length > this.cap) this.samples.splice(0, this.samples.length - this.cap);
  }

  get count(): number {
    return this.samples.length;
  }

  percentile(p: number): number {
    if (this.samples.length === 0) return 0;
    const sorted = [...this.samples].sort((a, b) => a - b);
    const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
    return sorted[rank];
  }

  clear(): void {
    this.samples = [];
  }
}

/** Events per second over the last `windowMs`. */
export class RateWindow {
  private times: number[] = [];
  constructor(private readonly windowMs = 5_000) {}

  mark(now: number): void {
    this.times.push(now);
    this.trim(now);
  }

  rate(now: number): number {
    this.trim(now);
    if (this.times.length < 2) return this.times.length === 1 ? 1000 / this.windowMs : 0;
    const span = Math.max(now - this.times[0], 1);
    return ((this.times.length - 1) * 1000) / span;
  }

  private trim(now: number): void {
    while (this.times.length && now - this.times[0] > this.windowMs) this.times.shift();
  }

  clear(): void {
    this.times = [];
  }
}
