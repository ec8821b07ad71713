//! Length-prefixed framing: messages split across arbitrary reads come out
//! whole and in order, several messages in one read come out one by one, and
//! an oversized length prefix is refused as soon as the prefix arrives.

mod common;

use bytes::BytesMut;
use common::*;
use framegate_protocol::framing::{self, FrameDecoder, FramingError};
use framegate_protocol::*;

fn stream_of(msgs: &[Bytes]) -> BytesMut {
    let mut out = BytesMut::new();
    for m in msgs {
        framing::encode_into(m, &mut out);
    }
    out
}

fn messages() -> Vec<Bytes> {
    let mut v: Vec<Bytes> = one_of_each().into_iter().map(|(_, b)| b).collect();
    v.push(Bytes::new());
    v.push(Bytes::from(vec![7u8; 70_000]));
    v
}

#[test]
fn byte_by_byte_reads() {
    let msgs = messages();
    let stream = stream_of(&msgs);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_MESSAGE_BYTES);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &b in stream.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, msgs);
    assert!(buf.is_empty());
}

#[test]
fn random_read_sizes() {
    let msgs = messages();
    let stream = stream_of(&msgs).freeze();
    let mut r = Rng::new(21);
    for _ in 0..50 {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_MESSAGE_BYTES);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + r.below(9000)).min(stream.len() - at);
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
    }
}

#[test]
fn all_at_once_and_decoded_messages_are_valid() {
    let msgs = messages();
    let mut buf = stream_of(&msgs);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_MESSAGE_BYTES);
    let mut n = 0;
    while let Some(m) = dec.decode(&mut buf).unwrap() {
        if let Ok(c) = ClientMessage::decode(&m, &DecodeLimits::default()) {
            assert_eq!(c.encode(), m);
        }
        n += 1;
    }
    assert_eq!(n, msgs.len());
    // Nothing to read: None, repeatedly.
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
}

#[test]
fn partial_prefix_consumes_nothing() {
    let mut dec = FrameDecoder::new(100);
    let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 3);
    buf.extend_from_slice(&[5, 1, 2]);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 6);
    buf.extend_from_slice(&[3, 4, 5, 9]);
    assert_eq!(
        dec.decode(&mut buf).unwrap(),
        Some(Bytes::from_static(&[1, 2, 3, 4, 5]))
    );
    assert_eq!(&buf[..], &[9]);
}

#[test]
fn oversized_prefix_is_refused_before_the_body() {
    let mut dec = FrameDecoder::new(1024);
    // Only the prefix has arrived; the body never needs to.
    let mut buf = BytesMut::from(&1025u32.to_be_bytes()[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(FramingError::TooLarge {
            len: 1025,
            max: 1024
        })
    );
    // An absurd prefix neither allocates nor waits.
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    let cap = buf.capacity();
    assert!(matches!(
        dec.decode(&mut buf),
        Err(FramingError::TooLarge { .. })
    ));
    assert_eq!(buf.capacity(), cap);
    // Exactly at the limit is fine.
    let mut buf = stream_of(&[Bytes::from(vec![1u8; 1024])]);
    assert_eq!(dec.decode(&mut buf).unwrap().unwrap().len(), 1024);
}

#[test]
fn decoded_frames_share_memory_with_the_read_buffer() {
    let frame = ClientMessage::Frame(Frame {
        seq: 1,
        capture_ts_us: 0,
        codec: Codec::Png,
        width: 1,
        height: 1,
        deadline_us: 0,
        payload: Bytes::from(vec![3u8; 4096]),
    });
    let mut buf = stream_of(&[frame.encode()]);
    let base = buf.as_ptr() as usize;
    let msg = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(msg.as_ptr() as usize, base + 4);
    let ClientMessage::Frame(f) = ClientMessage::decode(&msg, &DecodeLimits::default()).unwrap()
    else {
        panic!()
    };
    let p = f.payload.as_ptr() as usize;
    assert!(p > base && p < base + 4 + msg.len());
}
