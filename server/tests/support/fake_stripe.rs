//! A Stripe-API-compatible test server for exactly the endpoint framegate
//! calls, `POST /v1/billing/meter_events`, following Stripe's documented
//! semantics:
//!
//! * `Authorization: Bearer <secret key>` is required (401 otherwise);
//! * the body is `application/x-www-form-urlencoded` (`event_name`,
//!   `payload[stripe_customer_id]`, `payload[value]`, `identifier`,
//!   `timestamp`);
//! * `identifier` is unique for 24 h: a reuse answers 400
//!   `invalid_request_error` "An event already exists with identifier …"
//!   with `Stripe-Should-Retry: false`;
//! * `timestamp` must be within the past 35 days and at most 5 minutes ahead;
//! * errors have Stripe's shape `{"error": {"type", "message", …}}`.
//!
//! Injectable faults: 429, 500, a hang past the client's timeout, slow
//! answers, and a success whose answer is lost (recorded, then the
//! connection hangs until the client gives up).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

pub const SECRET: &str = "sk_test_framegate_fake_0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 rate limited; nothing recorded.
    TooManyRequests,
    /// 500; nothing recorded.
    ServerError,
    /// Hangs for the duration before answering 500; nothing recorded (the
    /// client times out first).
    Hang(Duration),
    /// Answers normally after the delay.
    Slow(Duration),
    /// Records the event, then hangs for the duration (the client times out:
    /// its success is lost and it will retry the same identifier).
    LostSuccess(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub identifier: String,
    pub event_name: String,
    pub customer: String,
    pub value: u64,
    pub timestamp: i64,
    pub user_agent: String,
    pub received_ms: u128,
}

#[derive(Default)]
struct Inner {
    events: Vec<Event>,
    identifiers: HashMap<String, i64>,
    next_faults: VecDeque<Fault>,
    random: Option<(f64, Vec<Fault>)>,
    rng: u64,
    statuses: HashMap<u16, u64>,
    requests: u64,
}

