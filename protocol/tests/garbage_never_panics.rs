//! Decoding arbitrary, truncated or mutated bytes never panics: it returns
//! an error, or (for a mutation that happens to stay valid) a message that
//! re-encodes and decodes to itself.

mod common;

use common::*;
use framegate_protocol::*;

fn decode_both(
    buf: &Bytes,
) -> (
    Result<ClientMessage, DecodeError>,
    Result<ServerMessage, DecodeError>,
) {
    let limits = DecodeLimits::default();
    (
        ClientMessage::decode(buf, &limits),
        ServerMessage::decode(buf, &limits),
    )
}

#[test]
fn random_bytes_are_rejected() {
    let mut r = Rng::new(11);
    for _ in 0..20_000 {
        let buf = Bytes::from(r.bytes(256));
        let (c, s) = decode_both(&buf);
        assert!(
            c.is_err() && s.is_err(),
            "{} random bytes decoded",
            buf.len()
        );
    }
}

#[test]
fn random_bytes_with_the_identifier_are_rejected_or_valid() {
    // With a correct identifier the bytes reach the verifier.
    let mut r = Rng::new(12);
    let mut rejected = 0;
    for _ in 0..20_000 {
        let mut b = r.bytes(256);
        if b.len() < 8 {
            b.resize(8, 0);
        }
        b[4..8].copy_from_slice(b"FGT1");
        // Keep the root offset small sometimes so the verifier gets further.
        if r.bool() {
            let off = (r.below(b.len() / 4 + 1) * 4) as u32;
            b[0..4].copy_from_slice(&off.to_le_bytes());
        }
        let buf = Bytes::from(b);
        let (c, s) = decode_both(&buf);
        if let Ok(m) = &c {
            assert_eq!(
                ClientMessage::decode(&m.encode(), &DecodeLimits::default()).unwrap(),
                *m
            );
        }
        if let Ok(m) = &s {
            assert_eq!(
                ServerMessage::decode(&m.encode(), &DecodeLimits::default()).unwrap(),
                *m
            );
        }
        if c.is_err() && s.is_err() {
            rejected += 1;
        }
    }
    assert!(rejected > 19_000, "only {rejected} rejected");
}

#[test]
fn every_truncation_is_rejected_or_lost_only_padding() {
    // Cutting the end of a buffer either breaks it or removes nothing but
    // alignment padding (the builder pads after the first-written string), in
    // which case the decoded message must be exactly the original.
    let limits = DecodeLimits::default();
    for (kind, wire) in one_of_each() {
        let mut cut_rejected = 0;
        for len in 0..wire.len() {
            let cut = wire.slice(..len);
            let (c, s) = decode_both(&cut);
            if is_client_kind(kind) {
                assert!(
                    s.is_err(),
                    "{kind} cut to {len} decoded as a server message"
                );
                match c {
                    Ok(m) => assert_eq!(
                        m,
                        ClientMessage::decode(&wire, &limits).unwrap(),
                        "{kind} cut to {len}"
                    ),
                    Err(_) => cut_rejected += 1,
                }
            } else {
                assert!(
                    c.is_err(),
                    "{kind} cut to {len} decoded as a client message"
                );
                match s {
                    Ok(m) => assert_eq!(
                        m,
                        ServerMessage::decode(&wire, &limits).unwrap(),
                        "{kind} cut to {len}"
                    ),
                    Err(_) => cut_rejected += 1,
                }
            }
        }
        // At most 3 bytes of padding can go.
        assert!(
            cut_rejected + 3 >= wire.len(),
            "{kind}: only {cut_rejected} of {} cuts rejected",
            wire.len()
        );
    }
}

#[test]
fn empty_and_tiny_buffers_are_rejected() {
    for b in [&b""[..], b"\0", b"FGT1", b"\0\0\0\0FGT", b"\0\0\0\0FGT1"] {
        let (c, s) = decode_both(&Bytes::copy_from_slice(b));
        assert!(c.is_err() && s.is_err(), "{b:?}");
    }
}

#[test]
fn mutations_of_valid_messages_never_panic() {
    let mut r = Rng::new(13);
    let seeds = one_of_each();
    let mut decoded = 0usize;
    for i in 0..40_000 {
        let (_, wire) = &seeds[i % seeds.len()];
        let mut b = wire.to_vec();
        for _ in 0..=r.below(4) {
            match r.below(4) {
                0 => {
                    let at = r.below(b.len());
                    b[at] = r.u64() as u8;
                }
                1 => {
                    let at = r.below(b.len());
                    b[at] ^= 1 << r.below(8);
                }
                2 => {
                    // Overwrite a little-endian u32 (offsets, lengths).
                    let at = r.below(b.len().saturating_sub(4).max(1));
                    let rnd = r.u32();
                    let v = r.pick(&[0u32, 1, 4, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x8000_0000, rnd]);
                    let end = (at + 4).min(b.len());
                    b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
                _ => {
                    let at = r.below(b.len());
                    b.truncate(at.max(8));
                }
            }
        }
        let buf = Bytes::from(b);
        let (c, s) = decode_both(&buf);
        if let Ok(m) = c {
            decoded += 1;
            assert_eq!(
                ClientMessage::decode(&m.encode(), &DecodeLimits::default()).unwrap(),
                m
            );
        }
        if let Ok(m) = s {
            decoded += 1;
            let again = ServerMessage::decode(&m.encode(), &DecodeLimits::default()).unwrap();
            // NaN scores are possible after mutation; compare encodings.
            assert_eq!(again.encode(), m.encode());
        }
    }
    // Sanity: the mutations are not all fatal (the test exercises decoding).
    assert!(decoded > 0);
}
