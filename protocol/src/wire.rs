//! Encoding owned messages into FlatBuffers envelopes and decoding received
//! buffers, verified, back into owned messages.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

use crate::enums::{Codec, DropReason, ErrorCode, OverloadPolicy, Wire};
use crate::fb;
use crate::messages::*;

/// Default [`DecodeLimits::max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Smallest buffer that can hold an envelope: root offset + file identifier.
const MIN_BUFFER_BYTES: usize = 8;

/// Bounds applied while decoding a message from an untrusted peer.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted message in bytes, checked before anything else.
    /// Default 16 MiB.
    pub max_message_bytes: usize,
    /// Deepest table nesting the verifier accepts. Default 16 (valid
    /// messages nest at most 3 deep).
    pub max_depth: usize,
    /// Most tables the verifier visits (a shared table counts once per
    /// reference). Default 100 000.
    pub max_tables: usize,
    /// Most bytes the verifier visits counting every reference to shared
    /// data again (bounds "DAG amplification"). Default 64 MiB, four times
    /// `max_message_bytes`; keep it at least twice `max_message_bytes` when
    /// raising that (see [`DecodeLimits::with_max_message_bytes`]).
    pub max_apparent_size: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_depth: 16,
            max_tables: 100_000,
            max_apparent_size: 4 * DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl DecodeLimits {
    /// Default limits with `max_message_bytes` set to `max`, and
    /// `max_apparent_size` scaled to four times it.
    pub fn with_max_message_bytes(max: usize) -> Self {
        DecodeLimits {
            max_message_bytes: max,
            max_apparent_size: max.saturating_mul(4),
            ..DecodeLimits::default()
        }
    }

    fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.max_depth,
            max_tables: self.max_tables,
            max_apparent_size: self.max_apparent_size,
            ignore_missing_null_terminator: false,
        }
    }
}

/// Why a received buffer could not be decoded. Every variant means the
/// buffer is not a valid message for this side; [`DecodeError::error_code`]
/// gives the code to answer with.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is larger than [`DecodeLimits::max_message_bytes`]; it was
    /// not looked at.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the buffer.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The FlatBuffers verifier rejected the buffer, or a field holds a
    /// value this version does not know (e.g. an unknown enum value).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A server message given to [`ClientMessage::decode`] or the reverse.
    #[error("message sent in the wrong direction")]
    WrongDirection,
    /// The envelope holds no message.
    #[error("envelope holds no message")]
    Empty,
    /// The buffer does not carry the "FGT1" file identifier.
    #[error("not a framegate v1 message (file identifier is not \"FGT1\")")]
    BadIdentifier,
    /// The envelope holds a union member this version does not know (sent by
    /// a newer peer). A receiver may ignore the message.
    #[error("unknown message type {0}")]
    UnknownMessage(u8),
}

impl DecodeError {
    /// The error code a gateway answers with: `payload-too-large` for
    /// [`DecodeError::TooLarge`], `protocol-violation` otherwise.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::ProtocolViolation,
        }
    }
}

// ------------------------------------------------------------------ decode

/// Checks size and identifier, then verifies the envelope.
fn verify<'a>(buf: &'a [u8], limits: &DecodeLimits) -> Result<fb::Envelope<'a>, DecodeError> {
    if buf.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: buf.len(),
            max: limits.max_message_bytes,
        });
    }
    if buf.len() < MIN_BUFFER_BYTES {
        return Err(DecodeError::Invalid(format!(
            "{} bytes is shorter than a FlatBuffers header ({MIN_BUFFER_BYTES} bytes)",
            buf.len()
        )));
    }
    if !fb::envelope_buffer_has_identifier(buf) {
        return Err(DecodeError::BadIdentifier);
    }
    let opts = limits.verifier_options();
    flatbuffers::root_with_opts::<fb::Envelope>(&opts, buf).map_err(|e| {
        // The verifier's message spans several lines (with an error trace).
        let text = e.to_string();
        let text: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        DecodeError::Invalid(text.join("; "))
    })
}