#[derive(Clone)]
pub struct FakeStripe {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn stripe_error(status: u16, kind: &str, message: &str, param: Option<&str>) -> Response {
    let mut err = serde_json::json!({ "type": kind, "message": message });
    if let Some(p) = param {
        err["param"] = p.into();
    }
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        Json(serde_json::json!({ "error": err })),
    )
        .into_response();
    let retry = matches!(status, 409 | 429) || status >= 500;
    resp.headers_mut().insert(
        "stripe-should-retry",
        if retry { "true" } else { "false" }.parse().unwrap(),
    );
    resp
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let inner = Arc::new(Mutex::new(Inner {
            rng: 0x5eed_1234_abcd_0001,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/billing/meter_events", post(meter_event))
            .fallback(|| async {
                stripe_error(
                    404,
                    "invalid_request_error",
                    "Unrecognized request URL",
                    None,
                )
            })
            .with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeStripe { inner, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Faults for the next requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().next_faults.extend(faults);
    }

    /// From now on, each request fails with probability `rate` with one of
    /// `faults` (chosen at random); `None` turns it off.
    pub fn random_faults(&self, plan: Option<(f64, Vec<Fault>)>) {
        self.inner.lock().unwrap().random = plan;
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().unwrap().events.clone()
    }

    /// Sum of `value` per customer.
    pub fn totals(&self) -> HashMap<String, u64> {
        let mut t = HashMap::new();
        for e in self.events() {
            *t.entry(e.customer).or_default() += e.value;
        }
        t
    }

    /// Answers by status code.
    pub fn statuses(&self) -> HashMap<u16, u64> {
        self.inner.lock().unwrap().statuses.clone()
    }

    pub fn requests(&self) -> u64 {
        self.inner.lock().unwrap().requests
    }
}

fn next_fault(inner: &mut Inner) -> Option<Fault> {
    if let Some(f) = inner.next_faults.pop_front() {
        return Some(f);
    }
    let (rate, faults) = inner.random.clone()?;
    let mut r = inner.rng;
    r ^= r << 13;
    r ^= r >> 7;
    r ^= r << 17;
    inner.rng = r;
    let p = (r >> 11) as f64 / (1u64 << 53) as f64;
    (p < rate).then(|| faults[(r % faults.len() as u64) as usize])
}

async fn meter_event(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let fault = {
        let mut i = inner.lock().unwrap();
        i.requests += 1;
        next_fault(&mut i)
    };
    let resp = handle(&inner, &headers, &body, fault).await;
    *inner
        .lock()
        .unwrap()
        .statuses
        .entry(resp.status().as_u16())
        .or_default() += 1;
    resp
}

async fn handle(
    inner: &Arc<Mutex<Inner>>,
    headers: &HeaderMap,
    body: &str,
    fault: Option<Fault>,
) -> Response {
    match fault {
        Some(Fault::TooManyRequests) => {
            return stripe_error(
                429,
                "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                None,
            )
        }
        Some(Fault::ServerError) => {
            return stripe_error(500, "api_error", "An unknown error occurred", None)
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return stripe_error(500, "api_error", "An unknown error occurred", None);
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {SECRET}") {
        return stripe_error(
            401,
            "invalid_request_error",
            "Invalid API Key provided: sk_test_****",
            None,
        );
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return stripe_error(
            400,
            "invalid_request_error",
            "Invalid request: the body must be form-encoded",
            None,
        );
    }
    let form: HashMap<String, String> = match serde_urlencoded_parse(body) {
        Some(f) => f,
        None => return stripe_error(400, "invalid_request_error", "Invalid form body", None),
    };
    for required in [
        "event_name",
        "payload[stripe_customer_id]",
        "payload[value]",
    ] {
        if !form.contains_key(required) {
            return stripe_error(
                400,
                "invalid_request_error",
                &format!("Missing required param: {required}."),
                Some(required),
            );
        }
    }
    let value: u64 = match form["payload[value]"].parse() {
        Ok(v) => v,
        Err(_) => {
            return stripe_error(
                400,
                "invalid_request_error",
                "payload[value] must be a whole number",
                Some("payload[value]"),
            )
        }
    };
    let now = (now_ms() / 1000) as i64;
    let timestamp: i64 = form
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    if timestamp < now - 35 * 86_400 || timestamp > now + 300 {
        return stripe_error(
            400,
            "invalid_request_error",
            "Timestamp must be within the past 35 calendar days and no more than 5 minutes in the future.",
            Some("timestamp"),
        );
    }
    let identifier = form
        .get("identifier")
        .cloned()
        .unwrap_or_else(|| format!("auto_{}", inner.lock().unwrap().events.len()));
    let event = Event {
        identifier: identifier.clone(),
        event_name: form["event_name"].clone(),
        customer: form["payload[stripe_customer_id]"].clone(),
        value,
        timestamp,
        user_agent: headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        received_ms: now_ms(),
    };
    {
        let mut i = inner.lock().unwrap();
        let seen = i
            .identifiers
            .get(&identifier)
            .is_some_and(|&at| now - at < 86_400);
        if seen {
            drop(i);
            return stripe_error(
                400,
                "invalid_request_error",
                &format!("An event already exists with identifier {identifier}."),
                Some("identifier"),
            );
        }
        i.identifiers.insert(identifier.clone(), now);
        i.events.push(event.clone());
    }
    if let Some(Fault::LostSuccess(d)) = fault {
        tokio::time::sleep(d).await;
    }
    let mut payload = serde_json::Map::new();
    payload.insert("stripe_customer_id".into(), event.customer.clone().into());
    payload.insert("value".into(), value.to_string().into());
    Json(serde_json::json!({
        "object": "billing.meter_event",
        "created": now,
        "event_name": event.event_name,
        "identifier": identifier,
        "livemode": false,
        "payload": payload,
        "timestamp": timestamp,
    }))
    .into_response()
}

/// Decodes `a=b&c%5Bd%5D=e` (the bracket keys as Stripe's form encoding writes them).
fn serde_urlencoded_parse(body: &str) -> Option<HashMap<String, String>> {
    fn decode(s: &str) -> Option<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}
