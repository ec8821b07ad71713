//! One-shot HTTP: `POST /v1/detect`, `GET /v1/models`, `/healthz`, `/readyz`,
//! and the router that also carries the WebSocket stream endpoint.
//!
//! A detect request is authenticated first, checked against its rate limits
//! (`ratelimit`: 429 with the GCRA's `Retry-After`), its body read up to the limit,
//! its image header checked against the pixel budget, and only then queued —
//! or refused at once (429 with `Retry-After`) when the queue is full or the
//! frame would wait longer than `pipeline.max_queue_wait_ms`.
//! Errors answer JSON `{"error": {"code", "message", "retryable"}}` with the
//! status from the error taxonomy (429 and 503 carry `Retry-After`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metering::SessionMeter;
use crate::metrics::{self, Transport};
use crate::pipeline::decode::probe;
use crate::pipeline::{FrameResult, Readiness};

/// Builds the public router: HTTP endpoints and the WebSocket stream.
pub fn router(gw: Arc<Gateway>) -> Router {
    let body_limit = gw.config.http.max_body_bytes;
    Router::new()
        .route("/v1/detect", post(detect))
        .route("/v1/models", get(models))
        .route(
            "/v1/stream",
            get(super::ws::upgrade).connect(super::ws::upgrade),
        )
        .route("/v1/webtransport", get(webtransport))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/usage", get(crate::usage::http::usage))
        .route("/console", get(crate::web::console::redirect))
        .route("/console/", get(crate::web::console::root))
        .route("/console/{*path}", get(crate::web::console::file))
        .route("/v1/me", get(crate::admin::selfservice::me))
        .route(
            "/v1/keys",
            get(crate::admin::selfservice::list_keys)
                .post(crate::admin::selfservice::create_key)
                // The handlers read bodies themselves (`BodyBytes`,
                // `read_body`) with these limits; the layers hold them for
                // axum's own body extractors, should a route take one.
                .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT)),
        )
        .route(
            "/v1/keys/{id}",
            axum::routing::delete(crate::admin::selfservice::delete_key),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gw)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    retryable: bool,
    /// The `Retry-After` header in milliseconds, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u32>,
}

/// The HTTP answer for an error.
pub fn error_response(e: &GatewayError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code().as_str(),
            message: e.to_string(),
            retryable: e.retryable(),
            retry_after_ms: e.retry_after_ms(),
        },
    };
    let mut resp = (status, Json(body)).into_response();
    if let Some(after) = e.retry_after() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            // Whole seconds, rounded up: a client that waits this long is
            // admitted (a GCRA wait of 50 ms says 1).
            HeaderValue::from(after.as_micros().div_ceil(1_000_000).max(1) as u64),
        );
    }
    if matches!(e, GatewayError::Unauthorized) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The JSON answer of `/v1/detect`.
#[derive(Debug, Serialize)]
pub struct DetectResponse {
    /// Model that answered.
    pub model: String,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Boxes.
    pub detections: Vec<JsonDetection>,
    /// Stage timings in microseconds.
    pub timings_us: JsonTimings,
}

/// One box in JSON.
#[derive(Debug, Serialize)]
pub struct JsonDetection {
    /// Class index.
    pub class_id: u32,
    /// Class name.
    pub label: String,
    /// Confidence.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in frame pixels.
    #[serde(rename = "box")]
    pub xyxy: [f32; 4],
}

/// Stage timings in JSON.
#[derive(Debug, Serialize)]
pub struct JsonTimings {
    /// Waiting in the ingress queue and for a batch.
    pub queue: u32,
    /// Image decode.
    pub decode: u32,
    /// Resize and normalisation.
    pub preprocess: u32,
    /// Backend run of the batch.
    pub infer: u32,
    /// Box decoding and NMS.
    pub postprocess: u32,
    /// Request received → answer ready.
    pub total: u32,
}

