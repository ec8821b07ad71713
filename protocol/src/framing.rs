//! u32 big-endian length prefix + message, used on QUIC streams.
//!
//! Each message on a byte stream is preceded by its length as a 4-byte
//! big-endian unsigned integer. The length counts only the message, not the
//! prefix. A zero length is a valid frame of the framing layer (an empty
//! message), which the message decoder then rejects.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the length prefix in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Appends `msg` with its length prefix to `out`.
///
/// # Panics
///
/// If `msg` is longer than `u32::MAX` bytes (FlatBuffers buffers are below
/// 2 GiB, so an encoded message never is).
pub fn encode_into(msg: &[u8], out: &mut BytesMut) {
    let len = u32::try_from(msg.len()).expect("message longer than u32::MAX bytes");
    out.reserve(LENGTH_PREFIX_BYTES + msg.len());
    out.put_u32(len);
    out.put_slice(msg);
}

/// `msg` with its length prefix, as one buffer.
pub fn encode(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + msg.len());
    encode_into(msg, &mut out);
    out.freeze()
}

/// Error from [`FrameDecoder::decode`]. The stream cannot be resynchronised
/// after it: close the stream (protocol error / message too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The length prefix announces a message above the decoder's limit. It
    /// is reported as soon as the prefix arrives, before the body is read.
    #[error("length prefix announces {len} bytes, above the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Splits length-prefixed messages out of a stream's read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_message_bytes: usize,
}

impl FrameDecoder {
    /// A decoder refusing messages longer than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        FrameDecoder { max_message_bytes }
    }

    /// The largest message this decoder accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Takes the next complete message off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole message yet
    /// (nothing is consumed; append more bytes and call again; capacity for
    /// the rest of the message is reserved). The returned message shares
    /// `buf`'s memory (no copy).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_message_bytes {
            return Err(FramingError::TooLarge {
                len,
                max: self.max_message_bytes,
            });
        }
        let total = LENGTH_PREFIX_BYTES + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_big_endian() {
        let b = encode(&[0xAA; 258]);
        assert_eq!(&b[..4], &[0, 0, 1, 2]);
        assert_eq!(b.len(), 262);
    }

    #[test]
    fn empty_message_is_a_frame() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        let got = FrameDecoder::new(10).decode(&mut buf).unwrap();
        assert_eq!(got, Some(Bytes::new()));
        assert!(buf.is_empty());
    }
}
