//! One-shot HTTP: each frame is a `POST` (raw body, or a multipart field
//! named `image`); a session is a caller with up to `in_flight` requests
//! outstanding, each on its own kept-alive HTTP/1.1 connection.
//!
//! A lean HTTP/1.1 client of our own, not reqwest or hyper: the load client
//! shares the machine's cores with the server it measures, so every
//! microsecond it spends per request is taken from the server.
//!
//! - Each image's whole request (head and body) is built once, into a
//!   memory file (`memfd_create`), and every request is one `sendfile(2)` of
//!   it: the kernel hands the file's pages to the socket instead of copying
//!   the body from user memory each time, which was a third of the client's
//!   CPU for 51 KB bodies. Where no memory file can be made the request is
//!   written from memory instead.
//! - The exchange runs in the session's own task (no connection task, no
//!   channel per request): write the request, read the answer's head and its
//!   `Content-Length` (or chunked) body.
//! - Connections are kept per session (no shared pool lock). One the server
//!   said it would close (`Connection: close`, HTTP/1.0) is dropped after
//!   its answer; an idle one is checked before it is used again (a close or
//!   reset since is found then, and a new connection opened). A request is
//!   sent once and never again: the server never sees it twice.
//! - A server that answers before it has read the whole body (a 401 or 429
//!   on the head) and closes: the answer is still read and counted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use framegate_protocol::StageTimings;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{AnswerKind, BoxFuture, OutFrame, SessionEvent, SessionHandle, Transport};

/// The multipart boundary (never inside a JPEG/PNG body we send: checked
/// when the body is built).
const BOUNDARY: &str = "framegate-load-boundary-7f3a9c2e51d84b06";

/// The largest answer head read (bytes); a longer one is an error.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;
/// The largest answer body read (bytes); the gateway's are a few KB.
const MAX_BODY: usize = 16 << 20;

/// HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    /// Full URL, e.g. `http://127.0.0.1:8080/v1/detect`.
    pub url: String,
    /// Bearer token.
    pub key: String,
    /// Send the image as a multipart field `image` instead of the raw body.
    pub multipart: bool,
    /// Requests a session keeps outstanding at most.
    pub in_flight: u32,
    /// `host:port` to connect to (and the `Host` header).
    authority: String,
    /// The addresses `authority` was checked to resolve to; when set,
    /// connections go to these and the name is not looked up again (a name
    /// that resolves elsewhere later cannot move the load past the
    /// loopback guard).
    addrs: Vec<SocketAddr>,
    /// Path and query of `url`.
    path: String,
    /// Each image's request, built once for all sessions (one memory file
    /// per image, not per session).
    requests: Arc<Mutex<HashMap<ImageKey, Arc<Request>>>>,
}

/// An image by where its bytes are: the frame set lives for the whole run.
type ImageKey = (usize, usize);

impl HttpTransport {
    /// A transport for `url` (`http://host:port/path?query`).
    pub fn new(url: String, key: String, multipart: bool, in_flight: u32) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("only http:// URLs are supported, got {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), "/".to_string()),
        };
        // These go into the request head as they are.
        let bad = |s: &str, tab_ok: bool| {
            s.bytes()
                .any(|b| b == 0x7f || (b < 0x20 && !(tab_ok && b == b'\t')))
        };
        if bad(&key, true) {
            bail!("the key is not a valid header value");
        }
        if bad(&authority, false) || authority.contains(' ') || authority.is_empty() {
            bail!("not a valid host:port in {url:?}");
        }
        if bad(&path, false) || path.contains(' ') {
            bail!("not a valid path in {url:?}");
        }
        Ok(Self {
            url,
            key,
            multipart,
            in_flight: in_flight.max(1),
            authority,
            addrs: Vec::new(),
            path,
            requests: Arc::default(),
        })
    }

    /// Connects to `addrs` (as checked by
    /// [`crate::target::Target::check_loopback`]) instead of resolving the
    /// URL's host for each connection.
    pub fn connect_to(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.addrs = addrs;
        self
    }
}

impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        "http"
    }

    fn open(&self, _id: usize) -> BoxFuture<'_, Result<SessionHandle>> {
        let credits = self.in_flight;
        let (frames_tx, frames_rx) = mpsc::channel::<OutFrame>(credits as usize * 4 + 16);
        let (events_tx, events_rx) = mpsc::channel::<SessionEvent>(credits as usize * 4 + 16);
        tokio::spawn(self.clone().run(frames_rx, events_tx));
        Box::pin(async move {
            Ok(SessionHandle {
                frames: frames_tx,
                events: events_rx,
                credits,
            })
        })
    }
}

/// A kept-alive connection and its read buffer.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
    /// When its last answer was read.
    idle_since: Instant,
}

/// One image's whole request (head and body), built once and sent as is.
#[derive(Debug)]
enum Request {
    /// In a memory file, sent with `sendfile(2)`.
    File { file: File, len: usize },
    /// In memory, written with `send(2)`.
    Memory(Vec<u8>),
}

impl Request {
    /// The request as a memory file, or in memory where none can be made.
    fn new(bytes: Vec<u8>) -> Self {
        match memory_file(&bytes) {
            Ok(file) => Request::File {
                file,
                len: bytes.len(),
            },
            Err(_) => Request::Memory(bytes),
        }
    }

    fn len(&self) -> usize {
        match self {
            Request::File { len, .. } => *len,
            Request::Memory(b) => b.len(),
        }
    }