fn to_json(model: &str, r: FrameResult) -> DetectResponse {
    DetectResponse {
        model: model.to_string(),
        width: r.width,
        height: r.height,
        detections: r
            .detections
            .into_iter()
            .map(|d| JsonDetection {
                class_id: d.class_id,
                label: d.label,
                score: d.score,
                xyxy: [d.x1, d.y1, d.x2, d.y2],
            })
            .collect(),
        timings_us: JsonTimings {
            queue: r.timings.queue_us,
            decode: r.timings.decode_us,
            preprocess: r.timings.preprocess_us,
            infer: r.timings.infer_us,
            postprocess: r.timings.postprocess_us,
            total: r.timings.total_us,
        },
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the image from the body: raw (`image/jpeg`, `image/png`,
/// `application/octet-stream`, or no type) or multipart field `image`.
/// The headers are checked first: a refusal from them (a declared length
/// over the limit, a content type not taken) leaves `body` unread, in
/// place, for [`linger`].
async fn read_image(
    parts: &axum::http::request::Parts,
    body: &mut Option<Body>,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let headers = &parts.headers;
    let content_type = header_str(headers, header::CONTENT_TYPE)
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    // A multipart body has room for the part headers and boundaries around
    // an image of up to `limit` bytes.
    let body_limit = if mime == "multipart/form-data" {
        limit.saturating_add(MULTIPART_ROOM)
    } else {
        limit
    };
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok())
    {
        if len > body_limit {
            return Err(GatewayError::PayloadTooLarge { size: len, limit });
        }
    }
    let charge = parts.extensions.get::<super::BodyCharge>().cloned();
    match mime.as_str() {
        "multipart/form-data" => {
            // The body is read whole (it is bounded by `limit` and the
            // room for part headers) and the image is a slice of it: no
            // copy of the image, no streaming parser state per chunk.
            let raw_type = header_str(headers, header::CONTENT_TYPE).unwrap_or("");
            let boundary = multipart_boundary(raw_type)?.to_owned();
            let body = read_body(body, charge, body_limit, limit).await?;
            let image = multipart_field(&body, boundary.as_bytes(), "image")?.ok_or_else(|| {
                GatewayError::BadRequest("multipart body has no field named \"image\"".into())
            })?;
            if image.len() > limit {
                return Err(GatewayError::PayloadTooLarge { size: image.len(), limit });
            }
            Ok(image)
        }
        "" | "image/jpeg" | "image/jpg" | "image/png" | "application/octet-stream" => {
            read_body(body, charge, limit, limit).await
        }
        other => Err(GatewayError::UnsupportedMedia(format!(
            "content type {other:?}; send image/jpeg, image/png or multipart/form-data with a field \"image\""
        ))),
    }
}

/// The most of a refused request's body [`linger`] reads, and for how long.
const LINGER_BYTES: usize = 32 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Bodies discarded at once, gateway-wide (128); past it a refused
/// request's body is dropped unread, as before lingering.
static LINGERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(128);

/// Reads and discards what is left of an HTTP/1 request's body that was
/// refused before it was read whole (a bad key, a declared length over the
/// limit; a chunked body found over the limit, or over the body budget,
/// while it was read), in the background, at most [`LINGER_BYTES`] within
/// [`LINGER_TIME`] (each gap also within `http.body_timeout_secs`), at most
/// 128 at once ([`LINGERING`]). The refusal is sent at once; a client still
/// sending its body then reads it, where closing with the body unread
/// would make the kernel answer the client's next bytes with a reset (and
/// most clients stop at the failed write, refusal unread). HTTP/2 needs
/// none: dropping the body resets that stream alone and the client reads
/// the answer. The discarded bytes are not charged to the body budget, and
/// what was read before the refusal is given back to it.
pub(crate) fn linger(version: axum::http::Version, body: Body, charge: Option<&super::BodyCharge>) {
    use http_body_util::BodyExt;
    if version > axum::http::Version::HTTP_11 || hyper::body::Body::is_end_stream(&body) {
        return;
    }
    let Ok(slot) = LINGERING.try_acquire() else {
        return;
    };
    if let Some(charge) = charge {
        charge.discard();
    }
    tokio::spawn(async move {
        let _slot = slot;
        let mut body = body;
        let until = tokio::time::Instant::now() + LINGER_TIME;
        let mut read = 0usize;
        while read <= LINGER_BYTES {
            match tokio::time::timeout_at(until, body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    });
}

/// Room in a multipart body beyond the image: part headers, boundaries,
/// small fields.
pub(crate) const MULTIPART_ROOM: usize = 16 << 10;

/// The whole body, at most `max` bytes (`limit` is the image limit the
/// refusal names). A body over `max` is 413; one that stopped arriving for
/// `http.body_timeout_secs` is 408; one that does not fit
/// `http.max_body_bytes_in_flight` is 429 `overloaded`; one that cannot be
/// read (cut off, malformed chunked encoding) is 400, not counted as too
/// large. The body leaves `body` once read, and on a 408 or 400; on a 413
/// or 429 its client may still be sending, so the rest stays in `body` for
/// the caller to [`linger`] on while the refusal is sent.
async fn read_body(
    body: &mut Option<Body>,
    charge: Option<super::BodyCharge>,
    max: usize,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let reading = body.as_mut().expect("the body is read once");
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let refused = loop {
        match reading.frame().await {
            None => break None,
            Some(Ok(frame)) => {
                // Trailers carry no bytes of the body.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                len = len.saturating_add(data.len());
                if len > max {
                    break Some(GatewayError::PayloadTooLarge {
                        size: max.saturating_add(1),
                        limit,
                    });
                }
                if !data.is_empty() {
                    chunks.push(data);
                }
            }
            Some(Err(e)) => break Some(body_error(&e)),
        }
    };
    if let Some(e) = refused {
        if !matches!(
            e,
            GatewayError::PayloadTooLarge { .. } | GatewayError::Overloaded(_)
        ) {
            *body = None;
        }
        return Err(e);
    }
    *body = None;
    let whole = if chunks.len() == 1 {
        chunks.pop().expect("one chunk")
    } else {
        let mut whole = bytes::BytesMut::with_capacity(len);
        for c in &chunks {
            whole.extend_from_slice(c);
        }
        whole.freeze()
    };
    // The image outlives the request when its client goes away while it
    // waits in the queue: its bytes stay charged until dropped.
    Ok(match &charge {
        Some(charge) => charge.hold(whole),
        None => whole,
    })
}

/// What a body that could not be read is answered.
fn body_error(e: &(dyn std::error::Error + 'static)) -> GatewayError {
    if let Some(stalled) = cause_of::<super::BodyStalled>(e) {
        GatewayError::RequestTimeout(stalled.to_string())
    } else if let Some(over) = cause_of::<super::BodyOverBudget>(e) {
        GatewayError::Overloaded(over.to_string())
    } else {
        GatewayError::BadRequest(format!("the request body could not be read: {e}"))
    }
}

/// The first error of type `T` in `e`'s chain of sources (`e` included).
fn cause_of<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(e), |c| c.source()).find_map(|c| c.downcast_ref::<T>())
}

/// The largest body of the JSON endpoints (self-service and admin key,
/// tenant and plan requests): their bodies are read before the caller is
/// authenticated, so the bound is small, not `http.max_body_bytes`.
pub const JSON_BODY_LIMIT: usize = 64 << 10;

/// A JSON endpoint's request body, whole, at most [`JSON_BODY_LIMIT`],
/// with the refusals answered like everywhere else (the JSON error,
/// `Connection: close` as the rest of the body is unread, and read in the
/// background by [`linger`] for a 413 or 429): 413 for a body over the
/// limit, 408 for one that stopped arriving ([`super::BodyStalled`]), 429
/// for one that does not fit the gateway's [`super::BodyBudget`], 400 for
/// one that cannot be read.
#[derive(Debug)]
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for BodyBytes {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared =
            header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
        let refuse = |e: GatewayError| {
            let mut resp = error_response(&e);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        };
        // A body declared larger than the limit is refused before any of
        // it is read (and before the gateway-wide body budget could call
        // it a busy moment: it never fits).
        if let Some(size) = declared.filter(|&n| n > JSON_BODY_LIMIT) {
            let (version, charge) = (
                req.version(),
                req.extensions().get::<super::BodyCharge>().cloned(),
            );
            linger(version, req.into_body(), charge.as_ref());
            return Err(refuse(GatewayError::PayloadTooLarge {
                size,
                limit: JSON_BODY_LIMIT,
            }));
        }
        let (version, charge) = (
            req.version(),
            req.extensions().get::<super::BodyCharge>().cloned(),
        );
        let mut body = Some(req.into_body());
        match read_body(&mut body, charge.clone(), JSON_BODY_LIMIT, JSON_BODY_LIMIT).await {
            Ok(b) => Ok(Self(b)),
            Err(e) => {
                if let Some(unread) = body {
                    linger(version, unread, charge.as_ref());
                }
                Err(refuse(match e {
                    GatewayError::PayloadTooLarge { .. } => GatewayError::PayloadTooLarge {
                        size: declared.unwrap_or(JSON_BODY_LIMIT + 1),
                        limit: JSON_BODY_LIMIT,
                    },
                    e => e,
                }))
            }
        }
    }
}

fn bad_multipart(why: &str) -> GatewayError {
    GatewayError::BadRequest(format!("bad multipart body: {why}"))
}

/// The `boundary` parameter of a `multipart/form-data` content type (as
/// sent: boundaries are case-sensitive), unquoted.
fn multipart_boundary(content_type: &str) -> Result<&str, GatewayError> {
    content_type
        .split(';')
        .skip(1)
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"'))
        })
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| bad_multipart("no boundary in the content type"))
}

