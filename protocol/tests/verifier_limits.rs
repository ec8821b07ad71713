//! Hand-made hostile buffers are refused by the verifier: absurd vector
//! lengths, offsets out of the buffer, nesting deeper than `max_depth`, and
//! DAG amplification (one table or string referenced many times) caught by
//! `max_tables` and `max_apparent_size`.

use flatbuffers::FlatBufferBuilder;
use framegate_protocol::generated::framegate::v_1 as fb;
use framegate_protocol::*;

fn finish(
    mut fbb: FlatBufferBuilder<'_>,
    t: fb::Message,
    m: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Bytes {
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type: t,
            message: Some(m),
        },
    );
    fb::finish_envelope_buffer(&mut fbb, env);
    Bytes::copy_from_slice(fbb.finished_data())
}

fn expect_invalid<T: std::fmt::Debug>(r: Result<T, DecodeError>, needle: &str) {
    match r {
        Err(DecodeError::Invalid(msg)) => {
            assert!(
                msg.to_lowercase().contains(&needle.to_lowercase()),
                "{msg:?} lacks {needle:?}"
            );
            assert!(!msg.contains('\n'), "reason should be one line: {msg:?}");
        }
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

/// Position of the u32 length prefix (element count `count`) of the vector
/// whose bytes are `content`.
fn vector_len_pos(buf: &[u8], count: usize, content: &[u8]) -> usize {
    let mut needle = (count as u32).to_le_bytes().to_vec();
    needle.extend_from_slice(content);
    buf.windows(needle.len())
        .position(|w| w == needle)
        .expect("vector not found")
}

#[test]
fn absurd_payload_length_is_refused() {
    let payload: Vec<u8> = (1..=16).collect();
    let wire = ClientMessage::Frame(Frame {
        seq: 1,
        capture_ts_us: 0,
        codec: Codec::Jpeg,
        width: 1,
        height: 1,
        deadline_us: 0,
        payload: Bytes::from(payload.clone()),
    })
    .encode();
    let pos = vector_len_pos(&wire, payload.len(), &payload);
    for absurd in [17u32, 0x0100_0000, 0x7FFF_FFFF, 0xFFFF_FFF0, u32::MAX] {
        let mut b = wire.to_vec();
        b[pos..pos + 4].copy_from_slice(&absurd.to_le_bytes());
        expect_invalid(
            ClientMessage::decode(&Bytes::from(b), &DecodeLimits::default()),
            "range",
        );
    }
}

#[test]
fn absurd_seqs_length_is_refused() {
    let seqs = vec![0x1111_1111_1111_1111u64, 0x2222_2222_2222_2222];
    let wire = ServerMessage::Dropped(Dropped {
        seqs: seqs.clone(),
        reason: DropReason::QueueFull,
        message: String::new(),
        retry_after_ms: None,
    })
    .encode();
    let content: Vec<u8> = seqs.iter().flat_map(|s| s.to_le_bytes()).collect();
    let pos = vector_len_pos(&wire, seqs.len(), &content);
    let mut b = wire.to_vec();
    // 0x2000_0000 u64s would be 4 GiB: an overflow-prone size computation.
    b[pos..pos + 4].copy_from_slice(&0x2000_0000u32.to_le_bytes());
    expect_invalid(
        ServerMessage::decode(&Bytes::from(b), &DecodeLimits::default()),
        "range",
    );
}

#[test]
fn offsets_out_of_the_buffer_are_refused() {
    let wire = ClientMessage::Ack(Ack { seq: 5 }).encode();
    let mut b = wire.to_vec();
    b[0..4].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes()); // root offset
    assert!(ClientMessage::decode(&Bytes::from(b), &DecodeLimits::default()).is_err());
}

#[test]
fn nesting_deeper_than_max_depth_is_refused() {
    // Envelope → Detections → Detection is the deepest path of the schema
    // (three tables): the schema has no recursive type, so max_depth can
    // only be exceeded by lowering it. Check it is enforced.
    let m = ServerMessage::Detections(Detections {
        detections: vec![Detection {
            label: "cat".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let wire = m.encode();
    let ok = DecodeLimits {
        max_depth: 3,
        ..DecodeLimits::default()
    };
    assert_eq!(ServerMessage::decode(&wire, &ok).unwrap(), m);
    let shallow = DecodeLimits {
        max_depth: 2,
        ..DecodeLimits::default()
    };
    expect_invalid(ServerMessage::decode(&wire, &shallow), "depth");
    assert!(DecodeLimits::default().max_depth >= 3);
}

/// A Detections whose vector holds `refs` offsets to a single Detection
/// table whose label is `label_len` bytes: a small buffer that expands to a
/// huge tree.
fn amplified(refs: usize, label_len: usize) -> Bytes {
    let mut fbb = FlatBufferBuilder::new();
    let label = fbb.create_string(&"x".repeat(label_len));
    let bbox = fb::BoundingBox::new(1.0, 2.0, 3.0, 4.0);
    let det = fb::Detection::create(
        &mut fbb,
        &fb::DetectionArgs {
            class_id: 1,
            label: Some(label),
            score: 0.5,
            bbox: Some(&bbox),
        },
    );
    let dets = fbb.create_vector(&vec![det; refs]);
    let d = fb::Detections::create(
        &mut fbb,
        &fb::DetectionsArgs {
            seq: 1,
            detections: Some(dets),
            ..Default::default()
        },
    );
    finish(fbb, fb::Message::Detections, d.as_union_value())
}

#[test]
fn shared_table_amplification_hits_max_tables() {
    let wire = amplified(200_000, 1);
    assert!(wire.len() < 1024 * 1024, "{}", wire.len());
    expect_invalid(
        ServerMessage::decode(&wire, &DecodeLimits::default()),
        "tables",
    );
    // Below the table limit the same shape is accepted.
    assert!(ServerMessage::decode(&amplified(1000, 1), &DecodeLimits::default()).is_ok());
}

#[test]
fn shared_string_amplification_hits_max_apparent_size() {
    // 200 references to one 1 MiB label: 1 MiB on the wire, 200 MiB
    // apparent, far under max_tables.
    let wire = amplified(200, 1 << 20);
    assert!(wire.len() < 2 * 1024 * 1024);
    expect_invalid(
        ServerMessage::decode(&wire, &DecodeLimits::default()),
        "apparent",
    );
}

#[test]
fn max_tables_is_enforced_as_configured() {
    let wire = amplified(10, 1);
    let limits = DecodeLimits {
        max_tables: 5,
        ..DecodeLimits::default()
    };
    expect_invalid(ServerMessage::decode(&wire, &limits), "tables");
}

#[test]
fn invalid_utf8_is_refused() {
    let wire = ClientMessage::Bye(Bye {
        reason: "hello-world".into(),
    })
    .encode();
    let pos = vector_len_pos(&wire, 11, b"hello-world") + 4;
    let mut b = wire.to_vec();
    b[pos] = 0xFF;
    expect_invalid(
        ClientMessage::decode(&Bytes::from(b), &DecodeLimits::default()),
        "utf",
    );
}

#[test]
fn inconsistent_union_is_refused() {
    // message_type says Frame but there is no message.
    let mut fbb = FlatBufferBuilder::new();
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type: fb::Message::Frame,
            message: None,
        },
    );
    fb::finish_envelope_buffer(&mut fbb, env);
    let wire = Bytes::copy_from_slice(fbb.finished_data());
    expect_invalid(
        ClientMessage::decode(&wire, &DecodeLimits::default()),
        "union",
    );
}

#[test]
fn unknown_enum_values_are_invalid_not_panics() {
    let limits = DecodeLimits::default();
    // Codec 99.
    let mut fbb = FlatBufferBuilder::new();
    let f = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            seq: 1,
            codec: fb::Codec(99),
            ..Default::default()
        },
    );
    expect_invalid(
        ClientMessage::decode(
            &finish(fbb, fb::Message::Frame, f.as_union_value()),
            &limits,
        ),
        "codec",
    );
    // Overload policy 7.
    let mut fbb = FlatBufferBuilder::new();
    let h = fb::Hello::create(
        &mut fbb,
        &fb::HelloArgs {
            overload_policy: fb::OverloadPolicy(7),
            ..Default::default()
        },
    );
    expect_invalid(
        ClientMessage::decode(
            &finish(fbb, fb::Message::Hello, h.as_union_value()),
            &limits,
        ),
        "overload",
    );
    // Drop reason 200, and unset (0).
    for raw in [200u8, 0] {
        let mut fbb = FlatBufferBuilder::new();
        let d = fb::Dropped::create(
            &mut fbb,
            &fb::DroppedArgs {
                reason: fb::DropReason(raw),
                ..Default::default()
            },
        );
        expect_invalid(
            ServerMessage::decode(
                &finish(fbb, fb::Message::Dropped, d.as_union_value()),
                &limits,
            ),
            "reason",
        );
    }
    // Error code 999, and unset (0).
    for raw in [999u16, 0] {
        let mut fbb = FlatBufferBuilder::new();
        let e = fb::Error::create(
            &mut fbb,
            &fb::ErrorArgs {
                code: fb::ErrorCode(raw),
                ..Default::default()
            },
        );
        expect_invalid(
            ServerMessage::decode(
                &finish(fbb, fb::Message::Error, e.as_union_value()),
                &limits,
            ),
            "code",
        );
    }
}
