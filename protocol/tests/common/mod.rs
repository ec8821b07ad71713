//! Helpers shared by the integration tests: a small deterministic PRNG and
//! generators of random messages of every type.
#![allow(dead_code)]

use framegate_protocol::*;

/// SplitMix64: deterministic, dependency-free, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    pub fn bool(&mut self) -> bool {
        self.u64() & 1 == 1
    }

    pub fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32 * 4096.0 - 64.0
    }

    /// Mostly small values, sometimes the extremes.
    pub fn edgy_u64(&mut self) -> u64 {
        match self.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => self.u64(),
            _ => self.u64() % 10_000,
        }
    }

    pub fn edgy_u32(&mut self) -> u32 {
        match self.below(5) {
            0 => 0,
            1 => u32::MAX,
            2 => self.u32(),
            _ => self.u32() % 10_000,
        }
    }

    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let n = self.below(max_len + 1);
        (0..n).map(|_| self.u64() as u8).collect()
    }

    /// Empty, ASCII, or multi-byte UTF-8.
    pub fn string(&mut self) -> String {
        const PARTS: &[&str] = &[
            "",
            "a",
            "person",
            "fg_live_Zx9",
            "é",
            "車",
            "🚗",
            " ",
            "-",
            "\u{0}",
        ];
        let n = self.below(6);
        (0..n).map(|_| PARTS[self.below(PARTS.len())]).collect()
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

pub fn hello(r: &mut Rng) -> Hello {
    Hello {
        protocol_version: r.u32() as u16,
        credential: r.string(),
        model: r.string(),
        overload_policy: r.pick(OverloadPolicy::ALL),
        resume_token: r.string(),
        last_received_seq: r.edgy_u64(),
        datagrams: r.bool(),
        client_name: r.string(),
    }
}

pub fn frame(r: &mut Rng) -> Frame {
    Frame {
        seq: r.edgy_u64(),
        capture_ts_us: r.edgy_u64(),
        codec: r.pick(Codec::ALL),
        width: r.edgy_u32(),
        height: r.edgy_u32(),
        deadline_us: r.edgy_u64(),
        payload: Bytes::from(r.bytes(300)),
    }
}

pub fn client_message(r: &mut Rng) -> ClientMessage {
    match r.below(4) {
        0 => ClientMessage::Hello(hello(r)),
        1 => ClientMessage::Frame(frame(r)),
        2 => ClientMessage::Ack(Ack { seq: r.edgy_u64() }),
        _ => ClientMessage::Bye(Bye { reason: r.string() }),
    }
}

pub fn welcome(r: &mut Rng) -> Welcome {
    Welcome {
        session_id: r.string(),
        resume_token: r.string(),
        credits: r.edgy_u32(),
        limits: SessionLimits {
            max_message_bytes: r.edgy_u32(),
            max_frame_pixels: r.edgy_u64(),
            max_in_flight: r.edgy_u32(),
        },
        model: r.string(),
        server_version: r.string(),
        received_seq: r.edgy_u64(),
    }
}

pub fn detections(r: &mut Rng) -> Detections {
    let n = r.below(8);
    Detections {
        seq: r.edgy_u64(),
        capture_ts_us: r.edgy_u64(),
        width: r.edgy_u32(),
        height: r.edgy_u32(),
        model: r.string(),
        detections: (0..n)
            .map(|_| Detection {
                class_id: r.edgy_u32(),
                label: r.string(),
                score: r.f32(),
                x1: r.f32(),
                y1: r.f32(),
                x2: r.f32(),
                y2: r.f32(),
            })
            .collect(),
        timings: StageTimings {
            queue_us: r.edgy_u32(),
            decode_us: r.edgy_u32(),
            preprocess_us: r.edgy_u32(),
            infer_us: r.edgy_u32(),
            postprocess_us: r.edgy_u32(),
            total_us: r.edgy_u32(),
        },
        usage: Usage {
            frames: r.edgy_u64(),
            pixels: r.edgy_u64(),
        },
    }
}

pub fn dropped(r: &mut Rng) -> Dropped {
    let n = r.below(6);
    Dropped {
        seqs: (0..n).map(|_| r.edgy_u64()).collect(),
        reason: r.pick(DropReason::ALL),
        message: r.string(),
        retry_after_ms: if r.bool() {
            Some(r.edgy_u64() as u32)
        } else {
            None
        },
    }
}

pub fn error(r: &mut Rng) -> ErrorMessage {
    ErrorMessage {
        code: r.pick(ErrorCode::ALL),
        message: r.string(),
        retryable: r.bool(),
        seq: if r.bool() { Some(r.edgy_u64()) } else { None },
        retry_after_ms: if r.bool() {
            Some(r.edgy_u64() as u32)
        } else {
            None
        },
    }
}

pub fn server_message(r: &mut Rng) -> ServerMessage {
    match r.below(5) {
        0 => ServerMessage::Welcome(welcome(r)),
        1 => ServerMessage::Detections(detections(r)),
        2 => ServerMessage::Credit(Credit {
            credits: r.edgy_u32(),
        }),
        3 => ServerMessage::Dropped(dropped(r)),
        _ => ServerMessage::Error(error(r)),
    }
}

/// One valid encoded message of every type, client ones first.
pub fn one_of_each() -> Vec<(&'static str, Bytes)> {
    let mut r = Rng::new(7);
    let mut out: Vec<(&'static str, Bytes)> = Vec::new();
    let mut f = frame(&mut r);
    f.payload = Bytes::from(vec![0xAB; 64]);
    for m in [
        ClientMessage::Hello(hello(&mut r)),
        ClientMessage::Frame(f),
        ClientMessage::Ack(Ack { seq: 3 }),
        ClientMessage::Bye(Bye {
            reason: "done".into(),
        }),
    ] {
        out.push((m.kind(), m.encode()));
    }
    let mut d = detections(&mut r);
    d.detections.push(Detection {
        label: "person".into(),
        ..Default::default()
    });
    for m in [
        ServerMessage::Welcome(welcome(&mut r)),
        ServerMessage::Detections(d),
        ServerMessage::Credit(Credit { credits: 2 }),
        ServerMessage::Dropped(Dropped {
            seqs: vec![1, 2],
            reason: DropReason::Superseded,
            message: "x".into(),
            retry_after_ms: None,
        }),
        ServerMessage::Error(ErrorMessage::frame(9, ErrorCode::InvalidImage, "bad jpeg")),
    ] {
        out.push((m.kind(), m.encode()));
    }
    out
}

pub fn is_client_kind(kind: &str) -> bool {
    matches!(kind, "hello" | "frame" | "ack" | "bye")
}