/// The content of the field `name` of a `multipart/form-data` body
/// (RFC 7578) with `boundary`, as a slice of `body` (no copy); `None` when
/// no part has that name, an error when two parts have it.
fn multipart_field(
    body: &Bytes,
    boundary: &[u8],
    name: &str,
) -> Result<Option<Bytes>, GatewayError> {
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delim);
    // The first delimiter may open the body (no preamble, no CRLF before it).
    let mut at = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        finder
            .find(body)
            .ok_or_else(|| bad_multipart("no boundary in the body"))?
            + delim.len()
    };
    let mut found = None;
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(found); // the closing delimiter
        }
        // Transport padding, CRLF, then the part's headers up to a blank line.
        let line_end =
            memchr::memmem::find(rest, b"\r\n").ok_or_else(|| bad_multipart("truncated part"))?;
        if rest[..line_end].iter().any(|b| !matches!(b, b' ' | b'\t')) {
            return Err(bad_multipart("garbage after a boundary"));
        }
        let headers_at = at + line_end + 2;
        let headers_end = if body[headers_at..].starts_with(b"\r\n") {
            headers_at
        } else {
            headers_at
                + memchr::memmem::find(&body[headers_at..], b"\r\n\r\n")
                    .ok_or_else(|| bad_multipart("truncated part headers"))?
                + 2
        };
        let content_at = headers_end + 2;
        let end = content_at
            + finder
                .find(&body[content_at..])
                .ok_or_else(|| bad_multipart("unterminated part"))?;
        // Headers are UTF-8 (RFC 7578); a stray byte in another part's
        // filename does not spoil the request.
        let headers = String::from_utf8_lossy(&body[headers_at..headers_end]);
        if part_name(&headers).as_deref() == Some(name) {
            if found.is_some() {
                return Err(bad_multipart(&format!("field {name:?} given twice")));
            }
            found = Some(body.slice(content_at..end));
        }
        at = end + delim.len();
    }
}

