//! The framegate Rust client SDK.
//!
//! Streams camera or video frames to a framegate gateway over QUIC or
//! WebSocket and yields the detections as they arrive, or sends one image
//! over HTTP. The SDK speaks the protocol of `docs/protocol.md` for you:
//! Hello/Welcome, credits (sending waits for credit under the `block`
//! policy), in-order answers (exactly one per frame), acknowledgements, and
//! automatic reconnect with resume when the connection breaks — answers
//! computed meanwhile are delivered, frames the gateway never got are sent
//! again, nothing is billed twice. Given several gateways
//! ([`ClientOptions::endpoints`]), a session moves to the next one when its
//! gateway shuts down (the `going-away` notice, close 1001) and re-sends the
//! frames that had no answer; see [`Session::failovers`]. A message from the
//! gateway that does not decode ends the session with
//! [`ClientError::Protocol`]; one of a type newer than this SDK is skipped.
//! Errors say whether to retry and when ([`ClientError::is_retryable`],
//! [`ClientError::retry_after`]), over HTTP too.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use framegate_client::{Answer, Client, Image, SessionOptions};
//!
//! # async fn demo() -> Result<(), framegate_client::ClientError> {
//! // The fingerprint is the one `framegate serve` prints at start.
//! let client = Client::connect(
//!     "quic://127.0.0.1:8443?pin=3b5c…",
//!     "fg_dev_key",
//! ).await?;
//! // One-shot:
//! let d = client.detect(Image::from_file("dog.jpg")?).await?;
//! println!("{} objects", d.detections.len());
//! // Streaming:
//! let mut session = client.session(SessionOptions::default()).await?;
//! session.send(Image::from_file("dog.jpg")?).await?;
//! session.finish().await?;
//! while let Some(answer) = session.next().await {
//!     println!("{:?}", answer?);
//! }
//! # Ok(()) }
//! ```

mod error;
mod image;
mod link;
mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use framegate_protocol::{
    Codec, Detection, Detections, DropReason, ErrorCode, OverloadPolicy, StageTimings, Usage,
};
use futures_util::StreamExt;

pub use crate::error::ClientError;
pub use crate::image::Image;
use crate::link::{Endpoint, StreamTarget};
pub use crate::session::{Answer, FrameOptions, FrameSender, Session, SessionOptions};

/// Options for [`Client::connect_with`].
///
/// ```
/// let opts = framegate_client::ClientOptions::default()
///     .pin_sha256("ab".repeat(32));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pin: Option<String>,
    endpoints: Vec<String>,
}

impl ClientOptions {
    /// Accept only the certificate with this SHA-256 fingerprint (64 hex
    /// digits, colons allowed) — for the gateway's self-signed development
    /// certificate. Same as `?pin=` in the URL.
    pub fn pin_sha256(mut self, fingerprint: impl Into<String>) -> Self {
        self.pin = Some(fingerprint.into());
        self
    }

    /// More gateways of the same cluster (same keys, same models), tried in
    /// order after the URL given to [`Client::connect_with`]: a session
    /// opens on the first that answers, and when its gateway goes away
    /// (SIGTERM, rolling upgrade: the `going-away` notice and close 1001)
    /// it continues on the next one with a new session, re-sending every
    /// frame that had no answer — each frame still gets exactly one answer.
    /// Also when a broken connection cannot be resumed. The same `?pin=`
    /// rules apply to each URL; a pin given here applies to all.
    ///
    /// ```
    /// let opts = framegate_client::ClientOptions::default()
    ///     .endpoints(["ws://10.0.0.2:8080", "ws://10.0.0.3:8080"]);
    /// ```
    pub fn endpoints<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(urls.into_iter().map(Into::into));
        self
    }
}

