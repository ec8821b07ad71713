//! A message above `DecodeLimits::max_message_bytes` is refused with
//! `TooLarge` before it is looked at (identifier and verifier never run).

use framegate_protocol::*;

fn frame(payload_len: usize) -> ClientMessage {
    ClientMessage::Frame(Frame {
        seq: 1,
        capture_ts_us: 0,
        codec: Codec::Jpeg,
        width: 1,
        height: 1,
        deadline_us: 0,
        payload: Bytes::from(vec![0x55; payload_len]),
    })
}

#[test]
fn oversized_garbage_is_too_large_not_invalid() {
    let limits = DecodeLimits {
        max_message_bytes: 1024,
        ..DecodeLimits::default()
    };
    // Garbage without an identifier: had the verifier run it would be
    // BadIdentifier / Invalid.
    let buf = Bytes::from(vec![0xFF; 1025]);
    match ClientMessage::decode(&buf, &limits) {
        Err(DecodeError::TooLarge {
            size: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match ServerMessage::decode(&buf, &limits) {
        Err(DecodeError::TooLarge {
            size: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn limit_is_inclusive() {
    let wire = frame(1000).encode();
    let exact = DecodeLimits {
        max_message_bytes: wire.len(),
        ..DecodeLimits::default()
    };
    assert!(ClientMessage::decode(&wire, &exact).is_ok());
    let below = DecodeLimits {
        max_message_bytes: wire.len() - 1,
        ..DecodeLimits::default()
    };
    let err = ClientMessage::decode(&wire, &below).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    assert_eq!(err.error_code(), ErrorCode::PayloadTooLarge);
}

#[test]
fn default_limit_is_16_mib() {
    assert_eq!(DecodeLimits::default().max_message_bytes, 16 * 1024 * 1024);
    let big = frame(16 * 1024 * 1024).encode();
    assert!(big.len() > 16 * 1024 * 1024);
    assert!(matches!(
        ClientMessage::decode(&big, &DecodeLimits::default()),
        Err(DecodeError::TooLarge { .. })
    ));
    // Just under the limit decodes with the default limits.
    let fits = frame(16 * 1024 * 1024 - 256).encode();
    assert!(fits.len() <= 16 * 1024 * 1024);
    assert!(ClientMessage::decode(&fits, &DecodeLimits::default()).is_ok());
}

#[test]
fn raised_limit_scales_apparent_size() {
    let limits = DecodeLimits::with_max_message_bytes(64 * 1024 * 1024);
    assert!(limits.max_apparent_size >= 2 * limits.max_message_bytes);
    let big = frame(40 * 1024 * 1024).encode();
    assert!(ClientMessage::decode(&big, &limits).is_ok());
}
