//! The server side of RFC 6455 framing for `/v1/stream`.
//!
//! Our own codec rather than tungstenite's, for the read path: tungstenite
//! zero-fills its read buffer before every `read` and reads at most its
//! buffer size per call (we had set 16 KiB, to keep 10,000 idle sessions
//! small), so a 50 KB frame cost four `recv` calls and 64 KB of `memset`.
//! This reader reads into the spare capacity of one `BytesMut` (no
//! zero-fill), sized to the frame being read plus a little read-ahead, so a
//! whole frame (and the start of the next) usually arrives in one `recv`,
//! and the payload is unmasked in place and handed on without a copy.
//!
//! What it checks, as a server must: client frames are masked, RSV bits are
//! clear (no extension is negotiated), opcodes are known, control frames are
//! final and at most 125 bytes, continuation frames continue something, and
//! a message (all of its fragments) stays under the size limit, checked from
//! the frame headers before the payload is read. Text messages are returned
//! as such (the protocol is binary; the caller refuses them) without UTF-8
//! validation.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read beyond the frame in hand, so the next frame's header (and
/// usually its start) comes with the same `recv`; also the size of a read
/// when no frame is in hand before a session's first frame and after
/// `SHRINK_AFTER` without one (see `WsReader::expect`). Small, because what
/// is read beyond a frame is copied into the next frame's buffer, and
/// because an idle session waits with a buffer of this size (10,000 idle
/// sessions hold 40 MB of them).
const READ_AHEAD: usize = 4 << 10;

/// Most a read waiting for the next frame asks for (see `WsReader::expect`).
const MAX_EXPECT: usize = 1 << 20;

/// How long a reader waits for the next frame with room for a whole one
/// before it goes back to the small read-ahead: a session that paused
/// (a motion-triggered camera) then holds 4 KiB, not a frame's worth.
const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Size of one read while discarding what a refused client still sends.
const DISCARD_READ: usize = 64 << 10;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage {
    /// A binary message (all its fragments, joined).
    Binary(Bytes),
    /// A text message (its bytes, not validated as UTF-8).
    Text(Bytes),
    /// A ping: the caller owes a pong with the same payload.
    Ping(Bytes),
    /// A close frame, with its status code when it had one.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug)]
pub enum WsError {
    /// A message larger than the reader's limit: `size` is what its frame
    /// headers announced so far.
    TooLarge {
        /// Bytes announced.
        size: u64,
    },
    /// The client broke RFC 6455.
    Protocol(&'static str),
    /// The connection failed or ended inside a frame.
    Io(std::io::Error),
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::TooLarge { size } => {
                write!(f, "websocket message of {size} bytes is too large")
            }
            WsError::Protocol(what) => write!(f, "websocket protocol violation: {what}"),
            WsError::Io(e) => write!(f, "websocket read failed: {e}"),
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Bytes the header itself takes.
    size: usize,
}

/// Parses a frame header from the start of `buf`; `Ok(None)` when more
/// bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let opcode = b0 & 0x0F;
    let (len, mut size) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(WsError::Protocol("payload length with its top bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        if buf.len() < size + 4 {
            return Ok(None);
        }
        let m = [buf[size], buf[size + 1], buf[size + 2], buf[size + 3]];
        size += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        len,
        size,
    }))
}

/// XORs `data` with the 4-byte mask, starting at mask offset 0.
///
/// Every client frame passes through here (RFC 6455 masks them all), so
/// on x86-64 with AVX2 the loop is compiled for 32-byte registers; elsewhere
/// the same loop gets the baseline's 16-byte ones. Eight bytes at a time,
/// as before, took 2.2 µs per 51 KB frame on the Intel Xeon machine
/// (`cargo bench --bench data_path -- ws_unmask`), about a tenth of the
/// gateway's CPU per gateway-only WebSocket frame.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just checked for AVX2.
        unsafe { apply_mask_avx2(data, mask) };
        return;
    }
    apply_mask_wide(data, mask);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn apply_mask_avx2(data: &mut [u8], mask: [u8; 4]) {
    apply_mask_wide(data, mask);
}

