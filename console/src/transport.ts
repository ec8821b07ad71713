// The live demo's two ways to the gateway, one interface: a WebSocket at
// /v1/stream (one FlatBuffers message per binary message), or WebTransport
// (HTTP/3 over QUIC) at the URL `GET /v1/webtransport` names — one
// bidirectional stream carrying the same messages, each after a u32
// big-endian length, exactly like the native QUIC transport
// (docs/protocol.md). `auto` takes WebTransport when the browser has it and
// the gateway offers it, else WebSocket.

export type TransportChoice = 'auto' | 'webtransport' | 'websocket';
export type TransportKind = 'webtransport' | 'websocket';

export interface ChannelEvents {
  message(data: Uint8Array): void;
  /** The session's channel ended (`error`: it failed rather than closed). */
  closed(reason: string, error: boolean): void;
}

export interface Channel {
  readonly kind: TransportKind;
  /** Why `auto` did not take WebTransport ('' when it did, or was not asked). */
  readonly fallback: string;
  isOpen(): boolean;
  send(msg: Uint8Array): void;
  close(): void;
}

/** Largest message accepted from the gateway (it sends far smaller ones). */
const MAX_MESSAGE_BYTES = 16 << 20;

interface WebTransportInfo {
  url: string;
  certificate_sha256: string | null;
}

function wsUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/v1/stream`;
}

function hexBytes(hex: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Whether this browser has WebTransport at all. */
export function browserHasWebTransport(): boolean {
  return typeof (window as { WebTransport?: unknown }).WebTransport === 'function';
}

async function webTransportInfo(): Promise<WebTransportInfo> {
  const r = await fetch('/v1/webtransport', { cache: 'no-store' });
  if (r.status === 404) throw new Error('the gateway does not offer WebTransport');
  if (!r.ok) throw new Error(`GET /v1/webtransport answered ${r.status}`);
  return (await r.json()) as WebTransportInfo;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = window.setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms);
    p.then(
      (v) => {
        window.clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        window.clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

class WsChannel implements Channel {
  readonly kind = 'websocket';
  private closing = false;
  constructor(
    private ws: WebSocket,
    private events: ChannelEvents,
    readonly fallback: string,
  ) {
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (ev) => events.message(new Uint8Array(ev.data as ArrayBuffer));
    ws.onclose = (ev) => {
      if (!this.closing) this.events.closed(`${ev.reason || 'connection closed'} (code ${ev.code})`, ev.code !== 1000);
    };
  }
  static open(events: ChannelEvents, fallback: string): Promise<WsChannel> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl());
      ws.onopen = () => resolve(new WsChannel(ws, events, fallback));
      ws.onerror = () => reject(new Error('WebSocket error (is the gateway reachable?)'));
      ws.onclose = (ev) => reject(new Error(`WebSocket closed before it opened (code ${ev.code})`));
    });
  }
  isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }
  send(msg: Uint8Array): void {
    this.ws.send(msg);
  }
  close(): void {
    this.closing = true;
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'done');
  }
}

class WtChannel implements Channel {
  readonly kind = 'webtransport';
  readonly fallback = '';
  private open = true;
  private closing = false;
  private writer: WritableStreamDefaultWriter<Uint8Array>;

  private constructor(
    private wt: WebTransport,
    stream: WebTransportBidirectionalStream,
    private events: ChannelEvents,
  ) {
    this.writer = stream.writable.getWriter();
    void this.readLoop(stream.readable.getReader());
  }

  static async open(events: ChannelEvents): Promise<WtChannel> {
    const info = await webTransportInfo();
    const options: WebTransportOptions = {};
    if (info.certificate_sha256) {
      options.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexBytes(info.certificate_sha256) }];
    }
    const wt = new WebTransport(info.url, options);
    try {
      await withTimeout(wt.ready, 5000, `WebTransport ${info.url}`);
      const stream = await withTimeout(wt.createBidirectionalStream(), 5000, 'WebTransport stream');
      return new WtChannel(wt, stream, events);
    } catch (e) {
      wt.close();
      throw e;
    }
  }

  private async readLoop(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    let buf = new Uint8Array(0);
    let why = 'the gateway finished the stream';
    let failed = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf);
        joined.set(value, buf.length);
        buf = joined;
        while (buf.length >= 4) {
          const len = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
          if (len > MAX_MESSAGE_BYTES) throw new Error(`a ${len}-byte message from the gateway`);
          if (buf.length < 4 + len) break;
          this.events.message(buf.slice(4, 4 + len));
          buf = buf.subarray(4 + len);
        }
      }
    } catch (e) {
      why = `WebTransport: ${(e as Error).message}`;
      failed = true;
    }
    this.open = false;
    if (!this.closing) this.events.closed(why, failed);
    this.wt.close();
  }

  isOpen(): boolean {
    return this.open;
  }

  send(msg: Uint8Array): void {
    const framed = new Uint8Array(4 + msg.length);
    new DataView(framed.buffer).setUint32(0, msg.length);
    framed.set(msg, 4);
    // Writes queue in order; a failed one means the stream is gone, which
    // the read loop reports.
    this.writer.write(framed).catch(() => undefined);
  }

  close(): void {
    this.closing = true;
    this.open = false;
    this.writer.close().catch(() => undefined);
    this.wt.close();
  }
}

/**
 * Opens the session's channel. `auto`: WebTransport when the browser has it
 * and the gateway answers; any failure there falls back to WebSocket (the
 * channel's `fallback` says why). An explicit choice never falls back.
 */
export async function openChannel(choice: TransportChoice, events: ChannelEvents): Promise<Channel> {
  if (choice === 'websocket') return WsChannel.open(events, '');
  if (!browserHasWebTransport()) {
    if (choice === 'webtransport') throw new Error('this browser has no WebTransport');
    return WsChannel.open(events, 'this browser has no WebTransport');
  }
  try {
    return await WtChannel.open(events);
  } catch (e) {
    if (choice === 'webtransport') throw e;
    return WsChannel.open(events, (e as Error).message);
  }
}
