//! One-shot HTTP: each frame is a `POST` (raw body, or a multipart field
//! named `image`) on a shared connection pool; a session is a caller with
//! up to `in_flight` requests outstanding.

use std::time::Instant;

use anyhow::Result;
use framegate_protocol::StageTimings;
use tokio::sync::mpsc;

use super::{AnswerKind, BoxFuture, OutFrame, SessionEvent, SessionHandle, Transport};

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
    /// The shared client (connection pool).
    pub client: reqwest::Client,
    /// `url`, parsed once: parsing it per request (IDNA included) was a
    /// visible part of the client's profile.
    parsed: reqwest::Url,
}

impl HttpTransport {
    /// A transport with its own connection pool.
    pub fn new(url: String, key: String, multipart: bool, in_flight: u32) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?;
        let parsed = reqwest::Url::parse(&url)?;
        Ok(Self {
            parsed,
            url,
            key,
            multipart,
            in_flight: in_flight.max(1),
            client,
        })
    }
}

impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        "http"
    }

    fn open(&self, _id: usize) -> BoxFuture<'_, Result<SessionHandle>> {
        let credits = self.in_flight;
        let (frames_tx, mut frames_rx) = mpsc::channel::<OutFrame>(credits as usize * 4 + 16);
        let (events_tx, events_rx) = mpsc::channel::<SessionEvent>(credits as usize * 4 + 16);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(f) = frames_rx.recv().await {
                let this = this.clone();
                let events_tx = events_tx.clone();
                tokio::spawn(async move {
                    let kind = this.post(&f).await;
                    let _ = events_tx
                        .send(SessionEvent::Answer {
                            seq: f.seq,
                            kind,
                            at: Instant::now(),
                        })
                        .await;
                });
            }
        });
        Box::pin(async move {
            Ok(SessionHandle {
                frames: frames_tx,
                events: events_rx,
                credits,
            })
        })
    }
}

impl HttpTransport {
    async fn post(&self, f: &OutFrame) -> AnswerKind {
        let req = self.client.post(self.parsed.clone()).bearer_auth(&self.key);
        let req = if self.multipart {
            let part = reqwest::multipart::Part::stream(f.image.bytes.clone())
                .file_name(f.image.name.to_string())
                .mime_str(f.image.media_type())
                .expect("valid media type");
            req.multipart(reqwest::multipart::Form::new().part("image", part))
        } else {
            req.header("content-type", f.image.media_type())
                .body(f.image.bytes.clone())
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return AnswerKind::Error(format!("request: {}", short(&e))),
        };
        let status = resp.status();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return AnswerKind::Error(format!("body: {}", short(&e))),
        };
        if status.as_u16() == 429 {
            return AnswerKind::Dropped("http-429".into());
        }
        if !status.is_success() {
            return AnswerKind::Error(format!("http-{}", status.as_u16()));
        }
        parse_answer(&body)
    }
}

fn short(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
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
