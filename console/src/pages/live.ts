// Live demo: camera → canvas → JPEG at the chosen fps and width → one
// session (FlatBuffers, docs/protocol.md) over WebTransport or WebSocket
// (../transport.ts; `auto` prefers WebTransport) → boxes
// drawn over the video, with fps, end-to-end latency percentiles (capture
// to answer, measured here in the browser), drops and the session's usage.
//
// Flow control follows the protocol's credits: a frame is captured only
// while the session has credit (otherwise the tick is counted as skipped);
// the session runs `latest-only`, so a frame still waiting at the gateway is
// replaced by a newer one (reported as Dropped, never billed). When the
// gateway refuses a frame with a wait (`retry_after_ms` on Dropped or Error:
// overloaded, rate-limited, queue full), no frame is captured until that
// wait has passed (the ticks are counted as held), instead of sending frames
// it would refuse too.

import { currentKey } from '../api.js';
import { boxTable, drawBoxes } from '../draw.js';
import { fmtInt, h, notice } from '../dom.js';
import { LatencyWindow, RateWindow } from '../stats.js';
import { state } from '../state.js';
import { openChannel, type Channel, type TransportChoice } from '../transport.js';
import { decodeServer, encodeAck, encodeBye, encodeFrame, encodeHello, type ServerMessage } from '../wire.js';

const CLIENT_NAME = 'framegate-console/0.1.0';

function toBlob(canvas: HTMLCanvasElement, quality: number): Promise<Blob> {
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('JPEG encoding failed'))), 'image/jpeg', quality),
  );
}

function select(id: string, label: string, options: [string, string][], selected: string): HTMLLabelElement {
  const s = h('select', { id });
  for (const [value, text] of options) {
    const o = h('option', { value }, text);
    if (value === selected) o.selected = true;
    s.append(o);
  }
  return h('label', {}, `${label} `, s);
}

export class LivePage {
  private root!: HTMLElement;
  private video!: HTMLVideoElement;
  private overlay!: HTMLCanvasElement;
  private encoder = document.createElement('canvas');
  private stream: MediaStream | null = null;
  private channel: Channel | null = null;
  /** Resolves when the current channel has closed. */
  private closedWaiters: (() => void)[] = [];
  private timer: number | undefined;
  private statsTimer: number | undefined;
  private credits = 0;
  private seq = 0;
  /** performance.now() before which no frame is sent (the gateway asked to wait). */
  private holdUntil = 0;
  /** The message shown is the busy notice of a wait (cleared once answers resume). */
  private busyNotice = false;
  private encoding = false;
  private stopping = false;
  private sentAt = new Map<number, number>();
  private latency = new LatencyWindow();
  private gatewayTime = new LatencyWindow();
  private rate = new RateWindow();
  private message!: HTMLElement;