/// 64 bytes a step against the mask repeated 16 times (a multiple of 4, so
/// every step and the tail start at mask offset 0); the fixed-size inner
/// loop is what the compiler turns into vector XORs.
#[inline(always)]
fn apply_mask_wide(data: &mut [u8], mask: [u8; 4]) {
    const STEP: usize = 64;
    let wide: [u8; STEP] = std::array::from_fn(|i| mask[i & 3]);
    let mut chunks = data.chunks_exact_mut(STEP);
    for c in &mut chunks {
        for (b, m) in c.iter_mut().zip(wide.iter()) {
            *b ^= m;
        }
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Reads whole messages from a client.
pub struct WsReader<R> {
    io: R,
    buf: BytesMut,
    max_message: u64,
    /// A fragmented data message being collected: its opcode and bytes.
    partial: Option<(u8, BytesMut)>,
    /// How much to read while no frame header is in hand: the last data
    /// frame's size plus the read-ahead (at most `MAX_EXPECT`), or just the
    /// read-ahead before the first, and again after `SHRINK_AFTER` without
    /// one. Reading a frame's first 4 KiB alone and the rest after held the
    /// 10th 164 KB frame of every fresh connection back by ~31 ms (strace: the client wrote it in one `sendto`, the
    /// server's reads got it in parts, the last part ~21 ms after the one
    /// before; TCP's receive window); reading what the last frame needed
    /// in one go removed the stall. Idle sessions that never sent a frame
    /// stay at 4 KiB, and a larger buffer's pages are only touched as data
    /// arrives.
    expect: usize,
    /// When the last data frame was taken: `SHRINK_AFTER` counts from here
    /// (pings or a header arriving in pieces do not restart it).
    last_data: tokio::time::Instant,
    /// `buf` was allocated while waiting for this frame (nothing taken out
    /// of it since): a header arriving in pieces does not allocate again.
    fresh: bool,
    /// When the client last sent anything (a pong or part of a frame).
    heard: tokio::time::Instant,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// A reader of messages of at most `max_message` bytes.
    pub fn new(io: R, max_message: usize) -> Self {
        WsReader {
            io,
            buf: BytesMut::new(),
            max_message: max_message as u64,
            partial: None,
            expect: READ_AHEAD,
            last_data: tokio::time::Instant::now(),
            fresh: false,
            heard: tokio::time::Instant::now(),
        }
    }

    /// When the client last sent anything (a pong or part of a frame).
    pub fn heard(&self) -> tokio::time::Instant {
        self.heard
    }

    /// Changes the message limit (the gateway reads Hello with a small one,
    /// then raises it for the session).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message as u64;
    }

    /// The next message; `Ok(None)` when the client closed the connection
    /// (a connection that ends inside a frame is an `Io` error).
    pub async fn next(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            let mut between_frames = false;
            let want = match parse_header(&self.buf)? {
                Some(h) => {
                    self.check(&h)?;
                    let total = h.size as u64 + h.len;
                    if self.buf.len() as u64 >= total {
                        if let Some(msg) = self.take_frame(h) {
                            return Ok(Some(msg));
                        }
                        continue;
                    }
                    // `check` bounded the length by the message limit.
                    (total - self.buf.len() as u64) as usize + READ_AHEAD
                }
                None => {
                    // Less than a header in hand. What is left of the last
                    // buffer shares the allocation of the frame read into
                    // it: move those few bytes to a fresh buffer, so an
                    // idle session does not keep its last frame alive once
                    // the pipeline lets go of it.
                    if !self.fresh {
                        let mut fresh = BytesMut::with_capacity(self.expect + self.buf.len());
                        fresh.extend_from_slice(&self.buf);
                        self.buf = fresh;
                        self.fresh = true;
                    }
                    between_frames = self.expect > READ_AHEAD;
                    self.expect
                }
            };
            self.buf.reserve(want);
            let read = if between_frames {
                // `read_buf` is cancel-safe: a read that timed out took
                // nothing from the connection.
                let until = self.last_data + SHRINK_AFTER;
                match tokio::time::timeout_at(until, self.io.read_buf(&mut self.buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        // Wait on with a small buffer (what is in hand of
                        // the next header moves into it).
                        self.expect = READ_AHEAD;
                        self.fresh = false;
                        continue;
                    }
                }
            } else {
                self.io.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) if self.buf.is_empty() && self.partial.is_none() => return Ok(None),
                Ok(0) => {
                    return Err(WsError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => self.heard = tokio::time::Instant::now(),
                Err(e) => return Err(WsError::Io(e)),
            }
        }
    }

    /// After the server refused the client and sent its close frame:
    /// reads and discards what the client still sends until it closes,
    /// `max_bytes` have gone or `max_time` has passed. A client still
    /// writing (the rest of a refused oversized message) then gets to read
    /// the refusal; closing with its bytes unread would reset the
    /// connection and could lose the refusal on the way.
    pub async fn linger(&mut self, max_bytes: usize, max_time: std::time::Duration) {
        self.partial = None;
        self.buf.clear();
        let _ = tokio::time::timeout(max_time, async {
            let mut left = max_bytes;
            while left > 0 {
                self.buf.clear();
                self.buf.reserve(DISCARD_READ);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        self.buf = BytesMut::new();
    }

    fn check(&self, h: &Header) -> Result<(), WsError> {
        if h.mask.is_none() {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        match h.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !h.fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if h.len > 125 {
                    return Err(WsError::Protocol("control frame longer than 125 bytes"));
                }
                if h.opcode == OP_CLOSE && h.len == 1 {
                    return Err(WsError::Protocol("close frame with a one-byte payload"));
                }
            }
            OP_CONTINUATION => {
                let Some((_, so_far)) = &self.partial else {
                    return Err(WsError::Protocol(
                        "continuation frame with nothing to continue",
                    ));
                };
                let size = so_far.len() as u64 + h.len;
                if size > self.max_message {
                    return Err(WsError::TooLarge { size });
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol(
                        "new data message before the fragmented one ended",
                    ));
                }
                if h.len > self.max_message {
                    return Err(WsError::TooLarge { size: h.len });
                }
            }
            _ => return Err(WsError::Protocol("unknown opcode")),
        }
        Ok(())
    }

    /// Takes the (whole, checked) frame off the buffer; a message when it
    /// completes one.
    fn take_frame(&mut self, h: Header) -> Option<WsMessage> {
        if matches!(h.opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
            // `check` bounded the length by the message limit.
            self.expect = (h.size + h.len as usize + READ_AHEAD).min(MAX_EXPECT);
            self.last_data = tokio::time::Instant::now();
        }
        // The rest of the buffer shares the allocation of what is taken.
        self.fresh = false;
        self.buf.advance(h.size);
        let mut payload = self.buf.split_to(h.len as usize);
        apply_mask(&mut payload, h.mask.expect("checked: masked"));
        let data = |op: u8, bytes: Bytes| match op {
            OP_TEXT => WsMessage::Text(bytes),
            _ => WsMessage::Binary(bytes),
        };
        match h.opcode {
            OP_TEXT | OP_BINARY if h.fin => Some(data(h.opcode, payload.freeze())),
            OP_TEXT | OP_BINARY => {
                self.partial = Some((h.opcode, payload));
                None
            }
            OP_CONTINUATION => {
                let (op, so_far) = self.partial.as_mut().expect("checked: continuing");
                so_far.extend_from_slice(&payload);
                if !h.fin {
                    return None;
                }
                let op = *op;
                let (_, whole) = self.partial.take().expect("just used");
                Some(data(op, whole.freeze()))
            }
            OP_PING => Some(WsMessage::Ping(payload.freeze())),
            OP_CLOSE => Some(WsMessage::Close(close_code(&payload))),
            _ => None, // a pong: nothing to do
        }
    }
}

/// The status code of a client's close frame, as its answer should carry
/// it: none when it gave none; 1007 when its reason is not UTF-8 (RFC 6455
/// 5.5.1 and 8.1: the endpoint fails the connection with 1007 "invalid
/// frame payload data").
fn close_code(payload: &[u8]) -> Option<u16> {
    let (code, reason) = (payload.get(..2)?, &payload[2..]);
    if std::str::from_utf8(reason).is_err() {
        return Some(1007);
    }
    Some(u16::from_be_bytes([code[0], code[1]]))
}

/// Whether a close frame may carry `code` (RFC 6455 7.4): the defined
/// codes other than those reserved for reporting (1004-1006, 1015), and the
/// ranges for libraries (3000-3999) and applications (4000-4999).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends one final, unmasked server frame to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Writes server frames: queued into one buffer, sent with one write.
pub struct WsWriter<W> {
    io: W,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer on the connection's write half.
    pub fn new(io: W) -> Self {
        WsWriter {
            io,
            out: Vec::new(),
        }
    }

    /// A binary message.
    pub fn queue_binary(&mut self, payload: &[u8]) {
        push_frame(&mut self.out, OP_BINARY, payload);
    }

    /// A pong answering a ping's payload.
    pub fn queue_pong(&mut self, payload: &[u8]) {
        push_frame(&mut self.out, OP_PONG, payload);
    }

    /// A keep-alive ping (empty payload).
    pub fn queue_ping(&mut self) {
        push_frame(&mut self.out, OP_PING, b"");
    }

    /// A close frame; `reason` is cut to the 123 bytes a close frame has
    /// room for, at a character boundary.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        let reason = super::cut_at_char_boundary(reason, 123);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        push_frame(&mut self.out, OP_CLOSE, &payload);
    }

    /// The close frame answering a client's close (RFC 6455 5.5.1): its
    /// status code echoed (1007 stands for a reason that was not UTF-8, see
    /// `close_code`), none when it gave none, 1002 when it gave one that may
    /// not be sent.
    pub fn queue_close_answer(&mut self, client_code: Option<u16>) {
        match client_code {
            None => push_frame(&mut self.out, OP_CLOSE, &[]),
            Some(code) if sendable_close_code(code) => self.queue_close(code, ""),
            Some(_) => self.queue_close(1002, "invalid close code"),
        }
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// Ends the connection's write side (after a close frame).
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// One client frame, masked with [`MASK`].
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, opcode, payload);
        if !fin {
            out[0] &= 0x7F;
        }
        out[1] |= 0x80;
        let at = out.len() - payload.len();
        let mut body = out.split_off(at);
        out.extend_from_slice(&MASK);
        apply_mask(&mut body, MASK);
        out.extend_from_slice(&body);
        out
    }

    /// Reads every message from `bytes`, delivered `chunk` bytes per read.
    async fn read_all(bytes: Vec<u8>, chunk: usize, max: usize) -> Vec<Result<WsMessage, String>> {
        let (mut client, server) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(async move {
            for c in bytes.chunks(chunk) {
                if client.write_all(c).await.is_err() {
                    return;
                }
            }
        });
        let mut reader = WsReader::new(server, max);
        let mut got = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(m)) => got.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    got.push(Err(e.to_string()));
                    break;
                }
            }
        }
        writer.abort();
        got
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition() {
        for len in [
            0usize, 1, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 131, 1000, 51_203,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, MASK);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
            // The portable loop too (on an AVX2 machine `apply_mask` takes
            // the other path).
            let mut wide = data.clone();
            apply_mask_wide(&mut wide, MASK);
            assert_eq!(wide, slow, "length {len}, portable loop");
        }
    }

    #[tokio::test]
    async fn messages_of_every_length_encoding_arrive_whole_in_any_chunking() {
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000];
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i + j * 13) as u8).collect();
            stream.extend(client_frame(true, OP_BINARY, &payload));
            want.push(Ok(WsMessage::Binary(Bytes::from(payload))));
        }
        for chunk in [1, 7, 4096, 1 << 20] {
            let got = read_all(stream.clone(), chunk, 1 << 20).await;
            assert_eq!(got, want, "delivered {chunk} bytes per read");
        }
    }

    #[tokio::test]
    async fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut s = client_frame(false, OP_BINARY, b"hel");
        s.extend(client_frame(true, OP_PING, b"are you there"));
        s.extend(client_frame(false, OP_CONTINUATION, b"lo "));
        s.extend(client_frame(true, OP_PONG, b""));
        s.extend(client_frame(true, OP_CONTINUATION, b"world"));
        s.extend(client_frame(true, OP_TEXT, b"text"));
        s.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let got = read_all(s, 5, 1024).await;
        assert_eq!(
            got,
            vec![
                Ok(WsMessage::Ping(Bytes::from_static(b"are you there"))),
                Ok(WsMessage::Binary(Bytes::from_static(b"hello world"))),
                Ok(WsMessage::Text(Bytes::from_static(b"text"))),
                Ok(WsMessage::Close(Some(1000))),
            ]
        );
    }

    #[tokio::test]
    async fn a_close_reason_that_is_not_utf8_is_answered_1007() {
        let close = |reason: &[u8]| {
            let mut payload = 1000u16.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            client_frame(true, OP_CLOSE, &payload)
        };
        let mut s = close("bye \u{e9}".as_bytes());
        s.extend(close(b"bye \xe9"));
        s.extend(client_frame(true, OP_CLOSE, b""));
        let got = read_all(s, 3, 1024).await;
        assert_eq!(
            got,
            vec![
                Ok(WsMessage::Close(Some(1000))),
                Ok(WsMessage::Close(Some(1007))),
                Ok(WsMessage::Close(None)),
            ]
        );
    }

    #[tokio::test]
    async fn rule_breaking_frames_are_refused() {
        let unmasked = {
            let mut out = Vec::new();
            push_frame(&mut out, OP_BINARY, b"abc");
            out
        };
        let mut rsv = client_frame(true, OP_BINARY, b"abc");
        rsv[0] |= 0x40;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("must be masked", unmasked),
            ("reserved bits", rsv),
            ("unknown opcode", client_frame(true, 0x3, b"x")),
            ("fragmented control", client_frame(false, OP_PING, b"x")),
            ("longer than 125", client_frame(true, OP_PING, &[0u8; 126])),
            ("one-byte payload", client_frame(true, OP_CLOSE, b"x")),
            (
                "nothing to continue",
                client_frame(true, OP_CONTINUATION, b"x"),
            ),
            ("before the fragmented one ended", {
                let mut s = client_frame(false, OP_BINARY, b"a");
                s.extend(client_frame(true, OP_BINARY, b"b"));
                s
            }),
        ];
        for (what, bytes) in cases {
            let got = read_all(bytes, 64, 1024).await;
            let last = got.last().expect("an outcome");
            assert!(
                matches!(last, Err(e) if e.contains(what)),
                "{what}: got {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_reader_waiting_for_more_keeps_no_frame_alive() {
        use tokio::io::AsyncWriteExt;
        // Two 50 KB frames (the second read into a buffer split off the
        // first), then nothing, or less than the next header.
        for tail in [&b""[..], &[0x82u8, 0x80][..]] {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let mut bytes = client_frame(true, OP_BINARY, &[7u8; 50_000]);
            bytes.extend(client_frame(true, OP_BINARY, &[8u8; 50_000]));
            bytes.extend_from_slice(tail);
            client.write_all(&bytes).await.unwrap();
            let mut reader = WsReader::new(server, 1 << 20);
            let mut payloads = Vec::new();
            for _ in 0..2 {
                match reader.next().await.unwrap() {
                    Some(WsMessage::Binary(p)) => payloads.push(p),
                    other => panic!("expected a binary message, got {other:?}"),
                }
            }
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), reader.next()).await;
            assert!(waiting.is_err(), "nothing more to read yet");
            drop(payloads.remove(0));
            assert!(
                payloads[0].is_unique(),
                "the waiting reader still holds the last frame's allocation (tail {tail:?})"
            );
        }
    }

    /// Hands out one queued chunk (or what fits of it) per read and notes
    /// how many bytes each read offered room for.
    struct CountingReads {
        chunks: std::collections::VecDeque<Vec<u8>>,
        offered: Vec<usize>,
    }

    impl tokio::io::AsyncRead for CountingReads {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.offered.push(buf.remaining());
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_is_read_in_one_go_when_it_is_the_size_of_the_last_one() {
        // Each chunk is one frame, as a client writes it. The first read of
        // each `next()` starts with no header in hand: what it offers is the
        // reader's guess at the coming frame.
        let frames = [
            client_frame(true, OP_BINARY, &[1u8; 100_000]),
            client_frame(true, OP_PING, b"p"),
            client_frame(true, OP_BINARY, &[2u8; 100_000]),
            client_frame(true, OP_BINARY, &[3u8; 10]),
            client_frame(true, OP_BINARY, &[4u8; 3_000_000]),
            client_frame(true, OP_BINARY, &[5u8; 10]),
        ];
        let io = CountingReads {
            chunks: frames.iter().cloned().collect(),
            offered: Vec::new(),
        };
        let mut reader = WsReader::new(io, 4 << 20);
        let mut first_offers = Vec::new();
        for _ in 0..frames.len() {
            let before = reader.io.offered.len();
            assert!(reader.next().await.unwrap().is_some());
            first_offers.push(reader.io.offered[before]);
        }
        let [fresh, after_100k, after_ping, again_100k, after_10, after_3m] =
            first_offers[..].try_into().unwrap();
        // Before any frame: the small read-ahead an idle session waits with.
        assert!(
            (READ_AHEAD..2 * READ_AHEAD).contains(&fresh),
            "{first_offers:?}"
        );
        // After a 100 KB frame, the next read has room for another (a ping
        // between frames changes nothing).
        for offer in [after_100k, after_ping, again_100k] {
            assert!(offer >= 100_000 + READ_AHEAD, "{first_offers:?}");
        }
        // After a small frame, small again; after a huge one, capped.
        assert!(after_10 < 2 * READ_AHEAD, "{first_offers:?}");
        assert!(
            (MAX_EXPECT..MAX_EXPECT + 2 * READ_AHEAD).contains(&after_3m),
            "{first_offers:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_quiet_for_a_while_waits_with_the_small_read_ahead_again() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = WsReader::new(server, 1 << 22);
        let ping = client_frame(true, OP_PING, b"p");
        // A 100 KB fragment (a data frame: the guess grows), then a ping.
        client
            .write_all(&client_frame(false, OP_BINARY, &[7u8; 100_000]))
            .await
            .unwrap();
        client.write_all(&ping).await.unwrap();
        assert!(matches!(reader.next().await, Ok(Some(WsMessage::Ping(_)))));
        // Just under the pause, another ping: still room for a whole frame.
        tokio::time::sleep(SHRINK_AFTER * 2 / 3).await;
        client.write_all(&ping).await.unwrap();
        assert!(matches!(reader.next().await, Ok(Some(WsMessage::Ping(_)))));
        assert!(reader.expect >= 100_000, "{}", reader.expect);
        // A ping does not restart the pause, which counts from the last
        // data frame: waiting for as long again as since that ping crosses
        // it, and the reader goes back to the small read-ahead.
        let waiting = tokio::time::timeout(SHRINK_AFTER * 2 / 3, reader.next()).await;
        assert!(waiting.is_err(), "nothing more to read yet");
        assert_eq!(reader.expect, READ_AHEAD);
        // Two bytes of the next header, then quiet: the reader waits with
        // the small read-ahead and keeps those bytes.
        let last = client_frame(true, OP_CONTINUATION, &[8u8; 100_000]);
        client.write_all(&last[..2]).await.unwrap();
        let waiting = tokio::time::timeout(SHRINK_AFTER * 3, reader.next()).await;
        assert!(waiting.is_err(), "nothing whole to read yet");
        assert!(
            reader.buf.capacity() <= 2 * READ_AHEAD,
            "{}",
            reader.buf.capacity()
        );
        // The rest arrives: the fragmented message is whole, and the guess
        // is a frame's size again.
        client.write_all(&last[2..]).await.unwrap();
        match reader.next().await.unwrap() {
            Some(WsMessage::Binary(p)) => {
                assert_eq!(p.len(), 200_000);
                assert!(p[..100_000].iter().all(|&b| b == 7));
                assert!(p[100_000..].iter().all(|&b| b == 8));
            }
            other => panic!("expected the joined message, got {other:?}"),
        }
        assert!(reader.expect >= 100_000);
    }

    #[tokio::test]
    async fn too_large_is_known_from_the_headers_before_the_payload_is_read() {
        // Only the header is sent: the reader must not wait for 10 MB.
        let mut header = client_frame(true, OP_BINARY, &[0u8; 70_000]);
        header.truncate(14);
        let got = read_all(header, 64, 65_536).await;
        assert_eq!(
            got,
            vec![Err("websocket message of 70000 bytes is too large".into())]
        );
        // Fragments count together.
        let mut s = client_frame(false, OP_BINARY, &[1u8; 600]);
        s.extend(client_frame(true, OP_CONTINUATION, &[2u8; 600]));
        let got = read_all(s, 64, 1000).await;
        assert_eq!(
            got,
            vec![Err("websocket message of 1200 bytes is too large".into())]
        );
    }

    #[tokio::test]
    async fn a_connection_ending_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let whole = client_frame(true, OP_BINARY, b"abcdef");
        let got = read_all(whole.clone(), 64, 1024).await;
        assert_eq!(
            got,
            vec![Ok(WsMessage::Binary(Bytes::from_static(b"abcdef")))]
        );
        let mut cut = whole;
        cut.truncate(cut.len() - 2);
        let got = read_all(cut, 64, 1024).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("read failed")),
            "{got:?}"
        );
    }

    #[test]
    fn close_answers_echo_sendable_codes_and_refuse_the_rest() {
        let answer = |code| {
            let mut w = WsWriter::new(Vec::new());
            w.queue_close_answer(code);
            w.out
        };
        assert_eq!(answer(None), vec![0x88, 0]);
        for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4000, 4999] {
            let out = answer(Some(code));
            assert_eq!(out[..2], [0x88, 2], "{code}");
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), code);
        }
        // Reserved for reporting, undefined, or out of range: 1002.
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000] {
            let out = answer(Some(code));
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1002, "{code}");
        }
    }

    #[tokio::test]
    async fn server_frames_are_what_a_websocket_client_reads() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut w = WsWriter::new(server);
        let big: Vec<u8> = (0..70_000).map(|i| i as u8).collect();
        w.queue_binary(b"small");
        w.queue_binary(&big);
        w.queue_pong(b"p");
        w.queue_close(1008, &"é".repeat(100));
        w.flush().await.unwrap();
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Binary("small".into())
        );
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Binary(big.into())
        );
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong("p".into()));
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(
                    f.reason.len(),
                    122,
                    "cut at a character boundary under 123 bytes"
                );
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