/// A gateway to talk to: where it is, and the API key. Cheap to clone;
/// sessions opened from one client share its QUIC endpoint.
///
/// ```no_run
/// # async fn demo() -> Result<(), framegate_client::ClientError> {
/// use framegate_client::{Client, Image};
/// let client = Client::connect("http://127.0.0.1:8080", "fg_dev_key").await?;
/// let d = client.detect(Image::from_file("dog.jpg")?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    url: String,
    key: String,
    /// Where sessions go: the URL, then [`ClientOptions::endpoints`].
    streams: Arc<Vec<Endpoint>>,
    /// Base URL for one-shot HTTP (`None` for QUIC: one-shot goes over a
    /// short session).
    http: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Prepares a client for `url`:
    ///
    /// * `quic://HOST:PORT` — QUIC (ALPN `framegate/1`);
    /// * `ws://HOST:PORT` / `wss://HOST:PORT` — WebSocket at `/v1/stream`
    ///   (a path in the URL replaces it);
    /// * `http://HOST:PORT` — one-shot [`Client::detect`] at `/v1/detect`;
    ///   sessions use `ws://` on the same address.
    ///
    /// `?pin=SHA256` pins the server certificate (QUIC, WSS). QUIC binds its
    /// UDP socket here; other connections are opened by [`Client::session`]
    /// and [`Client::detect`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), framegate_client::ClientError> {
    /// let client = framegate_client::Client::connect("ws://127.0.0.1:8080", "fg_dev_key").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, key: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, key, ClientOptions::default()).await
    }

    /// [`Client::connect`] with options (a certificate pin).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), framegate_client::ClientError> {
    /// use framegate_client::{Client, ClientOptions};
    /// let fingerprint = "3b5c…"; // printed by `framegate serve`
    /// let client = Client::connect_with(
    ///     "quic://127.0.0.1:8443",
    ///     "fg_dev_key",
    ///     ClientOptions::default().pin_sha256(fingerprint),
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(
        url: &str,
        key: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let mut quic = None;
        let (stream, http) = stream_target(url, options.pin.as_deref(), &mut quic).await?;
        let mut streams = vec![Endpoint {
            url: url.to_string(),
            target: stream,
        }];
        for other in &options.endpoints {
            let (target, _) = stream_target(other, options.pin.as_deref(), &mut quic).await?;
            streams.push(Endpoint {
                url: other.clone(),
                target,
            });
        }
        Ok(Client {
            url: url.to_string(),
            key: key.to_string(),
            streams: Arc::new(streams),
            http,
        })
    }

    /// Opens a streaming session (QUIC, or WebSocket for `ws`/`wss`/`http`
    /// URLs).
    ///
    /// ```no_run
    /// # async fn demo(client: framegate_client::Client) -> Result<(), framegate_client::ClientError> {
    /// use framegate_client::{OverloadPolicy, SessionOptions};
    /// let session = client
    ///     .session(SessionOptions::default().policy(OverloadPolicy::DropOldest))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn session(&self, options: SessionOptions) -> Result<Session, ClientError> {
        Session::open(self.streams.clone(), &self.key, options).await
    }

    /// Detects objects in one image: `POST /v1/detect` for `http://` and
    /// `ws://` clients, a one-frame session over QUIC or WSS.
    ///
    /// ```no_run
    /// # async fn demo(client: framegate_client::Client) -> Result<(), framegate_client::ClientError> {
    /// let d = client.detect(framegate_client::Image::from_file("dog.jpg")?).await?;
    /// for obj in &d.detections {
    ///     println!("{} {:.2} [{}, {}, {}, {}]", obj.label, obj.score, obj.x1, obj.y1, obj.x2, obj.y2);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn detect(&self, image: Image) -> Result<Detections, ClientError> {
        match &self.http {
            Some(base) => self.detect_http(base, image).await,
            None => {
                let mut s = self.session(SessionOptions::default()).await?;
                s.send(image).await?;
                s.finish().await?;
                match s.next().await {
                    Some(Ok(Answer::Detections(d))) => Ok(d),
                    Some(Ok(Answer::Error {
                        code,
                        message,
                        retry_after,
                        ..
                    })) => Err(ClientError::Gateway {
                        code,
                        message,
                        retryable: code.default_retryable(),
                        retry_after,
                    }),
                    Some(Ok(other)) => Err(ClientError::Gateway {
                        code: ErrorCode::Overloaded,
                        message: format!("the frame was not computed: {other:?}"),
                        retryable: true,
                        retry_after: match other {
                            Answer::Dropped { retry_after, .. } => retry_after,
                            _ => None,
                        },
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err(ClientError::SessionClosed),
                }
            }
        }
    }

    async fn detect_http(&self, base: &str, image: Image) -> Result<Detections, ClientError> {
        let content_type = match image.codec {
            Codec::Jpeg => "image/jpeg",
            Codec::Png => "image/png",
            other => {
                return Err(ClientError::InvalidImage(format!(
                    "HTTP takes JPEG or PNG, not {}",
                    other.as_str()
                )))
            }
        };
        let url = format!("{base}/v1/detect");
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(image.payload)
            .send()
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| {
            ClientError::ConnectionLost(format!("reading the answer from {url}: {e}"))
        })?;
        if status != 200 {
            return Err(error::http_error(status, retry_after.as_deref(), &bytes));
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("bad JSON from {url}: {e}")))?;
        Ok(detections_from_json(&body))
    }
}