/// The `name` parameter of a part's `Content-Disposition: form-data`
/// (quoted strings may hold `;` and `\"`: `filename="a;name=b"` is not a
/// name).
fn part_name(headers: &str) -> Option<String> {
    headers.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        disposition_params(value)
            .into_iter()
            .find_map(|(k, v)| k.eq_ignore_ascii_case("name").then_some(v))
    })
}

/// The `key=value` parameters after the disposition type, values unquoted
/// (a parameter without `=` has an empty value).
fn disposition_params(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    // After the disposition type.
    let Some((_, mut rest)) = value.split_once(';') else {
        return params;
    };
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return params;
        }
        let key_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_string();
        rest = &rest[key_end..];
        let Some(after_eq) = rest.strip_prefix('=') else {
            // `;`, or the end: a parameter without a value.
            rest = rest.strip_prefix(';').unwrap_or(rest);
            if !key.is_empty() {
                params.push((key, String::new()));
            }
            continue;
        };
        rest = after_eq.trim_start();
        let mut v = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => v.extend(chars.next().map(|(_, c)| c)),
                    c => v.push(c),
                }
            }
            // Anything up to the next `;` after the closing quote.
            rest = quoted[end..].split_once(';').map_or("", |(_, r)| r);
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            v = rest[..end].trim().to_string();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        params.push((key, v));
    }
}