  mount(root: HTMLElement): void {
    this.root = root;
    this.video = h('video', { id: 'video', autoplay: '', muted: '', playsinline: '' });
    this.video.muted = true;
    this.overlay = h('canvas', { id: 'overlay' });
    this.message = h('div', { id: 'live-message' });
    const start = h('button', { id: 'start', type: 'button' }, 'Start camera');
    const stop = h('button', { id: 'stop', type: 'button', disabled: '' }, 'Stop');
    start.onclick = () => void this.start(start, stop);
    stop.onclick = () => void this.stop(start, stop);
    const stats = h('dl', { class: 'stats', id: 'live-stats' });
    const statRow = (id: string, label: string) => stats.append(h('dt', {}, label), h('dd', { id }, '–'));
    statRow('stat-fps', 'answers/s');
    statRow('stat-sent', 'frames sent');
    statRow('stat-answered', 'detections');
    statRow('stat-dropped', 'dropped (gateway)');
    statRow('stat-skipped', 'skipped (no credit)');
    statRow('stat-held', 'held (gateway asked to wait)');
    statRow('stat-p50', 'latency p50');
    statRow('stat-p95', 'latency p95');
    statRow('stat-p99', 'latency p99');
    statRow('stat-gateway', 'gateway time p50');
    statRow('stat-usage', 'session usage');
    statRow('stat-session', 'session');
    statRow('stat-transport', 'transport');
    root.append(
      h('h1', {}, 'Live demo'),
      h(
        'p',
        { class: 'hint' },
        'Your camera, streamed frame by frame to the gateway over WebTransport (HTTP/3) where the browser and gateway have it, else a WebSocket; the boxes are the answers. ' +
          'Latency is measured in this browser from capture to answer.',
      ),
      h(
        'div',
        { class: 'controls' },
        select('fps', 'fps', [['1', '1'], ['2', '2'], ['4', '4'], ['8', '8'], ['15', '15']], '4'),
        select('width', 'frame width', [['320', '320 px'], ['480', '480 px'], ['640', '640 px']], '320'),
        select(
          'transport',
          'transport',
          [
            ['auto', 'auto'],
            ['webtransport', 'WebTransport'],
            ['websocket', 'WebSocket'],
          ],
          'auto',
        ),
        start,
        stop,
      ),
      this.message,
      h('div', { class: 'live' }, h('div', { class: 'stage' }, this.video, this.overlay), stats),
      h('div', { id: 'live-boxes' }),
    );
    this.statsTimer = window.setInterval(() => this.renderStats(), 500);
  }

  unmount(): void {
    window.clearInterval(this.statsTimer);
    this.teardown('left the page');
  }

  private setMessage(kind: 'info' | 'error' | 'warn', text: string): void {
    this.message.replaceChildren(notice(kind, text));
    this.busyNotice = false;
    if (kind === 'error') state.live.lastError = text;
  }