/// Where sessions for `url` go, and the base URL for one-shot HTTP. QUIC
/// URLs share one UDP socket (`quic`, bound by the first).
async fn stream_target(
    url: &str,
    pin: Option<&str>,
    quic: &mut Option<quinn::Endpoint>,
) -> Result<(StreamTarget, Option<String>), ClientError> {
    let parsed =
        url::Url::parse(url).map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
    let pin = match parsed
        .query_pairs()
        .find(|(k, _)| k == "pin")
        .map(|(_, v)| v.into_owned())
        .or(pin.map(str::to_string))
    {
        Some(p) => Some(tls::parse_pin(&p)?),
        None => None,
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = parsed.port_or_known_default();
    let hostport = |default: u16| match parsed.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]:{}", port.unwrap_or(default)),
        _ => format!("{host}:{}", port.unwrap_or(default)),
    };
    let path = |p: &str| {
        if parsed.path().is_empty() || parsed.path() == "/" {
            p.to_string()
        } else {
            parsed.path().to_string()
        }
    };
    Ok(match parsed.scheme() {
        "quic" => {
            let addr: SocketAddr = tokio::net::lookup_host(hostport(8443))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ClientError::Connect {
                    url: url.into(),
                    reason: "cannot resolve the host".into(),
                })?;
            let tls = tls::client_config(pin, &[link::ALPN])?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| ClientError::Protocol(format!("TLS for QUIC: {e}")))?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(Duration::from_secs(5)));
            config.transport_config(Arc::new(transport));
            let endpoint = match quic {
                Some(e) if e.local_addr().is_ok_and(|l| l.is_ipv6() == addr.is_ipv6()) => e.clone(),
                _ => {
                    let bind: SocketAddr = if addr.is_ipv6() {
                        "[::]:0".parse().expect("addr")
                    } else {
                        "0.0.0.0:0".parse().expect("addr")
                    };
                    let e = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect {
                        url: url.into(),
                        reason: format!("cannot bind a UDP socket: {e}"),
                    })?;
                    *quic = Some(e.clone());
                    e
                }
            };
            (
                StreamTarget::Quic {
                    endpoint,
                    addr,
                    server_name: host.clone(),
                    config,
                },
                None,
            )
        }
        "ws" | "http" => (
            StreamTarget::Ws {
                url: format!("ws://{}{}", hostport(80), path("/v1/stream")),
                tls: None,
            },
            Some(format!("http://{}", hostport(80))),
        ),
        "wss" => (
            StreamTarget::Ws {
                url: format!("wss://{}{}", hostport(443), path("/v1/stream")),
                tls: Some(Arc::new(tls::client_config(pin, &[])?)),
            },
            None,
        ),
        other => {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: scheme {other:?} is not quic, ws, wss or http"
            )))
        }
    })
}

fn detections_from_json(v: &serde_json::Value) -> Detections {
    let u32_of = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as u32;
    let t = &v["timings_us"];
    Detections {
        seq: 0,
        capture_ts_us: 0,
        width: u32_of(&v["width"]),
        height: u32_of(&v["height"]),
        model: v["model"].as_str().unwrap_or("").to_string(),
        detections: v["detections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        let b = |i: usize| d["box"][i].as_f64().unwrap_or(0.0) as f32;
                        Detection {
                            class_id: u32_of(&d["class_id"]),
                            label: d["label"].as_str().unwrap_or("").to_string(),
                            score: d["score"].as_f64().unwrap_or(0.0) as f32,
                            x1: b(0),
                            y1: b(1),
                            x2: b(2),
                            y2: b(3),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        timings: StageTimings {
            queue_us: u32_of(&t["queue"]),
            decode_us: u32_of(&t["decode"]),
            preprocess_us: u32_of(&t["preprocess"]),
            infer_us: u32_of(&t["infer"]),
            postprocess_us: u32_of(&t["postprocess"]),
            total_us: u32_of(&t["total"]),
        },
        usage: Usage::default(),
    }
}
