// What the pages show, also published as `window.__framegate` so the
// end-to-end test (console/e2e/) can assert on it. Never holds the key.

import type { Box } from './wire.js';
import type { DetectResponse, UsageReport } from './api.js';

export interface LiveState {
  running: boolean;
  /** `webtransport` or `websocket`: what the session runs on. */
  transport: string;
  /** Why `auto` fell back to WebSocket ('' when it did not). */
  transportFallback: string;
  sessionId: string;
  model: string;
  fps: number;
  sent: number;
  answered: number;
  dropped: number;
  skipped: number;
  /** Capture ticks not sent because the gateway asked to wait (`retry_after_ms`). */
  held: number;
  /** The waits the gateway asked for, summed (overlapping ones counted once). */
  heldMs: number;
  /** Answers to frames sent after a wait had passed: each clears the busy notice. */
  resumed: number;
  errors: number;
  /** Capture → answer, measured in the browser. */
  latencyMs: { p50: number; p95: number; p99: number; count: number };
  /** The gateway's own time per frame (Detections.timings.total_us), p50. */
  gatewayMsP50: number;
  frameWidth: number;
  frameHeight: number;
  lastBoxes: Box[];
  usageFrames: number;
  usagePixels: number;
  lastError: string;
}

export interface ConsoleState {
  live: LiveState;
  detect: DetectResponse | null;
  usage: UsageReport | null;
}

export const state: ConsoleState = {
  live: {
    running: false,
    transport: '',
    transportFallback: '',
    sessionId: '',
    model: '',
    fps: 0,
    sent: 0,
    answered: 0,
    dropped: 0,
    skipped: 0,
    held: 0,
    heldMs: 0,
    resumed: 0,
    errors: 0,
    latencyMs: { p50: 0, p95: 0, p99: 0, count: 0 },
    gatewayMsP50: 0,
    frameWidth: 0,
    frameHeight: 0,
    lastBoxes: [],
    usageFrames: 0,
    usagePixels: 0,
    lastError: '',
  },
  detect: null,
  usage: null,
};

(window as unknown as { __framegate: ConsoleState }).__framegate = state;