  private async start(start: HTMLButtonElement, stop: HTMLButtonElement): Promise<void> {
    const key = currentKey();
    if (!key) return;
    start.disabled = true;
    this.resetStats();
    const fps = Number((this.root.querySelector('#fps') as HTMLSelectElement).value);
    const width = Number((this.root.querySelector('#width') as HTMLSelectElement).value);
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    } catch (e) {
      this.setMessage('error', `Cannot open the camera: ${(e as Error).message}`);
      start.disabled = false;
      return;
    }
    this.video.srcObject = this.stream;
    await this.video.play().catch(() => undefined);
    this.stopping = false;
    const choice = (this.root.querySelector('#transport') as HTMLSelectElement).value as TransportChoice;
    this.setMessage('info', 'Connecting…');
    let channel: Channel;
    try {
      channel = await openChannel(choice, {
        message: (data) => {
          let msg: ServerMessage;
          try {
            msg = decodeServer(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer);
          } catch (e) {
            this.setMessage('error', `Bad message from the gateway: ${(e as Error).message}`);
            return;
          }
          this.onMessage(msg, fps, width);
        },
        closed: (reason) => {
          if (!this.stopping) this.setMessage('error', `The session ended: ${reason}`);
          this.teardown('closed');
          start.disabled = false;
          stop.disabled = true;
        },
      });
    } catch (e) {
      this.setMessage('error', `Cannot connect: ${(e as Error).message}`);
      this.teardown('connect failed');
      start.disabled = false;
      return;
    }
    this.channel = channel;
    state.live.transport = channel.kind;
    state.live.transportFallback = channel.fallback;
    channel.send(encodeHello(key, CLIENT_NAME));
    stop.disabled = false;
  }

  private onMessage(msg: ServerMessage, fps: number, width: number): void {
    const live = state.live;
    switch (msg.kind) {
      case 'welcome':
        this.credits = msg.credits;
        live.sessionId = msg.sessionId;
        live.model = msg.model;
        live.running = true;
        this.setMessage('info', `Streaming to ${msg.model} (${msg.serverVersion}), session ${msg.sessionId}`);
        this.timer = window.setInterval(() => void this.tick(width), 1000 / fps);
        break;
      case 'detections': {
        const now = performance.now();
        this.credits += 1;
        const sent = this.sentAt.get(msg.seq);
        this.sentAt.delete(msg.seq);
        if (sent !== undefined) this.latency.push(now - sent);
        this.gatewayTime.push(msg.totalUs / 1000);
        this.rate.mark(now);
        live.answered += 1;
        live.lastBoxes = msg.boxes;
        live.frameWidth = msg.width;
        live.frameHeight = msg.height;
        live.usageFrames = msg.usageFrames;
        live.usagePixels = msg.usagePixels;
        // The first answer to a frame captured after the wait had passed:
        // the gateway takes frames again, so its busy notice no longer
        // holds. (An answer to a frame sent before or during the wait leaves
        // it up: the gateway may still be refusing.)
        if (this.busyNotice && sent !== undefined && sent >= this.holdUntil) {
          this.busyNotice = false;
          this.message.replaceChildren();
          live.resumed += 1;
        }
        if (this.channel?.isOpen()) this.channel.send(encodeAck(msg.seq));
        this.drawOverlay();
        break;
      }
      case 'credit':
        this.credits += msg.credits;
        break;
      case 'dropped':
        this.credits += msg.seqs.length;
        live.dropped += msg.seqs.length;
        for (const s of msg.seqs) this.sentAt.delete(s);
        if (msg.retryAfterMs !== null) this.hold(msg.retryAfterMs, msg.reason);
        break;
      case 'error':
        if (msg.seq !== null) {
          this.credits += 1;
          live.errors += 1;
          this.sentAt.delete(msg.seq);
          this.setMessage('warn', `Frame ${msg.seq}: ${msg.code}: ${msg.message}`);
          if (msg.retryAfterMs !== null) this.hold(msg.retryAfterMs, msg.code);
        } else {
          // The session ends: a hint here is a wait before starting again.
          const wait = msg.retryAfterMs !== null ? ` (try again in ${Math.ceil(msg.retryAfterMs / 1000)} s)` : '';
          this.setMessage('error', `Session error ${msg.code}: ${msg.message}${wait}`);
        }
        break;
    }
  }

  /** The gateway asked for `ms` of quiet (reason `why`): no capture until then. */
  private hold(ms: number, why: string): void {
    if (ms <= 0) return;
    const now = performance.now();
    const until = now + ms;
    if (until <= this.holdUntil) return;
    state.live.heldMs += until - Math.max(now, this.holdUntil);
    this.holdUntil = until;
    this.setMessage('warn', `The gateway is busy (${why}): sending again in ${Math.ceil(ms)} ms`);
    this.busyNotice = true;
  }

  /** Whether the gateway's wait is still running; if so the tick counts as held. */
  private holding(): boolean {
    if (performance.now() >= this.holdUntil) return false;
    state.live.held += 1;
    return true;
  }

  /** One capture: draw the video into the encoder canvas, JPEG it, send it. */
  private async tick(width: number): Promise<void> {
    const channel = this.channel;
    if (!channel || !channel.isOpen() || this.stopping) return;
    if (this.holding()) return;
    if (this.credits <= 0 || this.encoding || this.video.videoWidth === 0) {
      state.live.skipped += 1;
      return;
    }
    this.encoding = true;
    try {
      const vw = this.video.videoWidth;
      const vh = this.video.videoHeight;
      const w = Math.min(width, vw) & ~1;
      const hgt = Math.max(2, Math.round((w * vh) / vw) & ~1);
      this.encoder.width = w;
      this.encoder.height = hgt;
      const captured = performance.now();
      this.encoder.getContext('2d')!.drawImage(this.video, 0, 0, w, hgt);
      const jpeg = new Uint8Array(await (await toBlob(this.encoder, 0.8)).arrayBuffer());
      if (!channel.isOpen() || this.stopping) return;
      // The gateway may have asked to wait while this frame was being encoded.
      if (this.holding()) return;
      this.seq += 1;
      this.sentAt.set(this.seq, captured);
      this.credits -= 1;
      channel.send(encodeFrame(this.seq, captured * 1000, w, hgt, jpeg));
      state.live.sent += 1;
    } catch (e) {
      this.setMessage('error', `Capture failed: ${(e as Error).message}`);
    } finally {
      this.encoding = false;
    }
  }

  private drawOverlay(): void {
    const live = state.live;
    const r = this.video.getBoundingClientRect();
    this.overlay.width = Math.max(1, Math.round(r.width));
    this.overlay.height = Math.max(1, Math.round(r.height));
    const ctx = this.overlay.getContext('2d')!;
    ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
    drawBoxes(ctx, live.lastBoxes, live.frameWidth, live.frameHeight);
    this.root.querySelector('#live-boxes')?.replaceChildren(boxTable(live.lastBoxes));
  }

  private renderStats(): void {
    const live = state.live;
    const now = performance.now();
    live.fps = this.rate.rate(now);
    live.latencyMs = {
      p50: this.latency.percentile(50),
      p95: this.latency.percentile(95),
      p99: this.latency.percentile(99),
      count: this.latency.count,
    };
    live.gatewayMsP50 = this.gatewayTime.percentile(50);
    const set = (id: string, text: string) => {
      const el = this.root.querySelector(`#${id}`);
      if (el) el.textContent = text;
    };
    const ms = (v: number) => (live.latencyMs.count ? `${v.toFixed(0)} ms` : '–');
    set('stat-fps', live.fps.toFixed(1));
    set('stat-sent', fmtInt(live.sent));
    set('stat-answered', fmtInt(live.answered));
    set('stat-dropped', fmtInt(live.dropped + live.errors));
    set('stat-skipped', fmtInt(live.skipped));
    set('stat-held', live.held ? `${fmtInt(live.held)} (${(live.heldMs / 1000).toFixed(1)} s)` : '0');
    set('stat-p50', ms(live.latencyMs.p50));
    set('stat-p95', ms(live.latencyMs.p95));
    set('stat-p99', ms(live.latencyMs.p99));
    set('stat-gateway', ms(live.gatewayMsP50));
    set('stat-usage', `${fmtInt(live.usageFrames)} frames, ${fmtInt(live.usagePixels)} px`);
    set('stat-session', live.sessionId || '–');
    set(
      'stat-transport',
      live.transport
        ? (live.transport === 'webtransport' ? 'WebTransport' : 'WebSocket') +
            (live.transportFallback ? ` (WebTransport: ${live.transportFallback})` : '')
        : '–',
    );
  }

  private resetStats(): void {
    Object.assign(state.live, {
      running: false,
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
      lastBoxes: [],
      usageFrames: 0,
      usagePixels: 0,
      lastError: '',
      gatewayMsP50: 0,
      transport: '',
      transportFallback: '',
    });
    this.latency.clear();
    this.gatewayTime.clear();
    this.rate.clear();
    this.sentAt.clear();
    this.seq = 0;
    this.holdUntil = 0;
    this.credits = 0;
  }

  /** Ends the session with Bye; the gateway answers what is in flight, then closes. */
  private async stop(start: HTMLButtonElement, stop: HTMLButtonElement): Promise<void> {
    stop.disabled = true;
    this.stopping = true;
    window.clearInterval(this.timer);
    const channel = this.channel;
    if (channel && channel.isOpen()) {
      channel.send(encodeBye('console: stop'));
      await new Promise<void>((resolve) => {
        const t = window.setTimeout(resolve, 5000);
        this.closedWaiters.push(() => {
          window.clearTimeout(t);
          resolve();
        });
      });
    }
    this.teardown('stopped');
    this.setMessage('info', `Stopped: ${state.live.answered} frames answered.`);
    start.disabled = false;
  }

  private teardown(_why: string): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
    this.stopping = true;
    this.channel?.close();
    this.channel = null;
    for (const w of this.closedWaiters.splice(0)) w();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    state.live.running = false;
  }
}
