//! One-shot HTTP: each frame is a `POST` (raw body, or a multipart field
//! named `image`); a session is a caller with up to `in_flight` requests
//! outstanding, each on its own kept-alive HTTP/1.1 connection.
//!
//! A lean client on hyper's HTTP/1.1 connection API, not reqwest: the load
//! client shares the machine's cores with the server it measures, so every
//! microsecond it spends per request is taken from the server. It keeps
//! connections per session (no shared pool lock), builds each image's
//! multipart body once and reuses it (the same `Bytes`, no copy per
//! request), and needs no task per request. A connection that fails is
//! dropped and the next request opens a new one.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use framegate_protocol::StageTimings;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{AnswerKind, BoxFuture, OutFrame, SessionEvent, SessionHandle, Transport};

/// The multipart boundary (never inside a JPEG/PNG body we send: checked
/// when the body is built).
const BOUNDARY: &str = "framegate-load-boundary-7f3a9c2e51d84b06";

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
    /// `host:port` to connect to.
    authority: String,
    /// Path and query of `url`.
    path: String,
    /// `Bearer <key>`.
    bearer: HeaderValue,
}

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
        let bearer = HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the key is not a valid header value")?;
        Ok(Self {
            url,
            key,
            multipart,
            in_flight: in_flight.max(1),
            authority,
            path,
            bearer,
        })
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

type Conn = SendRequest<Full<Bytes>>;

/// A request's outcome, and its connection when it can be used again.
type Done = (u64, AnswerKind, Option<Conn>);

impl HttpTransport {
    /// One session: sends each frame on an idle connection (opening one
    /// when none is idle) and reports each answer.
    async fn run(self, mut frames: mpsc::Receiver<OutFrame>, events: mpsc::Sender<SessionEvent>) {
        let mut idle: Vec<Conn> = Vec::new();
        let mut bodies: HashMap<(usize, usize), (Bytes, HeaderValue)> = HashMap::new();
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                f = frames.recv(), if open => match f {
                    Some(f) => {
                        let (body, content_type) = bodies
                            .entry((f.image.bytes.as_ptr() as usize, f.image.bytes.len()))
                            .or_insert_with(|| self.body_of(&f))
                            .clone();
                        let conn = idle.pop();
                        pending.push(self.post(conn, f.seq, body, content_type));
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

    /// The request body and its content type for one image.
    fn body_of(&self, f: &OutFrame) -> (Bytes, HeaderValue) {
        let img = &f.image;
        if !self.multipart {
            return (
                img.bytes.clone(),
                HeaderValue::from_static(img.media_type()),
            );
        }
        assert!(
            !img.bytes
                .windows(BOUNDARY.len())
                .any(|w| w == BOUNDARY.as_bytes()),
            "the multipart boundary occurs in image {}",
            img.name
        );
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{}\"\r\n\
             Content-Type: {}\r\n\r\n",
            img.name.replace(['"', '\r', '\n'], "_"),
            img.media_type()
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let mut body = Vec::with_capacity(head.len() + img.bytes.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&img.bytes);
        body.extend_from_slice(tail.as_bytes());
        let ct = HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}"))
            .expect("a valid header value");
        (Bytes::from(body), ct)
    }

    async fn connect(&self) -> Result<Conn, &'static str> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| "connect")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// Sends one frame's request and reads its answer.
    async fn post(
        &self,
        conn: Option<Conn>,
        seq: u64,
        body: Bytes,
        content_type: HeaderValue,
    ) -> Done {
        let (kind, conn) = self.exchange(conn, body, content_type).await;
        (seq, kind, conn)
    }

    async fn exchange(
        &self,
        conn: Option<Conn>,
        body: Bytes,
        content_type: HeaderValue,
    ) -> (AnswerKind, Option<Conn>) {
        // A kept-alive connection the server has closed since (its idle
        // timeout, `Connection: close`) is replaced by a new one.
        let reused = match conn {
            Some(mut c) if !c.is_closed() => c.ready().await.is_ok().then_some(c),
            _ => None,
        };
        let mut conn = match reused {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return (AnswerKind::Error(format!("request: {e}")), None),
            },
        };
        if conn.ready().await.is_err() {
            return (AnswerKind::Error("request: other".into()), None);
        }
        let mut req = hyper::Request::new(Full::new(body));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = match self.path.parse() {
            Ok(u) => u,
            Err(_) => return (AnswerKind::Error("request: bad path".into()), Some(conn)),
        };
        let h = req.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(&self.authority).expect("valid authority"),
        );
        h.insert(AUTHORIZATION, self.bearer.clone());
        h.insert(CONTENT_TYPE, content_type);
        let resp = match conn.send_request(req).await {
            Ok(r) => r,
            Err(_) => return (AnswerKind::Error("request: other".into()), None),
        };
        let status = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return (AnswerKind::Error("body: other".into()), None),
        };
        let kind = if status.as_u16() == 429 {
            AnswerKind::Dropped("http-429".into())
        } else if !status.is_success() {
            AnswerKind::Error(format!("http-{}", status.as_u16()))
        } else {
            parse_answer(&body)
        };
        (kind, Some(conn))
    }
}

/// The fields of an answer the harness reads; the rest is skipped without
/// building a `serde_json::Value` tree.
#[derive(serde::Deserialize)]
struct Answer {
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
    let a: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        // Valid JSON of another shape still counts, without boxes.
        Err(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => Answer {
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
}