    /// Writes the whole request to `tcp`.
    async fn send(&self, tcp: &TcpStream) -> io::Result<()> {
        let len = self.len();
        let mut off = 0usize;
        while off < len {
            tcp.writable().await?;
            let sent = match self {
                Request::File { file, .. } => tcp.try_io(Interest::WRITABLE, || {
                    let mut at = off as libc::off_t;
                    // SAFETY: both descriptors are open for the whole call
                    // (borrowed from `tcp` and `file`), and `at` is a valid
                    // offset the kernel updates; no memory of ours is
                    // written.
                    let n = unsafe {
                        libc::sendfile(tcp.as_raw_fd(), file.as_raw_fd(), &mut at, len - off)
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                }),
                Request::Memory(b) => tcp.try_write(&b[off..]),
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `bytes` in an anonymous memory file (Linux `memfd_create`).
fn memory_file(bytes: &[u8]) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated string; the call returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"framegate-load-request".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing
    // else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok(file)
}

/// A request's outcome, and its connection when it can be used again.
type Done = (u64, AnswerKind, Option<Conn>);

impl HttpTransport {
    /// One session: sends each frame on an idle connection (opening one
    /// when none is idle) and reports each answer.
    async fn run(self, mut frames: mpsc::Receiver<OutFrame>, events: mpsc::Sender<SessionEvent>) {
        let mut idle: Vec<Conn> = Vec::new();
        // This session's own lookups need no lock.
        let mut requests: HashMap<ImageKey, Arc<Request>> = HashMap::new();
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                f = frames.recv(), if open => match f {
                    Some(f) => {
                        let key = (f.image.bytes.as_ptr() as usize, f.image.bytes.len());
                        let req = requests
                            .entry(key)
                            .or_insert_with(|| self.shared_request(key, &f))
                            .clone();
                        let conn = idle.pop();
                        pending.push(self.post(conn, f.seq, req));
                    }
                    None => open = false,
                },
                Some((seq, kind, conn)) = pending.next(), if !pending.is_empty() => {
                    if let Some(c) = conn {
                        idle.push(c);
                    }
                    let at = Instant::now();
                    if events.send(SessionEvent::Answer { seq, kind, at }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The request for an image, from the transport's cache or built.
    fn shared_request(&self, key: ImageKey, f: &OutFrame) -> Arc<Request> {
        if let Some(r) = self.requests.lock().expect("requests lock").get(&key) {
            return r.clone();
        }
        // Built outside the lock (a panic here must not poison it for the
        // other sessions); two sessions may both build it, one is kept.
        let built = Arc::new(Request::new(self.request_of(f)));
        self.requests
            .lock()
            .expect("requests lock")
            .entry(key)
            .or_insert(built)
            .clone()
    }

    /// The whole request for one image: head and body.
    fn request_of(&self, f: &OutFrame) -> Vec<u8> {
        let img = &f.image;
        let (content_type, head, tail) = if self.multipart {
            assert!(
                !img.bytes
                    .windows(BOUNDARY.len())
                    .any(|w| w == BOUNDARY.as_bytes()),
                "the multipart boundary occurs in image {}",
                img.name
            );
            (
                format!("multipart/form-data; boundary={BOUNDARY}"),
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{}\"\r\n\
                     Content-Type: {}\r\n\r\n",
                    img.name.replace(['"', '\r', '\n'], "_"),
                    img.media_type()
                ),
                format!("\r\n--{BOUNDARY}--\r\n"),
            )
        } else {
            (img.media_type().to_string(), String::new(), String::new())
        };
        let body_len = head.len() + img.bytes.len() + tail.len();
        let request_head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {body_len}\r\n\r\n",
            self.path, self.authority, self.key
        );
        let mut out = Vec::with_capacity(request_head.len() + body_len);
        out.extend_from_slice(request_head.as_bytes());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&img.bytes);
        out.extend_from_slice(tail.as_bytes());
        out
    }

    async fn connect(&self) -> Result<Conn, &'static str> {
        let tcp = if self.addrs.is_empty() {
            TcpStream::connect(&self.authority).await
        } else {
            TcpStream::connect(&self.addrs[..]).await
        }
        .map_err(|_| "request: connect")?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            tcp,
            buf: BytesMut::with_capacity(8 * 1024),
            idle_since: Instant::now(),
        })
    }

    /// Sends one frame's request and reads its answer.
    async fn post(&self, conn: Option<Conn>, seq: u64, req: Arc<Request>) -> Done {
        let (kind, conn) = self.exchange(conn, &req).await;
        (seq, kind, conn)
    }

    async fn exchange(&self, conn: Option<Conn>, req: &Request) -> (AnswerKind, Option<Conn>) {
        // A kept-alive connection the server closed since (its idle
        // timeout) is found out before the request goes, never after: a
        // request is sent once, so the server never sees it twice.
        let mut c = match conn.filter(Conn::still_open) {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return (AnswerKind::Error(e.into()), None),
            },
        };
        let answer = match req.send(&c.tcp).await {
            Ok(()) => read_answer(&mut c).await,
            // The server may have answered and closed before reading the
            // whole body (a 401, 413 or 429 refused on its head): that
            // answer is still readable after the reset.
            Err(_) => match tokio::time::timeout(EARLY_ANSWER_WAIT, read_answer(&mut c)).await {
                Ok(Ok(a)) => Ok(Answer { keep: false, ..a }),
                _ => Err("request: write"),
            },
        };
        match answer {
            Ok(a) => {
                let kind = if a.status == 429 {
                    AnswerKind::Dropped("http-429".into())
                } else if !(200..300).contains(&a.status) {
                    AnswerKind::Error(format!("http-{}", a.status))
                } else {
                    parse_answer(&a.body)
                };
                c.idle_since = Instant::now();
                (kind, a.keep.then_some(c))
            }
            Err(e) => (AnswerKind::Error(e.into()), None),
        }
    }
}

/// Idle time after which a kept-alive connection is checked before use.
const PROBE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// How long an answer is waited for after sending failed.
const EARLY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Conn {
    /// Whether an idle kept-alive connection can carry a request: nothing
    /// to read on it (a close, a reset, or bytes nobody asked for all mean
    /// no). Looked at only once it has been idle for `PROBE_AFTER` (a
    /// syscall per request otherwise): servers close idle connections after
    /// seconds, not right after an answer they sent as kept alive.
    fn still_open(&self) -> bool {
        if self.idle_since.elapsed() < PROBE_AFTER {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// An answer read off a connection.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The connection can carry another request.
    keep: bool,
}

/// How an answer's body is delimited.
#[derive(Debug, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// An answer's head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    framing: Framing,
    keep: bool,
}

/// Parses an answer head at the start of `buf`: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("answer: head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("answer: bad head"),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = v.parse().map_err(|_| "answer: bad content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("answer: bad content-length");
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err("answer: unsupported transfer-encoding");
            }
        } else if h.name.eq_ignore_ascii_case("connection")
            && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        {
            keep = false;
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err("answer: body too large");
        }
        Framing::Length(n)
    } else {
        keep = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        framing,
        keep,
    }))
}