async fn detect(
    State(gw): State<Arc<Gateway>>,
    Query(params): Query<HashMap<String, String>>,
    req: Request<Body>,
) -> Response {
    let received_at = Instant::now();
    metrics::frame_received(Transport::Http);
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    match detect_inner(&gw, params, &parts, &mut body, received_at).await {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => {
            if let Some(unread) = body {
                linger(
                    parts.version,
                    unread,
                    parts.extensions.get::<super::BodyCharge>(),
                );
            }
            tracing::debug!(error = %e, "detect refused");
            match &e {
                GatewayError::Unauthorized => metrics::auth_failure(Transport::Http),
                GatewayError::QueueFull => metrics::frame_dropped(Transport::Http, "queue-full"),
                GatewayError::QueueWait { .. } => {
                    metrics::frame_dropped(Transport::Http, "overloaded")
                }
                // Counted by the limiter, by limit.
                GatewayError::RateLimited { .. } => {}
                other => metrics::frame_failed(Transport::Http, other.code().as_str()),
            }
            let mut resp = error_response(&e);
            if matches!(
                e,
                GatewayError::Unauthorized
                    | GatewayError::Forbidden(_)
                    | GatewayError::UnknownModel(_)
                    | GatewayError::BudgetExhausted { .. }
                    | GatewayError::PayloadTooLarge { .. }
                    | GatewayError::RequestTimeout(_)
                    | GatewayError::RateLimited { .. }
                    | GatewayError::Overloaded(_)
            ) {
                // Refused before the body was read (or while it stalled):
                // the connection cannot be reused, so say so rather than let
                // the client race its close.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

/// `body` stays in place, unread or partly read, when the request is
/// refused before it is read whole (see [`linger`]).
async fn detect_inner(
    gw: &Gateway,
    params: HashMap<String, String>,
    parts: &axum::http::request::Parts,
    body: &mut Option<Body>,
    received_at: Instant,
) -> Result<DetectResponse, GatewayError> {
    let principal = gw
        .authenticate_header(header_str(&parts.headers, header::AUTHORIZATION))
        .await?;
    crate::auth::require_scope(&principal, crate::auth::Scope::Detect)?;
    let pipeline = gw.model(params.get("model").map_or("", String::as_str))?;
    crate::auth::require_model(&principal, &pipeline.model().spec.name)?;
    // Before the body is read: a refused request costs no image work, no
    // inference and no usage.
    gw.ratelimit
        .detect(&gw.rate_subject(&principal).await)
        .await?;
    let meter = SessionMeter::new(gw, &principal, &pipeline.model().spec.name);
    let reservation = meter.reserve()?;
    let body = read_image(parts, body, gw.config.http.max_body_bytes).await?;
    let frame = probe(None, 0, 0, body, &gw.frame_limits)?;
    let pixels = frame.pixels();
    let share = pipeline.tenant(&principal.tenant, principal.limits.effective_weight());
    let rx = pipeline.submit(&share, frame, received_at)?;
    let result = rx
        .await
        .map_err(|_| GatewayError::Internal("the pipeline dropped the frame".into()))??;
    metrics::frame_answered(
        Transport::Http,
        &pipeline.model().spec.name,
        &result.timings,
    );
    // The one metering point of HTTP: the 200 answer is ready to go.
    meter.delivered(reservation, pixels);
    Ok(to_json(&pipeline.model().spec.name, result))
}

/// `GET /metrics`: Prometheus text format. Open like the health endpoints:
/// bind the listener to a private address, or scrape through a proxy, when
/// the numbers must not be public.
async fn metrics_text(State(gw): State<Arc<Gateway>>) -> Response {
    for (name, p) in gw.models() {
        metrics::model_state(
            name,
            p.queue_depth(),
            p.queue_capacity(),
            p.readiness() == Readiness::Ready,
        );
        metrics::scheduler_state(name, p.active_tenants());
        let (expected, per_frame) = p.queue_wait();
        metrics::queue_wait_state(name, expected, per_frame);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::get().encode(),
    )
        .into_response()
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    default: bool,
    ready: bool,
    status: String,
    backend: Option<&'static str>,
    input: [u32; 2],
    resize: &'static str,
    decoder: &'static str,
    classes: usize,
    workers: usize,
    max_batch: usize,
    /// Frames run through the backend since start.
    frames_inferred: u64,
    /// Frames billed on streaming sessions (Detections delivered) since start.
    session_frames_billed: u64,
}

/// `GET /v1/webtransport`: where browsers open a WebTransport session and
/// the certificate hash to pin — `{"url", "port", "certificate_sha256"}`;
/// 404 while WebTransport is off. Public, like the console's files: it
/// tells nothing a port scan would not.
async fn webtransport(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let Some(info) = &gw.webtransport else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {
                "code": "not-found",
                "message": "WebTransport is off on this gateway ([webtransport] enabled)",
                "retryable": false,
            }})),
        )
            .into_response();
    };
    let host = header_str(&headers, header::HOST);
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(serde_json::json!({
            "url": info.url(host),
            "port": info.port,
            "certificate_sha256": info.certificate_sha256,
        })),
    )
        .into_response()
}

