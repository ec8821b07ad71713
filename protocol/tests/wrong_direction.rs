//! Each side's decoder accepts only the other side's messages; an empty
//! envelope, a foreign identifier and an unknown union member are reported
//! as such.

mod common;

use common::*;
use flatbuffers::FlatBufferBuilder;
use framegate_protocol::generated::framegate::v_1 as fb;
use framegate_protocol::*;

#[test]
fn welcome_is_not_a_client_message() {
    let wire = ServerMessage::Welcome(Welcome {
        credits: 8,
        ..Default::default()
    })
    .encode();
    let err = ClientMessage::decode(&wire, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::WrongDirection), "{err}");
    assert_eq!(err.error_code(), ErrorCode::ProtocolViolation);
}

#[test]
fn every_message_is_refused_by_the_other_side() {
    let limits = DecodeLimits::default();
    for (kind, wire) in one_of_each() {
        let (c, s) = (
            ClientMessage::decode(&wire, &limits),
            ServerMessage::decode(&wire, &limits),
        );
        if is_client_kind(kind) {
            assert_eq!(c.unwrap().kind(), kind);
            assert!(
                matches!(s, Err(DecodeError::WrongDirection)),
                "{kind}: {s:?}"
            );
        } else {
            assert_eq!(s.unwrap().kind(), kind);
            assert!(
                matches!(c, Err(DecodeError::WrongDirection)),
                "{kind}: {c:?}"
            );
        }
    }
}

#[test]
fn empty_envelope_is_empty() {
    let mut fbb = FlatBufferBuilder::new();
    let env = fb::Envelope::create(&mut fbb, &fb::EnvelopeArgs::default());
    fb::finish_envelope_buffer(&mut fbb, env);
    let wire = Bytes::copy_from_slice(fbb.finished_data());
    assert!(matches!(
        ClientMessage::decode(&wire, &DecodeLimits::default()),
        Err(DecodeError::Empty)
    ));
    assert!(matches!(
        ServerMessage::decode(&wire, &DecodeLimits::default()),
        Err(DecodeError::Empty)
    ));
}

#[test]
fn foreign_identifier_is_bad_identifier() {
    let wire = ClientMessage::Ack(Ack { seq: 1 }).encode();
    let mut b = wire.to_vec();
    b[4..8].copy_from_slice(b"FGT2");
    let err = ClientMessage::decode(&Bytes::from(b), &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::BadIdentifier), "{err}");
    // A buffer finished without any identifier.
    let mut fbb = FlatBufferBuilder::new();
    let a = fb::Ack::create(&mut fbb, &fb::AckArgs { seq: 1 });
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type: fb::Message::Ack,
            message: Some(a.as_union_value()),
        },
    );
    fbb.finish(env, None);
    let wire = Bytes::copy_from_slice(fbb.finished_data());
    assert!(ClientMessage::decode(&wire, &DecodeLimits::default()).is_err());
}

#[test]
fn unknown_union_member_is_reported() {
    // A newer peer's message type 42 carrying some table.
    let mut fbb = FlatBufferBuilder::new();
    let a = fb::Ack::create(&mut fbb, &fb::AckArgs { seq: 1 });
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type: fb::Message(42),
            message: Some(a.as_union_value()),
        },
    );
    fb::finish_envelope_buffer(&mut fbb, env);
    let wire = Bytes::copy_from_slice(fbb.finished_data());
    assert!(matches!(
        ClientMessage::decode(&wire, &DecodeLimits::default()),
        Err(DecodeError::UnknownMessage(42))
    ));
    assert!(matches!(
        ServerMessage::decode(&wire, &DecodeLimits::default()),
        Err(DecodeError::UnknownMessage(42))
    ));
}