/// Where the decoding of a chunked body stands between reads, so that each
/// read's bytes are looked at once (not the whole body again).
#[derive(Debug, Default)]
struct Chunked {
    /// Offset of the next chunk-size line (or trailer line).
    at: usize,
    /// The chunks decoded so far.
    body: Vec<u8>,
    /// Past the last chunk: reading trailers up to the blank line.
    trailers: bool,
}

/// Goes on decoding the chunked body at the start of `buf` (the same bytes
/// as the last call, and maybe more): `None` while incomplete, else the
/// bytes it took (trailers included) and the body.
fn parse_chunked(buf: &[u8], st: &mut Chunked) -> Result<Option<(usize, Vec<u8>)>, &'static str> {
    loop {
        if st.trailers {
            // Trailers, then a blank line.
            let Some(end) = buf[st.at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            st.at += end + 2;
            if end == 0 {
                return Ok(Some((st.at, std::mem::take(&mut st.body))));
            }
            continue;
        }
        let (used, size) = match httparse::parse_chunk_size(&buf[st.at..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("answer: bad chunk"),
        };
        let size = usize::try_from(size).map_err(|_| "answer: body too large")?;
        if size == 0 {
            st.at += used;
            st.trailers = true;
            continue;
        }
        if size > MAX_BODY - st.body.len() {
            return Err("answer: body too large");
        }
        let data = st.at + used;
        if buf.len() - data < size + 2 {
            return Ok(None);
        }
        if &buf[data + size..data + size + 2] != b"\r\n" {
            return Err("answer: bad chunk");
        }
        st.body.extend_from_slice(&buf[data..data + size]);
        st.at = data + size + 2;
    }
}

/// Reads more of the answer into `c.buf`; false at the end of the stream.
async fn read_more(c: &mut Conn) -> Result<bool, &'static str> {
    c.buf.reserve(8 * 1024);
    match c.tcp.read_buf(&mut c.buf).await {
        Ok(n) => Ok(n > 0),
        Err(_) => Err("answer: connection failed"),
    }
}

/// Reads one answer off `c` (one request is outstanding on it).
async fn read_answer(c: &mut Conn) -> Result<Answer, &'static str> {
    c.buf.clear();
    let head = loop {
        match parse_head(&c.buf)? {
            // An interim answer (100 Continue): the real one follows.
            Some(h) if (100..200).contains(&h.status) => {
                let _ = c.buf.split_to(h.len);
                continue;
            }
            Some(h) => break h,
            None => {}
        }
        if !read_more(c).await? {
            return Err("answer: connection closed");
        }
    };
    let cut_off = "answer: cut off";
    let (body, used) = match head.framing {
        Framing::Length(n) => {
            while c.buf.len() < head.len + n {
                if !read_more(c).await? {
                    return Err(cut_off);
                }
            }
            (c.buf[head.len..head.len + n].to_vec(), head.len + n)
        }
        Framing::Chunked => {
            let mut st = Chunked::default();
            loop {
                if let Some((used, body)) = parse_chunked(&c.buf[head.len..], &mut st)? {
                    break (body, head.len + used);
                }
                // Chunk extensions and trailers count against the limits too.
                if c.buf.len() > head.len + MAX_BODY + MAX_HEAD {
                    return Err("answer: body too large");
                }
                if !read_more(c).await? {
                    return Err(cut_off);
                }
            }
        }
        Framing::UntilClose => {
            while read_more(c).await? {
                if c.buf.len() > head.len + MAX_BODY {
                    return Err("answer: body too large");
                }
            }
            (c.buf[head.len..].to_vec(), c.buf.len())
        }
    };
    Ok(Answer {
        status: head.status,
        body,
        // Bytes past the answer (none were asked for) put the connection
        // out of step: it is not used again.
        keep: head.keep && used == c.buf.len(),
    })
}