async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let principal = match gw
        .auth
        .authenticate_header(header_str(&headers, header::AUTHORIZATION))
        .await
    {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    // The models this key may use (its plan's list), as documented.
    let list: Vec<ModelInfo> = gw
        .models()
        .filter(|(name, _)| principal.limits.allows_model(name))
        .map(|(name, p)| {
            let spec = &p.model().spec;
            let readiness = p.readiness();
            ModelInfo {
                name: name.clone(),
                default: name == gw.default_model(),
                ready: readiness == Readiness::Ready,
                status: match readiness {
                    Readiness::Ready => "ready".into(),
                    Readiness::Loading => "loading".into(),
                    Readiness::Failed(f) => format!("failed: {f}"),
                },
                backend: p.backend_kind(),
                input: [spec.input.width, spec.input.height],
                resize: match spec.input.resize {
                    crate::backend::spec::ResizeMode::Stretch => "stretch",
                    crate::backend::spec::ResizeMode::Letterbox => "letterbox",
                },
                decoder: match spec.decoder {
                    crate::backend::spec::DecoderSpec::Nanodet { .. } => "nanodet",
                    crate::backend::spec::DecoderSpec::Yolov8 { .. } => "yolov8",
                },
                classes: p.model().labels.len(),
                workers: p.workers(),
                max_batch: p.max_batch(),
                frames_inferred: p.frames_inferred(),
                session_frames_billed: gw.sessions.frames_billed(name),
            }
        })
        .collect();
    // The default only when this key may use it.
    let default = principal
        .limits
        .allows_model(gw.default_model())
        .then(|| gw.default_model());
    Json(serde_json::json!({ "default": default, "models": list })).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    // Draining after SIGTERM: load balancers must stop sending at once.
    if gw.sessions.is_going_away() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match gw.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response(),
        Readiness::Failed(f) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {f}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(boundary: &str, parts: &[(&str, &[u8])]) -> Bytes {
        let mut b = b"preamble\r\n".to_vec();
        for (name, content) in parts {
            b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"f.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
            );
            b.extend_from_slice(content);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Bytes::from(b)
    }

    #[test]
    fn multipart_field_is_a_slice_of_the_body() {
        let img: &[u8] = b"\xff\xd8 bytes with\r\n--not-the-boundary\r\n inside";
        let b = body("XyZ-42", &[("other", b"x"), ("image", img)]);
        let got = multipart_field(&b, b"XyZ-42", "image").unwrap().unwrap();
        assert_eq!(&got[..], img);
        let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
        assert!(range.contains(&(got.as_ptr() as usize)), "copied");
        assert_eq!(multipart_field(&b, b"XyZ-42", "missing").unwrap(), None);
        // Without a preamble, and an empty part.
        let b = Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\n\r\n--b--",
        );
        assert_eq!(
            &multipart_field(&b, b"b", "image").unwrap().unwrap()[..],
            b""
        );
    }

    #[test]
    fn bad_multipart_bodies_are_refused() {
        for bad in [
            &b"no boundary at all"[..],
            b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nunterminated",
            b"--b\r\nContent-Disposition: form-data; name=image",
            b"--bjunk\r\n\r\nx\r\n--b--",
        ] {
            let e = multipart_field(&Bytes::copy_from_slice(bad), b"b", "image").unwrap_err();
            assert!(matches!(e, GatewayError::BadRequest(_)), "{e:?}");
        }
        assert_eq!(
            multipart_boundary("multipart/form-data; BOUNDARY=\"AbC\"").unwrap(),
            "AbC"
        );
        assert!(multipart_boundary("multipart/form-data").is_err());
        // The image twice: which one was meant is not ours to guess.
        let b = body("b", &[("image", b"one"), ("image", b"two")]);
        let e = multipart_field(&b, b"b", "image").unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn part_names_respect_quoting() {
        for (header, want) in [
            (
                "Content-Disposition: form-data; name=\"image\"",
                Some("image"),
            ),
            (
                "content-disposition: form-data;name=image;filename=a.jpg",
                Some("image"),
            ),
            // A `;` and a `name=` inside a quoted filename are not parameters.
            (
                "Content-Disposition: form-data; filename=\"x;name=image\"; name=\"other\"",
                Some("other"),
            ),
            (
                "Content-Disposition: form-data; name=\"a\\\"b\"",
                Some("a\"b"),
            ),
            // Parameters without a value, empty ones, an unterminated quote.
            (
                "Content-Disposition: form-data; foo; name=image",
                Some("image"),
            ),
            (
                "Content-Disposition: form-data;;name=\"image\"",
                Some("image"),
            ),
            ("Content-Disposition: form-data; name=\"ima", Some("ima")),
            ("Content-Disposition: form-data; name=", Some("")),
            ("Content-Disposition: form-data", None),
            ("Content-Type: image/jpeg", None),
            ("Content-Disposition: form-data; filename=f", None),
        ] {
            assert_eq!(part_name(header).as_deref(), want, "{header}");
        }
        // Non-UTF-8 bytes in another part's filename do not spoil the body.
        let mut raw = b"--b\r\nContent-Disposition: form-data; name=other; filename=\"\xe9t\xe9\"\r\n\r\nx\r\n".to_vec();
        raw.extend_from_slice(
            b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nIMG\r\n--b--",
        );
        let got = multipart_field(&Bytes::from(raw), b"b", "image")
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"IMG");
    }
}