fn enum_value<T: Wire>(raw: T::Raw) -> Result<T, DecodeError>
where
    T::Raw: std::fmt::Debug,
{
    T::from_wire(raw)
        .ok_or_else(|| DecodeError::Invalid(format!("unknown {} value {raw:?}", T::WHAT)))
}

fn string(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

/// The direction of a known message type, or None for NONE / unknown.
enum Side {
    Client,
    Server,
}

fn side_of(t: fb::Message) -> Option<Side> {
    match t {
        fb::Message::Hello | fb::Message::Frame | fb::Message::Ack | fb::Message::Bye => {
            Some(Side::Client)
        }
        fb::Message::Welcome
        | fb::Message::Detections
        | fb::Message::Credit
        | fb::Message::Dropped
        | fb::Message::Error => Some(Side::Server),
        _ => None,
    }
}

/// Rejects NONE, unknown members and members meant for the other side.
fn check_side(env: &fb::Envelope<'_>, want: Side) -> Result<(), DecodeError> {
    let t = env.message_type();
    if t == fb::Message::NONE {
        return Err(DecodeError::Empty);
    }
    match (side_of(t), want) {
        (None, _) => Err(DecodeError::UnknownMessage(t.0)),
        (Some(Side::Client), Side::Client) | (Some(Side::Server), Side::Server) => Ok(()),
        _ => Err(DecodeError::WrongDirection),
    }
}

fn missing(what: &str) -> DecodeError {
    DecodeError::Invalid(format!("union member {what} missing"))
}

impl ClientMessage {
    /// Decodes and verifies a message received by the gateway. A Frame's
    /// payload is a zero-copy slice of `buf`.
    pub fn decode(buf: &Bytes, limits: &DecodeLimits) -> Result<Self, DecodeError> {
        let env = verify(buf, limits)?;
        check_side(&env, Side::Client)?;
        Ok(match env.message_type() {
            fb::Message::Hello => {
                let h = env.message_as_hello().ok_or_else(|| missing("Hello"))?;
                ClientMessage::Hello(Hello {
                    protocol_version: h.protocol_version(),
                    credential: string(h.credential()),
                    model: string(h.model()),
                    overload_policy: enum_value::<OverloadPolicy>(h.overload_policy())?,
                    resume_token: string(h.resume_token()),
                    last_received_seq: h.last_received_seq(),
                    datagrams: h.datagrams(),
                    client_name: string(h.client_name()),
                })
            }
            fb::Message::Frame => {
                let f = env.message_as_frame().ok_or_else(|| missing("Frame"))?;
                let codec = if f.codec() == fb::Codec::Unspecified {
                    return Err(DecodeError::Invalid("frame codec is not set".into()));
                } else {
                    enum_value::<Codec>(f.codec())?
                };
                let payload = match f.payload() {
                    Some(v) if !v.is_empty() => buf.slice_ref(v.bytes()),
                    _ => Bytes::new(),
                };
                ClientMessage::Frame(Frame {
                    seq: f.seq(),
                    capture_ts_us: f.capture_ts_us(),
                    codec,
                    width: f.width(),
                    height: f.height(),
                    deadline_us: f.deadline_us(),
                    payload,
                })
            }
            fb::Message::Ack => {
                let a = env.message_as_ack().ok_or_else(|| missing("Ack"))?;
                ClientMessage::Ack(Ack { seq: a.seq() })
            }
            fb::Message::Bye => {
                let b = env.message_as_bye().ok_or_else(|| missing("Bye"))?;
                ClientMessage::Bye(Bye {
                    reason: string(b.reason()),
                })
            }
            other => unreachable!("check_side accepted {other:?}"),
        })
    }

    /// Encodes the message as a finished "FGT1" envelope.
    pub fn encode(&self) -> Bytes {
        let mut fbb = FlatBufferBuilder::with_capacity(self.size_hint());
        let (t, m) = match self {
            ClientMessage::Hello(h) => {
                let credential = opt_str(&mut fbb, &h.credential);
                let model = opt_str(&mut fbb, &h.model);
                let resume_token = opt_str(&mut fbb, &h.resume_token);
                let client_name = opt_str(&mut fbb, &h.client_name);
                let o = fb::Hello::create(
                    &mut fbb,
                    &fb::HelloArgs {
                        protocol_version: h.protocol_version,
                        credential,
                        model,
                        overload_policy: h.overload_policy.to_wire(),
                        resume_token,
                        last_received_seq: h.last_received_seq,
                        datagrams: h.datagrams,
                        client_name,
                    },
                );
                (fb::Message::Hello, o.as_union_value())
            }
            ClientMessage::Frame(f) => {
                let payload = (!f.payload.is_empty()).then(|| fbb.create_vector(&f.payload[..]));
                let o = fb::Frame::create(
                    &mut fbb,
                    &fb::FrameArgs {
                        seq: f.seq,
                        capture_ts_us: f.capture_ts_us,
                        codec: f.codec.to_wire(),
                        width: f.width,
                        height: f.height,
                        deadline_us: f.deadline_us,
                        payload,
                    },
                );
                (fb::Message::Frame, o.as_union_value())
            }
            ClientMessage::Ack(a) => {
                let o = fb::Ack::create(&mut fbb, &fb::AckArgs { seq: a.seq });
                (fb::Message::Ack, o.as_union_value())
            }
            ClientMessage::Bye(b) => {
                let reason = opt_str(&mut fbb, &b.reason);
                let o = fb::Bye::create(&mut fbb, &fb::ByeArgs { reason });
                (fb::Message::Bye, o.as_union_value())
            }
        };
        finish(fbb, t, m)
    }

    fn size_hint(&self) -> usize {
        128 + match self {
            ClientMessage::Hello(h) => {
                h.credential.len() + h.model.len() + h.resume_token.len() + h.client_name.len()
            }
            ClientMessage::Frame(f) => f.payload.len(),
            ClientMessage::Ack(_) => 0,
            ClientMessage::Bye(b) => b.reason.len(),
        }
    }
}

impl ServerMessage {
    /// Decodes and verifies a message received by a client.
    pub fn decode(buf: &Bytes, limits: &DecodeLimits) -> Result<Self, DecodeError> {
        let env = verify(buf, limits)?;
        check_side(&env, Side::Server)?;
        Ok(match env.message_type() {
            fb::Message::Welcome => {
                let w = env.message_as_welcome().ok_or_else(|| missing("Welcome"))?;
                let limits = w
                    .limits()
                    .map_or_else(SessionLimits::default, |l| SessionLimits {
                        max_message_bytes: l.max_message_bytes(),
                        max_frame_pixels: l.max_frame_pixels(),
                        max_in_flight: l.max_in_flight(),
                    });
                ServerMessage::Welcome(Welcome {
                    session_id: string(w.session_id()),
                    resume_token: string(w.resume_token()),
                    credits: w.credits(),
                    limits,
                    model: string(w.model()),
                    server_version: string(w.server_version()),
                    received_seq: w.received_seq(),
                })
            }
            fb::Message::Detections => {
                let d = env
                    .message_as_detections()
                    .ok_or_else(|| missing("Detections"))?;
                let detections = d
                    .detections()
                    .map(|v| {
                        v.iter()
                            .map(|det| {
                                let b = det.bbox().copied().unwrap_or_default();
                                Detection {
                                    class_id: det.class_id(),
                                    label: string(det.label()),
                                    score: det.score(),
                                    x1: b.x1(),
                                    y1: b.y1(),
                                    x2: b.x2(),
                                    y2: b.y2(),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let timings = d
                    .timings()
                    .map_or_else(StageTimings::default, |t| StageTimings {
                        queue_us: t.queue_us(),
                        decode_us: t.decode_us(),
                        preprocess_us: t.preprocess_us(),
                        infer_us: t.infer_us(),
                        postprocess_us: t.postprocess_us(),
                        total_us: t.total_us(),
                    });
                let usage = d.usage().map_or_else(Usage::default, |u| Usage {
                    frames: u.frames(),
                    pixels: u.pixels(),
                });
                ServerMessage::Detections(Detections {
                    seq: d.seq(),
                    capture_ts_us: d.capture_ts_us(),
                    width: d.width(),
                    height: d.height(),
                    model: string(d.model()),
                    detections,
                    timings,
                    usage,
                })
            }
            fb::Message::Credit => {
                let c = env.message_as_credit().ok_or_else(|| missing("Credit"))?;
                ServerMessage::Credit(Credit {
                    credits: c.credits(),
                })
            }
            fb::Message::Dropped => {
                let d = env.message_as_dropped().ok_or_else(|| missing("Dropped"))?;
                if d.reason() == fb::DropReason::Unspecified {
                    return Err(DecodeError::Invalid("drop reason is not set".into()));
                }
                ServerMessage::Dropped(Dropped {
                    seqs: d.seqs().map(|v| v.iter().collect()).unwrap_or_default(),
                    reason: enum_value::<DropReason>(d.reason())?,
                    message: string(d.message()),
                    retry_after_ms: d.retry_after_ms(),
                })
            }
            fb::Message::Error => {
                let e = env.message_as_error().ok_or_else(|| missing("Error"))?;
                if e.code() == fb::ErrorCode::Unspecified {
                    return Err(DecodeError::Invalid("error code is not set".into()));
                }
                ServerMessage::Error(ErrorMessage {
                    code: enum_value::<ErrorCode>(e.code())?,
                    message: string(e.message()),
                    retryable: e.retryable(),
                    seq: e.seq(),
                    retry_after_ms: e.retry_after_ms(),
                })
            }
            other => unreachable!("check_side accepted {other:?}"),
        })
    }

    /// Encodes the message as a finished "FGT1" envelope.
    pub fn encode(&self) -> Bytes {
        let mut fbb = FlatBufferBuilder::with_capacity(self.size_hint());
        let (t, m) = match self {
            ServerMessage::Welcome(w) => {
                let session_id = opt_str(&mut fbb, &w.session_id);
                let resume_token = opt_str(&mut fbb, &w.resume_token);
                let model = opt_str(&mut fbb, &w.model);
                let server_version = opt_str(&mut fbb, &w.server_version);
                let limits = fb::SessionLimits::create(
                    &mut fbb,
                    &fb::SessionLimitsArgs {
                        max_message_bytes: w.limits.max_message_bytes,
                        max_frame_pixels: w.limits.max_frame_pixels,
                        max_in_flight: w.limits.max_in_flight,
                    },
                );
                let o = fb::Welcome::create(
                    &mut fbb,
                    &fb::WelcomeArgs {
                        session_id,
                        resume_token,
                        credits: w.credits,
                        limits: Some(limits),
                        model,
                        server_version,
                        received_seq: w.received_seq,
                    },
                );
                (fb::Message::Welcome, o.as_union_value())
            }
            ServerMessage::Detections(d) => {
                let model = opt_str(&mut fbb, &d.model);
                let dets: Vec<_> = d
                    .detections
                    .iter()
                    .map(|det| {
                        let label = opt_str(&mut fbb, &det.label);
                        let bbox = fb::BoundingBox::new(det.x1, det.y1, det.x2, det.y2);
                        fb::Detection::create(
                            &mut fbb,
                            &fb::DetectionArgs {
                                class_id: det.class_id,
                                label,
                                score: det.score,
                                bbox: Some(&bbox),
                            },
                        )
                    })
                    .collect();
                let detections = (!dets.is_empty()).then(|| fbb.create_vector(&dets));
                let t = &d.timings;
                let timings = fb::StageTimings::create(
                    &mut fbb,
                    &fb::StageTimingsArgs {
                        queue_us: t.queue_us,
                        decode_us: t.decode_us,
                        preprocess_us: t.preprocess_us,
                        infer_us: t.infer_us,
                        postprocess_us: t.postprocess_us,
                        total_us: t.total_us,
                    },
                );
                let usage = fb::Usage::create(
                    &mut fbb,
                    &fb::UsageArgs {
                        frames: d.usage.frames,
                        pixels: d.usage.pixels,
                    },
                );
                let o = fb::Detections::create(
                    &mut fbb,
                    &fb::DetectionsArgs {
                        seq: d.seq,
                        capture_ts_us: d.capture_ts_us,
                        width: d.width,
                        height: d.height,
                        model,
                        detections,
                        timings: Some(timings),
                        usage: Some(usage),
                    },
                );
                (fb::Message::Detections, o.as_union_value())
            }
            ServerMessage::Credit(c) => {
                let o = fb::Credit::create(&mut fbb, &fb::CreditArgs { credits: c.credits });
                (fb::Message::Credit, o.as_union_value())
            }
            ServerMessage::Dropped(d) => {
                let seqs = (!d.seqs.is_empty()).then(|| fbb.create_vector(&d.seqs));
                let message = opt_str(&mut fbb, &d.message);
                let o = fb::Dropped::create(
                    &mut fbb,
                    &fb::DroppedArgs {
                        seqs,
                        reason: d.reason.to_wire(),
                        message,
                        retry_after_ms: d.retry_after_ms,
                    },
                );
                (fb::Message::Dropped, o.as_union_value())
            }
            ServerMessage::Error(e) => {
                let message = opt_str(&mut fbb, &e.message);
                let o = fb::Error::create(
                    &mut fbb,
                    &fb::ErrorArgs {
                        code: e.code.to_wire(),
                        message,
                        retryable: e.retryable,
                        seq: e.seq,
                        retry_after_ms: e.retry_after_ms,
                    },
                );
                (fb::Message::Error, o.as_union_value())
            }
        };
        finish(fbb, t, m)
    }

    fn size_hint(&self) -> usize {
        128 + match self {
            ServerMessage::Welcome(w) => {
                64 + w.session_id.len()
                    + w.resume_token.len()
                    + w.model.len()
                    + w.server_version.len()
            }
            ServerMessage::Detections(d) => {
                96 + d.model.len()
                    + d.detections
                        .iter()
                        .map(|x| 56 + x.label.len())
                        .sum::<usize>()
            }
            ServerMessage::Credit(_) => 0,
            ServerMessage::Dropped(d) => 8 * d.seqs.len() + d.message.len(),
            ServerMessage::Error(e) => e.message.len(),
        }
    }
}

/// Adds `s` as a string, or nothing when it is empty.
fn opt_str<'a>(fbb: &mut FlatBufferBuilder<'a>, s: &str) -> Option<WIPOffset<&'a str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

/// Wraps a union member in the envelope, finishes the buffer with the file
/// identifier and hands it over without copying.
fn finish(
    mut fbb: FlatBufferBuilder<'_>,
    message_type: fb::Message,
    message: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Bytes {
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type,
            message: Some(message),
        },
    );
    fb::finish_envelope_buffer(&mut fbb, env);
    let (vec, head) = fbb.collapse();
    Bytes::from(vec).slice(head..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_payload_is_zero_copy() {
        let frame = Frame {
            seq: 7,
            capture_ts_us: 1,
            codec: Codec::Rgb8,
            width: 2,
            height: 2,
            deadline_us: 0,
            payload: Bytes::from_static(&[1; 12]),
        };
        let buf = ClientMessage::Frame(frame.clone()).encode();
        let ClientMessage::Frame(got) =
            ClientMessage::decode(&buf, &DecodeLimits::default()).unwrap()
        else {
            panic!("not a frame")
        };
        assert_eq!(got, frame);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(
            range.contains(&(got.payload.as_ptr() as usize)),
            "payload was copied"
        );
    }

    #[test]
    fn encode_does_not_reallocate_for_large_frames() {
        let payload = Bytes::from(vec![9u8; 1 << 20]);
        let frame = Frame {
            seq: 1,
            capture_ts_us: 0,
            codec: Codec::Jpeg,
            width: 1,
            height: 1,
            deadline_us: 0,
            payload,
        };
        let msg = ClientMessage::Frame(frame);
        let buf = msg.encode();
        assert!(
            buf.len() <= msg.size_hint(),
            "{} > {}",
            buf.len(),
            msg.size_hint()
        );
    }

    #[test]
    fn unset_enums_are_invalid() {
        let mut fbb = FlatBufferBuilder::new();
        let f = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                seq: 1,
                ..Default::default()
            },
        );
        let buf = finish(fbb, fb::Message::Frame, f.as_union_value());
        let err = ClientMessage::decode(&buf, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid(ref m) if m.contains("codec")),
            "{err}"
        );
    }
}