/// The fields of an answer the harness reads; the rest is skipped without
/// building a `serde_json::Value` tree.
#[derive(serde::Deserialize)]
struct JsonAnswer {
    #[serde(default)]
    detections: Vec<serde::de::IgnoredAny>,
    timings_us: Option<Timings>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Timings {
    queue: u64,
    decode: u64,
    preprocess: u64,
    infer: u64,
    postprocess: u64,
    total: u64,
}

/// Reads `detections` and `timings_us` from a JSON answer; any JSON object
/// counts as an answer (peers may send fewer fields, or others).
pub fn parse_answer(body: &[u8]) -> AnswerKind {
    let a: JsonAnswer = match serde_json::from_slice(body) {
        Ok(a) => a,
        // Valid JSON of another shape still counts, without boxes.
        Err(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => JsonAnswer {
                detections: Vec::new(),
                timings_us: None,
            },
            Err(_) => return AnswerKind::Error("bad-json".into()),
        },
    };
    let timings = a.timings_us.map(|t| StageTimings {
        queue_us: t.queue as u32,
        decode_us: t.decode as u32,
        preprocess_us: t.preprocess as u32,
        infer_us: t.infer as u32,
        postprocess_us: t.postprocess as u32,
        total_us: t.total as u32,
    });
    AnswerKind::Detections {
        boxes: a.detections.len() as u32,
        timings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_and_peer_answers() {
        let gw = br#"{"model":"m","detections":[{},{}],"timings_us":{"queue":1,"decode":2,"preprocess":3,"infer":4,"postprocess":5,"total":15}}"#;
        match parse_answer(gw) {
            AnswerKind::Detections { boxes, timings } => {
                assert_eq!(boxes, 2);
                assert_eq!(timings.unwrap().total_us, 15);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_answer(br#"{"ok":true}"#),
            AnswerKind::Detections {
                boxes: 0,
                timings: None
            }
        );
        assert_eq!(parse_answer(b"nope"), AnswerKind::Error("bad-json".into()));
    }

    fn head(s: &str) -> Result<Option<Head>, &'static str> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn answer_heads_say_how_the_body_ends_and_whether_to_keep_the_connection() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.len, h.framing, h.keep),
            (200, 39, Framing::Length(12), true)
        );
        // Incomplete: wait for more.
        assert_eq!(head("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None));
        assert_eq!(head(""), Ok(None));
        // The server will close: do not reuse.
        let h = head(
            "HTTP/1.1 429 Too Many\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(!h.unwrap().unwrap().keep);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep);
        // Chunked wins over a length; no framing at all reads to the close.
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep), (Framing::UntilClose, false));
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .unwrap()
                .framing,
            Framing::Length(0)
        );
        // Broken heads are errors, not hangs.
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").is_err());
        assert!(head("SMTP ready\r\n\r\n").is_err());
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(head(&long), Err("answer: head too large"));
    }

    /// `parse_chunked` on `buf` from a fresh state.
    fn chunked_once(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, &'static str> {
        parse_chunked(buf, &mut Chunked::default())
    }

    #[test]
    fn chunked_bodies_decode_whole_or_wait_for_more() {
        let full = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (used, body) = chunked_once(full).unwrap().unwrap();
        assert_eq!(body, b"Wikipedia");
        assert_eq!(&full[used..], b"NEXT");
        // Every cut short of the end is incomplete, never an error.
        let end = full.len() - 4;
        for cut in 0..end {
            assert_eq!(chunked_once(&full[..cut]), Ok(None), "cut at {cut}");
        }
        // Fed a byte at a time with one state, it goes on where it stopped
        // (each chunk is taken once) and ends at the same place.
        let mut st = Chunked::default();
        for cut in 0..end {
            assert_eq!(parse_chunked(&full[..cut], &mut st), Ok(None), "fed {cut}");
        }
        assert_eq!(st.body, b"Wikipedia", "both chunks taken before the end");
        assert_eq!(
            parse_chunked(&full[..end], &mut st),
            Ok(Some((used, b"Wikipedia".to_vec())))
        );
        assert!(chunked_once(b"4\r\nWikiXX").is_err());
        assert!(chunked_once(b"zz\r\n").is_err());
    }

    /// A one-connection server that reads a request and answers `reply`.
    async fn serve_once(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 65536];
            // Head, then Content-Length bytes of body.
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(h)) = req.parse(&got) {
                    let len: usize = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .unwrap();
                    if got.len() >= h + len {
                        break;
                    }
                }
                assert!(n > 0, "the request was cut off");
            }
            sock.write_all(reply).await.unwrap();
            got
        });
        (format!("http://{addr}/detect?x=1"), server)
    }

    fn frame() -> OutFrame {
        OutFrame {
            seq: 7,
            image: crate::frames::EncodedImage {
                name: "a\"b.jpg".into(),
                codec: framegate_protocol::Codec::Jpeg,
                bytes: bytes::Bytes::from_static(&[0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9]),
            },
        }
    }

    #[tokio::test]
    async fn a_request_goes_out_whole_and_its_chunked_answer_is_read() {
        let (url, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"det\r\ne\r\nections\":[{}]}\r\n0\r\n\r\n",
        )
        .await;
        let t = HttpTransport::new(url, "k-1".into(), true, 1).unwrap();
        let req = Request::new(t.request_of(&frame()));
        assert!(
            matches!(req, Request::File { .. }),
            "a memory file on Linux"
        );
        let (kind, conn) = t.exchange(None, &req).await;
        assert_eq!(
            kind,
            AnswerKind::Detections {
                boxes: 1,
                timings: None
            }
        );
        assert!(conn.is_some(), "kept alive");
        let got = String::from_utf8_lossy(&server.await.unwrap()).into_owned();
        assert!(
            got.starts_with("POST /detect?x=1 HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{got}"
        );
        assert!(got.contains("\r\nAuthorization: Bearer k-1\r\n"), "{got}");
        assert!(
            got.contains("Content-Type: multipart/form-data; boundary="),
            "{got}"
        );
        assert!(
            got.contains("filename=\"a_b.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"),
            "{got}"
        );
        assert!(got.ends_with(&format!("\r\n--{BOUNDARY}--\r\n")), "{got}");
        // The same request from memory is byte for byte the same.
        let (url, server) =
            serve_once(b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .await;
        let t = HttpTransport::new(url, "k-1".into(), true, 1).unwrap();
        let bytes = t.request_of(&frame());
        let (kind, conn) = t.exchange(None, &Request::Memory(bytes.clone())).await;
        assert_eq!(kind, AnswerKind::Error("http-503".into()));
        assert!(conn.is_none(), "the server said close");
        assert_eq!(server.await.unwrap(), bytes);
    }

    #[test]
    fn sessions_share_one_request_per_image() {
        let t = HttpTransport::new("http://127.0.0.1:1/x".into(), "k".into(), false, 1).unwrap();
        let f = frame();
        let key = (f.image.bytes.as_ptr() as usize, f.image.bytes.len());
        // Sessions are clones of the transport.
        let (a, b) = (t.clone(), t.clone());
        assert!(Arc::ptr_eq(
            &a.shared_request(key, &f),
            &b.shared_request(key, &f)
        ));
        assert_eq!(t.requests.lock().unwrap().len(), 1);
    }

    /// Connections go to the checked addresses: the URL's host (a name
    /// that never resolves) is only the `Host` header.
    #[tokio::test]
    async fn connections_go_to_the_checked_addresses_not_a_fresh_lookup() {
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"detections\":[]}").await;
        let addr: SocketAddr = url["http://".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // `.invalid` never resolves (RFC 6761): only the given address works.
        let url = format!("http://loadtest.invalid:{}/x", addr.port());
        let t = HttpTransport::new(url, "k".into(), false, 1)
            .unwrap()
            .connect_to(vec![addr]);
        let (kind, _) = t
            .exchange(None, &Request::Memory(t.request_of(&frame())))
            .await;
        assert_eq!(
            kind,
            AnswerKind::Detections {
                boxes: 0,
                timings: None
            }
        );
        let got = String::from_utf8_lossy(&server.await.unwrap()).into_owned();
        let host = format!("\r\nHost: loadtest.invalid:{}\r\n", addr.port());
        assert!(got.contains(&host), "{got}");
    }

    /// A server that reads a request's head only, answers 429 and closes
    /// with the body unread (the gateway's refusals on the head).
    #[tokio::test]
    async fn a_refusal_before_the_body_is_read_is_counted_as_such() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            sock.write_all(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
            // Closed with most of the body unread: a reset for the sender.
        });
        let t = HttpTransport::new(format!("http://{addr}/x"), "k".into(), false, 1).unwrap();
        // Far more than the socket buffers hold: sending fails part way.
        let big = OutFrame {
            seq: 1,
            image: crate::frames::EncodedImage {
                name: "big.jpg".into(),
                codec: framegate_protocol::Codec::Jpeg,
                bytes: bytes::Bytes::from(vec![7u8; 32 << 20]),
            },
        };
        let (kind, conn) = t.exchange(None, &Request::new(t.request_of(&big))).await;
        assert_eq!(kind, AnswerKind::Dropped("http-429".into()));
        assert!(conn.is_none());
    }

    /// A kept-alive connection the server closed while idle is replaced
    /// before the request goes; the request reaches the server once.
    #[tokio::test]
    async fn an_idle_connection_closed_by_the_server_is_replaced_before_sending() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    // One answer, kept alive as far as the client knows,
                    // then closed.
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&chunk[..n]);
                        if got.ends_with(b"\xFF\xD9") {
                            break;
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"detections\":[]}",
                        )
                        .await;
                });
            }
        });
        let t = HttpTransport::new(format!("http://{addr}/x"), "k".into(), false, 1).unwrap();
        let req = Request::new(t.request_of(&frame()));
        let (kind, conn) = t.exchange(None, &req).await;
        assert_eq!(
            kind,
            AnswerKind::Detections {
                boxes: 0,
                timings: None
            }
        );
        let conn = conn.expect("kept alive");
        // Let the server's close arrive.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!conn.still_open());
        let (kind, _) = t.exchange(Some(conn), &req).await;
        assert_eq!(
            kind,
            AnswerKind::Detections {
                boxes: 0,
                timings: None
            }
        );
        assert_eq!(requests.load(Ordering::SeqCst), 2, "each request seen once");
    }

    /// One request to a server that answers `reply`: the outcome, and
    /// whether the connection was kept.
    async fn one_exchange(reply: &'static [u8]) -> (AnswerKind, bool) {
        let (url, _server) = serve_once(reply).await;
        let t = HttpTransport::new(url, "k".into(), false, 1).unwrap();
        let (kind, conn) = t
            .exchange(None, &Request::new(t.request_of(&frame())))
            .await;
        (kind, conn.is_some())
    }

    #[tokio::test]
    async fn bytes_past_an_answer_retire_the_connection() {
        let (kind, kept) =
            one_exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}EXTRA").await;
        assert!(matches!(kind, AnswerKind::Detections { .. }), "{kind:?}");
        assert!(!kept);
    }

    #[test]
    fn a_huge_chunk_size_is_an_error_not_an_overflow() {
        let huge = b"1\r\na\r\nffffffffffffffff\r\nb\r\n0\r\n\r\n";
        assert_eq!(chunked_once(huge), Err("answer: body too large"));
    }

    #[tokio::test]
    async fn a_cut_off_answer_is_an_error() {
        let (kind, kept) =
            one_exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"detections\"").await;
        assert_eq!(kind, AnswerKind::Error("answer: cut off".into()));
        assert!(!kept);
    }

    #[test]
    fn urls_and_keys_that_would_break_the_head_are_refused() {
        let new = |url: &str, key: &str| HttpTransport::new(url.into(), key.into(), false, 1);
        assert!(new("http://127.0.0.1:1/x", "k").is_ok());
        assert!(new("https://127.0.0.1:1/x", "k").is_err());
        assert!(new("http://127.0.0.1:1/x y", "k").is_err());
        assert!(new("http://127.0.0.1:1/x", "k\r\nX-Evil: 1").is_err());
        assert!(new("http:///x", "k").is_err());
    }
}
