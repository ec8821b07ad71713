//! Every message type survives encode → decode unchanged, for a fixed set of
//! random (seeded) values including empty strings, extremes and multi-byte
//! UTF-8.

mod common;

use common::*;
use framegate_protocol::*;

const CASES: usize = 500;

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

#[test]
fn client_messages_round_trip() {
    let mut r = Rng::new(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..CASES {
        let msg = client_message(&mut r);
        seen.insert(msg.kind());
        let wire = msg.encode();
        assert_eq!(&wire[4..8], FILE_IDENTIFIER.as_bytes());
        let back =
            ClientMessage::decode(&wire, &limits()).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(back, msg);
        // Encoding is deterministic.
        assert_eq!(back.encode(), wire);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn server_messages_round_trip() {
    let mut r = Rng::new(2);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..CASES {
        let msg = server_message(&mut r);
        seen.insert(msg.kind());
        let wire = msg.encode();
        assert_eq!(&wire[4..8], FILE_IDENTIFIER.as_bytes());
        let back =
            ServerMessage::decode(&wire, &limits()).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(back, msg);
        assert_eq!(back.encode(), wire);
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn every_enum_value_round_trips() {
    for &overload_policy in OverloadPolicy::ALL {
        let m = ClientMessage::Hello(Hello {
            overload_policy,
            ..Hello::new("k")
        });
        assert_eq!(ClientMessage::decode(&m.encode(), &limits()).unwrap(), m);
    }
    for &codec in Codec::ALL {
        let m = ClientMessage::Frame(Frame {
            seq: 1,
            capture_ts_us: 2,
            codec,
            width: 3,
            height: 4,
            deadline_us: 5,
            payload: Bytes::from_static(b"px"),
        });
        assert_eq!(ClientMessage::decode(&m.encode(), &limits()).unwrap(), m);
    }
    for &reason in DropReason::ALL {
        let m = ServerMessage::Dropped(Dropped {
            seqs: vec![4, 5],
            reason,
            message: String::new(),
            retry_after_ms: Some(250),
        });
        assert_eq!(ServerMessage::decode(&m.encode(), &limits()).unwrap(), m);
    }
    for &code in ErrorCode::ALL {
        for (seq, retry_after_ms) in [
            (None, None),
            (Some(0), Some(0)),
            (Some(u64::MAX), Some(u32::MAX)),
        ] {
            let m = ServerMessage::Error(ErrorMessage {
                code,
                message: code.to_string(),
                retryable: true,
                seq,
                retry_after_ms,
            });
            assert_eq!(ServerMessage::decode(&m.encode(), &limits()).unwrap(), m);
        }
    }
}

#[test]
fn defaults_round_trip() {
    let client = [
        ClientMessage::Hello(Hello::default()),
        ClientMessage::Ack(Ack::default()),
        ClientMessage::Bye(Bye::default()),
        ClientMessage::Frame(Frame {
            seq: 0,
            capture_ts_us: 0,
            codec: Codec::Jpeg,
            width: 0,
            height: 0,
            deadline_us: 0,
            payload: Bytes::new(),
        }),
    ];
    for m in client {
        assert_eq!(ClientMessage::decode(&m.encode(), &limits()).unwrap(), m);
    }
    let server = [
        ServerMessage::Welcome(Welcome::default()),
        ServerMessage::Detections(Detections::default()),
        ServerMessage::Credit(Credit::default()),
    ];
    for m in server {
        assert_eq!(ServerMessage::decode(&m.encode(), &limits()).unwrap(), m);
    }
}

#[test]
fn special_floats_survive_bit_for_bit() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
    ];
    let det = |v: f32| Detection {
        class_id: 1,
        label: "x".into(),
        score: v,
        x1: v,
        y1: -v,
        x2: v,
        y2: v,
    };
    let m = ServerMessage::Detections(Detections {
        detections: specials.map(det).to_vec(),
        ..Default::default()
    });
    let ServerMessage::Detections(back) = ServerMessage::decode(&m.encode(), &limits()).unwrap()
    else {
        panic!("not detections")
    };
    for (d, v) in back.detections.iter().zip(specials) {
        if v == 0.0 {
            // A table scalar equal to its default (0.0 == -0.0) is left out,
            // so -0.0 comes back as 0.0: numerically the same.
            assert_eq!(d.score, 0.0);
        } else {
            assert_eq!(d.score.to_bits(), v.to_bits());
        }
        assert_eq!(d.x1.to_bits(), v.to_bits());
        assert_eq!(d.y1.to_bits(), (-v).to_bits());
    }
}

#[test]
fn large_frame_round_trips_zero_copy() {
    let payload: Vec<u8> = (0..(4 << 20)).map(|i| (i * 7) as u8).collect();
    let m = ClientMessage::Frame(Frame {
        seq: 42,
        capture_ts_us: 1_700_000_000_000_000,
        codec: Codec::Rgb8,
        width: 1024,
        height: 1365,
        deadline_us: 1_700_000_000_100_000,
        payload: Bytes::from(payload),
    });
    let wire = m.encode();
    let back = ClientMessage::decode(&wire, &limits()).unwrap();
    assert_eq!(back, m);
    let ClientMessage::Frame(f) = back else {
        unreachable!()
    };
    let start = wire.as_ptr() as usize;
    let p = f.payload.as_ptr() as usize;
    assert!(
        p >= start && p + f.payload.len() <= start + wire.len(),
        "payload must borrow the input"
    );
}

#[test]
fn helpers_are_consistent() {
    let d = ServerMessage::Dropped(Dropped {
        seqs: vec![3, 4],
        reason: DropReason::NoCredit,
        message: String::new(),
        retry_after_ms: None,
    });
    assert_eq!(d.answered_seqs(), &[3, 4]);
    assert_eq!(
        ServerMessage::Error(ErrorMessage::frame(8, ErrorCode::InvalidImage, "")).answered_seqs(),
        &[8]
    );
    assert!(
        ServerMessage::Error(ErrorMessage::session(ErrorCode::Unauthorized, ""))
            .answered_seqs()
            .is_empty()
    );
    assert!(ErrorMessage::session(ErrorCode::Unavailable, "").retryable);
    assert!(!ErrorMessage::frame(1, ErrorCode::InvalidImage, "").retryable);
    assert_eq!(Hello::new("k").protocol_version, PROTOCOL_VERSION);
    let m: ClientMessage = Ack { seq: 1 }.into();
    assert_eq!(m.kind(), "ack");
}
