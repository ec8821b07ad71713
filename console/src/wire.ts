// The framegate wire protocol (docs/protocol.md) on top of the TypeScript
// that flatc generates from protocol/schema/framegate.fbs
// (console/src/generated/, refreshed by protocol/scripts/regen.sh).

import * as flatbuffers from 'flatbuffers';
import {
  Ack,
  Bye,
  Codec,
  Detections,
  Dropped,
  DropReason,
  Envelope,
  Error as ErrorMsg,
  ErrorCode,
  Frame,
  Hello,
  Message,
  OverloadPolicy,
  Welcome,
  Credit,
} from './generated/framegate/v1.js';

export const PROTOCOL_VERSION = 1;

function finish(b: flatbuffers.Builder, type: Message, msg: flatbuffers.Offset): Uint8Array {
  Envelope.startEnvelope(b);
  Envelope.addMessageType(b, type);
  Envelope.addMessage(b, msg);
  Envelope.finishEnvelopeBuffer(b, Envelope.endEnvelope(b));
  return b.asUint8Array();
}

export function encodeHello(credential: string, clientName: string): Uint8Array {
  const b = new flatbuffers.Builder(256);
  const cred = b.createString(credential);
  const name = b.createString(clientName);
  Hello.startHello(b);
  Hello.addProtocolVersion(b, PROTOCOL_VERSION);
  Hello.addCredential(b, cred);
  Hello.addOverloadPolicy(b, OverloadPolicy.LatestOnly);
  Hello.addClientName(b, name);
  return finish(b, Message.Hello, Hello.endHello(b));
}

export function encodeFrame(
  seq: number,
  captureTsUs: number,
  width: number,
  height: number,
  jpeg: Uint8Array,
): Uint8Array {
  const b = new flatbuffers.Builder(jpeg.length + 128);
  const payload = Frame.createPayloadVector(b, jpeg);
  Frame.startFrame(b);
  Frame.addSeq(b, BigInt(seq));
  Frame.addCaptureTsUs(b, BigInt(Math.round(captureTsUs)));
  Frame.addCodec(b, Codec.Jpeg);
  Frame.addWidth(b, width);
  Frame.addHeight(b, height);
  Frame.addPayload(b, payload);
  return finish(b, Message.Frame, Frame.endFrame(b));
}

export function encodeAck(seq: number): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, Message.Ack, Ack.createAck(b, BigInt(seq)));
}

export function encodeBye(reason: string): Uint8Array {
  const b = new flatbuffers.Builder(64);
  const r = b.createString(reason);
  return finish(b, Message.Bye, Bye.createBye(b, r));
}

export interface Box {
  classId: number;
  label: string;
  score: number;
  box: [number, number, number, number];
}

export type ServerMessage =
  | { kind: 'welcome'; sessionId: string; credits: number; model: string; serverVersion: string }
  | {
      kind: 'detections';
      seq: number;
      captureTsUs: number;
      width: number;
      height: number;
      model: string;
      boxes: Box[];
      totalUs: number;
      usageFrames: number;
      usagePixels: number;
    }
  | { kind: 'credit'; credits: number }
  | { kind: 'dropped'; seqs: number[]; reason: string; message: string; retryAfterMs: number | null }
  | {
      kind: 'error';
      code: string;
      message: string;
      retryable: boolean;
      seq: number | null;
      retryAfterMs: number | null;
    };

function dropReasonName(r: DropReason): string {
  return (DropReason[r] ?? `reason-${r}`).replace(/([a-z])([A-Z])/g, '$1-$2').toLowerCase();
}

function errorCodeName(c: ErrorCode): string {
  return (ErrorCode[c] ?? `code-${c}`).replace(/([a-z])([A-Z])/g, '$1-$2').toLowerCase();
}

/** Decodes one server → client Envelope; throws on anything else. */
export function decodeServer(data: ArrayBuffer): ServerMessage {
  const bb = new flatbuffers.ByteBuffer(new Uint8Array(data));
  if (!Envelope.bufferHasIdentifier(bb)) throw new Error('not a framegate message (file identifier)');
  const env = Envelope.getRootAsEnvelope(bb);
  switch (env.messageType()) {
    case Message.Welcome: {
      const w = env.message(new Welcome()) as Welcome;
      return {
        kind: 'welcome',
        sessionId: w.sessionId() ?? '',
        credits: w.credits(),
        model: w.model() ?? '',
        serverVersion: w.serverVersion() ?? '',
      };
    }
    case Message.Detections: {
      const d = env.message(new Detections()) as Detections;
      const boxes: Box[] = [];
      for (let i = 0; i < d.detectionsLength(); i++) {
        const det = d.detections(i)!;
        const bb2 = det.bbox();
        boxes.push({
          classId: det.classId(),
          label: det.label() ?? '',
          score: det.score(),
          box: bb2 ? [bb2.x1(), bb2.y1(), bb2.x2(), bb2.y2()] : [0, 0, 0, 0],
        });
      }
      const usage = d.usage();
      return {
        kind: 'detections',
        seq: Number(d.seq()),
        captureTsUs: Number(d.captureTsUs()),
        width: d.width(),
        height: d.height(),
        model: d.model() ?? '',
        boxes,
        totalUs: d.timings()?.totalUs() ?? 0,
        usageFrames: usage ? Number(usage.frames()) : 0,
        usagePixels: usage ? Number(usage.pixels()) : 0,
      };
    }
    case Message.Credit: {
      const c = env.message(new Credit()) as Credit;
      return { kind: 'credit', credits: c.credits() };
    }
    case Message.Dropped: {
      const d = env.message(new Dropped()) as Dropped;
      const seqs: number[] = [];
      for (let i = 0; i < d.seqsLength(); i++) seqs.push(Number(d.seqs(i)));
      return {
        kind: 'dropped',
        seqs,
        reason: dropReasonName(d.reason()),
        message: d.message() ?? '',
        retryAfterMs: d.retryAfterMs(),
      };
    }
    case Message.Error: {
      const e = env.message(new ErrorMsg()) as ErrorMsg;
      const seq = e.seq();
      return {
        kind: 'error',
        code: errorCodeName(e.code()),
        message: e.message() ?? '',
        retryable: e.retryable(),
        seq: seq === null ? null : Number(seq),
        retryAfterMs: e.retryAfterMs(),
      };
    }
    default:
      throw new Error(`unexpected message type ${env.messageType()} from the gateway`);
  }
}
