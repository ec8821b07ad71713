"""framegate protocol v1 messages for Python clients, written from docs/protocol.md.

Code for the FlatBuffers tables comes from `flatc --python framegate.fbs`
(the schema in docs/protocol.md); put the output on PYTHONPATH.
"""
import struct
import time

import flatbuffers
from framegate.v1 import (Ack, Bye, Codec, Credit, Detections, Dropped, Envelope, Error,
                          Frame, Hello, Message, OverloadPolicy, Welcome)

FILE_ID = b"FGT1"
POLICIES = {"block": OverloadPolicy.OverloadPolicy.Block,
            "drop-oldest": OverloadPolicy.OverloadPolicy.DropOldest,
            "latest-only": OverloadPolicy.OverloadPolicy.LatestOnly}


def _finish(b, message_type, message):
    Envelope.Start(b)
    Envelope.AddMessageType(b, message_type)
    Envelope.AddMessage(b, message)
    b.Finish(Envelope.End(b), file_identifier=FILE_ID)
    return bytes(b.Output())


def hello(key, policy="block", resume_token="", last_received_seq=0, datagrams=False):
    b = flatbuffers.Builder(256)
    key_s, name_s, tok_s = b.CreateString(key), b.CreateString("fg-python-test/1"), b.CreateString(resume_token)
    Hello.Start(b)
    Hello.AddProtocolVersion(b, 1)
    Hello.AddCredential(b, key_s)
    Hello.AddOverloadPolicy(b, POLICIES[policy])
    Hello.AddResumeToken(b, tok_s)
    Hello.AddLastReceivedSeq(b, last_received_seq)
    Hello.AddDatagrams(b, datagrams)
    Hello.AddClientName(b, name_s)
    return _finish(b, Message.Message.Hello, Hello.End(b))


def jpeg_size(data):
    i = 2
    while i + 9 < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    raise ValueError("no SOF marker")


def frame(seq, jpeg):
    w, h = jpeg_size(jpeg)
    b = flatbuffers.Builder(len(jpeg) + 256)
    payload = b.CreateByteVector(jpeg)
    Frame.Start(b)
    Frame.AddSeq(b, seq)
    Frame.AddCaptureTsUs(b, time.time_ns() // 1000)
    Frame.AddCodec(b, Codec.Codec.Jpeg)
    Frame.AddWidth(b, w)
    Frame.AddHeight(b, h)
    Frame.AddPayload(b, payload)
    return _finish(b, Message.Message.Frame, Frame.End(b))


def ack(seq):
    b = flatbuffers.Builder(64)
    Ack.Start(b)
    Ack.AddSeq(b, seq)
    return _finish(b, Message.Message.Ack, Ack.End(b))


def bye():
    b = flatbuffers.Builder(64)
    r = b.CreateString("done")
    Bye.Start(b)
    Bye.AddReason(b, r)
    return _finish(b, Message.Message.Bye, Bye.End(b))


def decode(buf):
    """(kind, dict) of a gateway message."""
    if not Envelope.Envelope.EnvelopeBufferHasIdentifier(buf, 0):
        raise ValueError("not a framegate v1 message")
    env = Envelope.Envelope.GetRootAs(buf, 0)
    t, tab = env.MessageType(), env.Message()
    s = lambda v: (v or b"").decode()
    if t == Message.Message.Welcome:
        w = Welcome.Welcome(); w.Init(tab.Bytes, tab.Pos)
        return "welcome", {"session_id": s(w.SessionId()), "resume_token": s(w.ResumeToken()),
                           "credits": w.Credits(), "received_seq": w.ReceivedSeq()}
    if t == Message.Message.Detections:
        d = Detections.Detections(); d.Init(tab.Bytes, tab.Pos)
        boxes = []
        for i in range(d.DetectionsLength()):
            det = d.Detections(i)
            bb = det.Bbox()
            boxes.append({"class_id": det.ClassId(), "label": s(det.Label()), "score": det.Score(),
                          "box": [bb.X1(), bb.Y1(), bb.X2(), bb.Y2()]})
        u = d.Usage()
        return "detections", {"seq": d.Seq(), "detections": boxes, "width": d.Width(),
                              "height": d.Height(), "usage_frames": u.Frames() if u else 0}
    if t == Message.Message.Dropped:
        d = Dropped.Dropped(); d.Init(tab.Bytes, tab.Pos)
        return "dropped", {"seqs": [d.Seqs(i) for i in range(d.SeqsLength())], "reason": d.Reason()}
    if t == Message.Message.Error:
        e = Error.Error(); e.Init(tab.Bytes, tab.Pos)
        return "error", {"code": e.Code(), "message": s(e.Message()), "seq": e.Seq()}
    if t == Message.Message.Credit:
        c = Credit.Credit(); c.Init(tab.Bytes, tab.Pos)
        return "credit", {"credits": c.Credits()}
    return "unknown", {"type": t}


def length_prefixed(msg):
    """QUIC framing: u32 big-endian length, then the Envelope."""
    return struct.pack(">I", len(msg)) + msg


class Session:
    """The client side of the session rules: credits (block policy), one
    answer per frame in order, acks. `transport` has async send(bytes) and
    recv() -> bytes."""

    def __init__(self, transport):
        self.t = transport

    async def run(self, key, jpegs, out):
        await self.t.send(hello(key))
        kind, welcome = decode(await self.t.recv())
        if kind != "welcome":
            raise SystemExit(f"refused: {welcome}")
        credits, pending, answered = welcome["credits"], set(), []
        queue = list(enumerate(jpegs, start=1))
        while queue or pending:
            while queue and credits > 0:
                seq, data = queue.pop(0)
                await self.t.send(frame(seq, data))
                pending.add(seq)
                credits -= 1
            kind, msg = decode(await self.t.recv())
            if kind == "credit":
                credits += msg["credits"]
                continue
            if kind == "unknown":
                continue
            if kind == "error" and msg["seq"] is None:
                raise SystemExit(f"session ended: {msg}")
            seqs = msg["seqs"] if kind == "dropped" else [msg["seq"]]
            for seq in seqs:
                pending.discard(seq)
                credits += 1
                answered.append(seq)
            out.append((kind, msg))
            await self.t.send(ack(max(seqs)))
        await self.t.send(bye())
        return answered
