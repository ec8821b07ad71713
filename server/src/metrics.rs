//! Every metric the gateway exports, in one place.
//!
//! Each metric is defined here once with its help text, and each event that
//! moves a metric has one function here (`frame_received`, `frame_answered`,
//! …), so call sites stay one line and no metric name is spelled anywhere
//! else. Labels are bounded: transport (`http`, `ws`, `quic`), model (from the
//! configuration), stage, drop reason and error code (closed enums); never a
//! session, key or frame id. Served at `GET /metrics` in the Prometheus text
//! format.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use framegate_protocol::{DropReason, ErrorCode, StageTimings};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The stages timed for every frame.
pub const STAGES: [&str; 6] = [
    "queue",
    "decode",
    "preprocess",
    "infer",
    "postprocess",
    "total",
];

/// Transports, as label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One-shot HTTP.
    Http,
    /// WebSocket sessions.
    Ws,
    /// QUIC sessions.
    Quic,
    /// WebTransport (HTTP/3) sessions.
    WebTransport,
}

impl Transport {
    /// Every transport, in [`Transport::index`] order.
    pub const ALL: [Transport; 4] = [
        Transport::Http,
        Transport::Ws,
        Transport::Quic,
        Transport::WebTransport,
    ];

    /// Position in [`Transport::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Quic => "quic",
            Transport::WebTransport => "webtransport",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpVersionLabel {
    http: String,
}

/// The `http` label's values on `framegate_ws_upgrades_total`.
const HTTP_VERSIONS: [&str; 2] = ["1.1", "2"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Results of a key store lookup (a cache miss), for
/// `framegate_auth_key_lookups_total`.
pub const KEY_LOOKUP_RESULTS: [&str; 3] = ["found", "unknown", "error"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    transport: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    transport: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    transport: String,
    limit: String,
}

/// Which rate limit refused something (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `frames_per_sec` / `burst`.
    Frames,
    /// `detect_per_minute`.
    Detect,
    /// `max_sessions` (counts refused sessions, not frames).
    Sessions,
}

impl LimitKind {
    /// Every kind.
    pub const ALL: [LimitKind; 3] = [LimitKind::Frames, LimitKind::Detect, LimitKind::Sessions];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Frames => "frames",
            LimitKind::Detect => "detect",
            LimitKind::Sessions => "sessions",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    transport: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResultLabels {
    /// The issuer's configured short name (bounded by the configuration).
    issuer: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelReasonLabels {
    model: String,
    reason: String,
}

/// Why the pipeline refused to queue a frame (the `reason` label of
/// `framegate_admission_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRefusal {
    /// Expected wait over `pipeline.max_queue_wait_ms`.
    QueueWait,
    /// `pipeline.queue_capacity` (with its headroom) reached.
    QueueFull,
    /// The tenant holds its weighted share while others wait.
    TenantShare,
}

impl AdmissionRefusal {
    /// Every reason, for the zero series.
    pub const ALL: [AdmissionRefusal; 3] = [
        AdmissionRefusal::QueueWait,
        AdmissionRefusal::QueueFull,
        AdmissionRefusal::TenantShare,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionRefusal::QueueWait => "queue-wait",
            AdmissionRefusal::QueueFull => "queue-full",
            AdmissionRefusal::TenantShare => "tenant-share",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 100 µs … ~3.3 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 16,
    ))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0])
}

/// Names of every metric family, as exported (counters carry `_total`).
/// The dashboard and alert rules may use only these; a test checks it.
pub const METRIC_NAMES: &[&str] = &[
    "framegate_build_info",
    "framegate_sessions_open",
    "framegate_sessions_total",
    "framegate_frames_received_total",
    "framegate_frames_answered_total",
    "framegate_frames_dropped_total",
    "framegate_frames_failed_total",
    "framegate_stage_duration_seconds",
    "framegate_batch_size",
    "framegate_ingress_queue_depth",
    "framegate_ingress_queue_capacity",
    "framegate_scheduler_active_tenants",
    "framegate_admission_refused_total",
    "framegate_expected_queue_wait_seconds",
    "framegate_service_seconds_per_frame",
    "framegate_inference_busy_seconds_total",
    "framegate_solo_batches_total",
    "framegate_cuda_preprocess_fallbacks_total",
    "framegate_model_ready",
    "framegate_auth_failures_total",
    "framegate_ws_upgrades_total",
    "framegate_http_body_bytes_in_flight",
    "framegate_http_body_budget_refusals_total",
    "framegate_auth_key_lookups_total",
    "framegate_rate_limited_frames_total",
    "framegate_ratelimit_store_errors_total",
    "framegate_usage_flush_lag_seconds",
    "framegate_usage_flush_failures_total",
    "framegate_billing_report_lag_seconds",
    "framegate_billing_report_failures_total",
    "framegate_oidc_jwks_fetches_total",
];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    sessions_open: Family<TransportLabel, Gauge>,
    sessions: Family<TransportLabel, Counter>,
    frames_received: Family<TransportLabel, Counter>,
    frames_answered: Family<AnsweredLabels, Counter>,
    frames_dropped: Family<ReasonLabels, Counter>,
    frames_failed: Family<CodeLabels, Counter>,
    stage_seconds: HistogramFamily<StageLabel>,
    batch_size: HistogramFamily<ModelLabel>,
    queue_depth: Family<ModelLabel, Gauge>,
    queue_capacity: Family<ModelLabel, Gauge>,
    active_tenants: Family<ModelLabel, Gauge>,
    admission_refused: Family<ModelReasonLabels, Counter>,
    expected_wait: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    service_per_frame: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    inference_busy: Family<ModelLabel, Counter<f64, AtomicU64>>,
    solo_batches: Family<ModelLabel, Counter>,
    cuda_fallbacks: Family<ModelLabel, Counter>,
    model_ready: Family<ModelLabel, Gauge>,
    auth_failures: Family<TransportLabel, Counter>,
    ws_upgrades: Family<HttpVersionLabel, Counter>,
    body_bytes_in_flight: Gauge,
    body_budget_refusals: Counter,
    key_lookups: Family<ResultLabel, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    oidc_jwks_fetches: Family<IssuerResultLabels, Counter>,
    /// Handles into `frames_received`, by [`Transport::index`]: the
    /// per-frame path counts without building a label or looking it up.
    received_by_transport: [Counter; 4],
    /// Handles into `stage_seconds`, in [`STAGES`] order.
    stage_by_index: [Histogram; 6],
    /// Rate-limit decisions the shared store (Redis) could not make; each
    /// one was decided by `ratelimit.on_store_error` instead.
    pub ratelimit_store_errors: Counter,
    /// Seconds since the oldest unflushed usage delta was recorded (0 when
    /// everything is flushed). Set by the usage flusher.
    pub usage_flush_lag: Gauge<f64, AtomicU64>,
    /// Failed usage-store flush attempts.
    pub usage_flush_failures: Counter,
    /// Seconds since the oldest closed, unreported billing window closed.
    pub billing_report_lag: Gauge<f64, AtomicU64>,
    /// Failed billing report attempts.
    pub billing_report_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("framegate");
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]);
        r.register("build", "Build information of the running gateway", info);

        let m = Metrics {
            registry: Registry::default(),
            sessions_open: Family::default(),
            sessions: Family::default(),
            frames_received: Family::default(),
            frames_answered: Family::default(),
            frames_dropped: Family::default(),
            frames_failed: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            active_tenants: Family::default(),
            admission_refused: Family::default(),
            expected_wait: Family::default(),
            service_per_frame: Family::default(),
            inference_busy: Family::default(),
            solo_batches: Family::default(),
            cuda_fallbacks: Family::default(),
            model_ready: Family::default(),
            auth_failures: Family::default(),
            ws_upgrades: Family::default(),
            body_bytes_in_flight: Gauge::default(),
            body_budget_refusals: Counter::default(),
            key_lookups: Family::default(),
            rate_limited: Family::default(),
            oidc_jwks_fetches: Family::default(),
            received_by_transport: Default::default(),
            stage_by_index: std::array::from_fn(|_| stage_histogram()),
            ratelimit_store_errors: Counter::default(),
            usage_flush_lag: Gauge::default(),
            usage_flush_failures: Counter::default(),
            billing_report_lag: Gauge::default(),
            billing_report_failures: Counter::default(),
        };
        r.register(
            "sessions_open",
            "Streaming sessions open now, by transport",
            m.sessions_open.clone(),
        );
        r.register(
            "sessions",
            "Streaming sessions opened, by transport",
            m.sessions.clone(),
        );
        r.register(
            "frames_received",
            "Frames received (admitted or not), by transport",
            m.frames_received.clone(),
        );
        r.register(
            "frames_answered",
            "Frames answered with detections and delivered (the billable count), by transport and model",
            m.frames_answered.clone(),
        );
        r.register(
            "frames_dropped",
            "Frames dropped before inference and reported to the client, by transport and reason",
            m.frames_dropped.clone(),
        );
        r.register(
            "frames_failed",
            "Frames answered with an error, by transport and error code",
            m.frames_failed.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Per-frame time in each stage: queue, decode, preprocess, infer, postprocess, total",
            m.stage_seconds.clone(),
        );
        r.register(
            "batch_size",
            "Frames per backend batch, by model",
            m.batch_size.clone(),
        );
        r.register(
            "ingress_queue_depth",
            "Frames waiting in the ingress queue, by model",
            m.queue_depth.clone(),
        );
        r.register(
            "ingress_queue_capacity",
            "Capacity of the ingress queue, by model",
            m.queue_capacity.clone(),
        );
        r.register(
            "scheduler_active_tenants",
            "Tenants with frames queued, among which the batcher shares by deficit round robin, by model",
            m.active_tenants.clone(),
        );
        r.register(
            "admission_refused",
            "Frames the pipeline refused to queue, by model and reason: queue-wait (expected wait over pipeline.max_queue_wait_ms), queue-full, tenant-share",
            m.admission_refused.clone(),
        );
        r.register(
            "expected_queue_wait_seconds",
            "Expected wait of a frame queued now (frames queued x service time per frame / workers), by model",
            m.expected_wait.clone(),
        );
        r.register(
            "service_seconds_per_frame",
            "Measured worker time per frame (the larger of the weighted mean over recent batches and the newest batch), by model; 0 until the first batch",
            m.service_per_frame.clone(),
        );
        r.register(
            "inference_busy_seconds",
            "Time inference workers spent on batches (decode, preprocess, infer, postprocess), by model",
            m.inference_busy.clone(),
        );
        r.register(
            "solo_batches",
            "Batches run alone on the solo session (every worker idle, all inference threads on one frame), by model",
            m.solo_batches.clone(),
        );
        r.register(
            "cuda_preprocess_fallbacks",
            "Batches preprocessed on the CPU because CUDA preprocessing failed on them (pipeline.preprocess = \"cuda\"), by model",
            m.cuda_fallbacks.clone(),
        );
        r.register(
            "model_ready",
            "1 when the model is loaded and warmed up, by model",
            m.model_ready.clone(),
        );
        r.register(
            "auth_failures",
            "Requests and sessions refused for a missing or bad credential, by transport",
            m.auth_failures.clone(),
        );
        r.register(
            "ws_upgrades",
            "WebSocket connections opened on /v1/stream, by HTTP version (1.1: GET with Upgrade; 2: extended CONNECT, RFC 8441)",
            m.ws_upgrades.clone(),
        );
        for http in HTTP_VERSIONS {
            drop(
                m.ws_upgrades
                    .get_or_create(&HttpVersionLabel { http: http.into() }),
            );
        }
        r.register(
            "http_body_bytes_in_flight",
            "Request-body bytes held by open HTTP requests (every listener), against http.max_body_bytes_in_flight",
            m.body_bytes_in_flight.clone(),
        );
        r.register(
            "http_body_budget_refusals",
            "HTTP request bodies refused because they did not fit http.max_body_bytes_in_flight (answered 429 overloaded)",
            m.body_budget_refusals.clone(),
        );
        r.register(
            "auth_key_lookups",
            "Key store lookups of issued keys missing from the in-process cache, by result (found, unknown, error)",
            m.key_lookups.clone(),
        );
        for result in KEY_LOOKUP_RESULTS {
            drop(m.key_lookups.get_or_create(&ResultLabel {
                result: result.into(),
            }));
        }
        r.register(
            "rate_limited_frames",
            "Frames (and, for limit=\"sessions\", sessions) refused by a rate limit, by transport and limit",
            m.rate_limited.clone(),
        );
        r.register(
            "oidc_jwks_fetches",
            "Fetches of an OIDC issuer's signing keys (discovery + JWKS), by issuer name and result (ok, error)",
            m.oidc_jwks_fetches.clone(),
        );
        r.register(
            "ratelimit_store_errors",
            "Rate-limit decisions the shared store (Redis) could not make, decided by ratelimit.on_store_error",
            m.ratelimit_store_errors.clone(),
        );
        r.register(
            "usage_flush_lag_seconds",
            "Age of the oldest usage delta not yet written to the usage store",
            m.usage_flush_lag.clone(),
        );
        r.register(
            "usage_flush_failures",
            "Failed writes of usage deltas to the usage store",
            m.usage_flush_failures.clone(),
        );
        r.register(
            "billing_report_lag_seconds",
            "Age of the oldest closed billing window not yet reported to Stripe",
            m.billing_report_lag.clone(),
        );
        r.register(
            "billing_report_failures",
            "Failed billing report attempts",
            m.billing_report_failures.clone(),
        );
        // Every bounded label set starts at zero, so rates and alerts work
        // before the first event and dashboards show every series.
        for tr in [
            Transport::Http,
            Transport::Ws,
            Transport::Quic,
            Transport::WebTransport,
        ] {
            let tl = t(tr);
            drop(m.frames_received.get_or_create(&tl));
            drop(m.auth_failures.get_or_create(&tl));
            for limit in LimitKind::ALL {
                drop(m.rate_limited.get_or_create(&LimitLabels {
                    transport: tr.as_str().into(),
                    limit: limit.as_str().into(),
                }));
            }
            if tr != Transport::Http {
                drop(m.sessions.get_or_create(&tl));
                drop(m.sessions_open.get_or_create(&tl));
            }
            for reason in DropReason::ALL {
                let _ = m.frames_dropped.get_or_create(&ReasonLabels {
                    transport: tr.as_str().into(),
                    reason: reason.as_str().into(),
                });
            }
            for code in ErrorCode::ALL {
                let _ = m.frames_failed.get_or_create(&CodeLabels {
                    transport: tr.as_str().into(),
                    code: code.as_str().into(),
                });
            }
        }
        // The metrics are shared handles (an `Arc` inside): the clones kept
        // here count into the same series the registry exports.
        let received_by_transport =
            Transport::ALL.map(|tr| m.frames_received.get_or_create(&t(tr)).clone());
        let stage_by_index = STAGES.map(|stage| {
            m.stage_seconds
                .get_or_create(&StageLabel {
                    stage: stage.into(),
                })
                .clone()
        });
        Metrics {
            registry: r,
            received_by_transport,
            stage_by_index,
            ..m
        }
    }

    /// Creates the per-model series (at zero) for the configured models.
    pub fn init_models<'a>(&self, models: impl IntoIterator<Item = &'a str>) {
        for model in models {
            let label = ModelLabel {
                model: model.into(),
            };
            drop(self.batch_size.get_or_create(&label));
            drop(self.inference_busy.get_or_create(&label));
            drop(self.solo_batches.get_or_create(&label));
            drop(self.cuda_fallbacks.get_or_create(&label));
            drop(self.queue_depth.get_or_create(&label));
            drop(self.queue_capacity.get_or_create(&label));
            drop(self.active_tenants.get_or_create(&label));
            drop(self.expected_wait.get_or_create(&label));
            drop(self.service_per_frame.get_or_create(&label));
            for reason in AdmissionRefusal::ALL {
                drop(self.admission_refused.get_or_create(&ModelReasonLabels {
                    model: model.into(),
                    reason: reason.as_str().into(),
                }));
            }
            drop(self.model_ready.get_or_create(&label));
            for tr in [
                Transport::Http,
                Transport::Ws,
                Transport::Quic,
                Transport::WebTransport,
            ] {
                let _ = self.frames_answered.get_or_create(&AnsweredLabels {
                    transport: tr.as_str().into(),
                    model: model.into(),
                });
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn t(transport: Transport) -> TransportLabel {
    TransportLabel {
        transport: transport.as_str().into(),
    }
}

/// A streaming session opened; the guard marks it closed when dropped.
pub fn session_opened(transport: Transport) -> SessionGuard {
    let m = get();
    m.sessions.get_or_create(&t(transport)).inc();
    m.sessions_open.get_or_create(&t(transport)).inc();
    SessionGuard { transport }
}

/// Keeps `framegate_sessions_open` right whatever way a session ends.
#[derive(Debug)]
pub struct SessionGuard {
    transport: Transport,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        get().sessions_open.get_or_create(&t(self.transport)).dec();
    }
}

/// A frame (or one-shot image) arrived.
pub fn frame_received(transport: Transport) {
    get().received_by_transport[transport.index()].inc();
}

/// A frame's detections were delivered.
pub fn frame_answered(transport: Transport, model: &str, timings: &StageTimings) {
    answered_counter(transport, model).answered(timings);
}

/// The `frames_answered` series of one transport and model, looked up once
/// (a session holds one) so each answer costs no label lookup.
#[derive(Debug, Clone)]
pub struct AnsweredCounter(Counter);

/// The [`AnsweredCounter`] of `transport` and `model`.
pub fn answered_counter(transport: Transport, model: &str) -> AnsweredCounter {
    AnsweredCounter(
        get()
            .frames_answered
            .get_or_create(&AnsweredLabels {
                transport: transport.as_str().into(),
                model: model.into(),
            })
            .clone(),
    )
}

impl AnsweredCounter {
    /// A frame's detections were delivered on this series' transport and
    /// model ([`frame_answered`]).
    pub fn answered(&self, timings: &StageTimings) {
        self.0.inc();
        observe_stages(timings);
    }
}

fn observe_stages(timings: &StageTimings) {
    let m = get();
    let values = [
        timings.queue_us,
        timings.decode_us,
        timings.preprocess_us,
        timings.infer_us,
        timings.postprocess_us,
        timings.total_us,
    ];
    for (h, us) in m.stage_by_index.iter().zip(values) {
        h.observe(f64::from(us) / 1e6);
    }
}

/// A frame was dropped before inference (`reason` is the protocol's
/// `DropReason` name).
pub fn frame_dropped(transport: Transport, reason: &str) {
    get()
        .frames_dropped
        .get_or_create(&ReasonLabels {
            transport: transport.as_str().into(),
            reason: reason.into(),
        })
        .inc();
}

/// A frame was answered with an error (`code` is the protocol's `ErrorCode` name).
pub fn frame_failed(transport: Transport, code: &str) {
    get()
        .frames_failed
        .get_or_create(&CodeLabels {
            transport: transport.as_str().into(),
            code: code.into(),
        })
        .inc();
}

/// A key store lookup (cache miss) ended with `result`, one of
/// [`KEY_LOOKUP_RESULTS`].
pub fn key_lookup(result: &'static str) {
    get()
        .key_lookups
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .inc();
}

/// A credential was refused.
pub fn auth_failure(transport: Transport) {
    get().auth_failures.get_or_create(&t(transport)).inc();
}

/// A WebSocket connection was opened on `/v1/stream`, over HTTP/2 (RFC
/// 8441) or HTTP/1.1.
pub fn ws_upgrade(http2: bool) {
    get()
        .ws_upgrades
        .get_or_create(&HttpVersionLabel {
            http: HTTP_VERSIONS[usize::from(http2)].into(),
        })
        .inc();
}

/// Request-body bytes held by open HTTP requests changed by `delta`.
pub fn body_bytes_held(delta: i64) {
    get().body_bytes_in_flight.inc_by(delta);
}

/// A request body did not fit `http.max_body_bytes_in_flight`.
pub fn body_budget_refused() {
    get().body_budget_refusals.inc();
}

/// `n` frames (or a session) were refused by a rate limit.
pub fn rate_limited(transport: Transport, limit: LimitKind, n: u64) {
    get()
        .rate_limited
        .get_or_create(&LimitLabels {
            transport: transport.as_str().into(),
            limit: limit.as_str().into(),
        })
        .inc_by(n);
}

/// Starts the JWKS fetch series of each configured OIDC issuer at zero.
pub fn init_oidc_issuers<'a>(names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        for result in ["ok", "error"] {
            drop(get().oidc_jwks_fetches.get_or_create(&IssuerResultLabels {
                issuer: name.into(),
                result: result.into(),
            }));
        }
    }
}

/// An OIDC issuer's signing keys were fetched (`ok`) or a fetch failed.
/// `issuer` is the configured short name, never a URL from a token.
pub fn oidc_jwks_fetch(issuer: &str, ok: bool) {
    get()
        .oidc_jwks_fetches
        .get_or_create(&IssuerResultLabels {
            issuer: issuer.into(),
            result: if ok { "ok" } else { "error" }.into(),
        })
        .inc();
}

/// A backend batch ran; `busy` is the worker's time on it.
pub fn batch_ran(model: &str, size: usize, busy: Duration, solo: bool) {
    let m = get();
    let label = ModelLabel {
        model: model.into(),
    };
    if solo {
        m.solo_batches.get_or_create(&label).inc();
    }
    m.batch_size.get_or_create(&label).observe(size as f64);
    m.inference_busy
        .get_or_create(&label)
        .inc_by(busy.as_secs_f64());
}

/// A batch's CUDA preprocessing failed and the CPU did it instead.
pub fn cuda_fallback(model: &str) {
    get()
        .cuda_fallbacks
        .get_or_create(&ModelLabel {
            model: model.into(),
        })
        .inc();
}

/// Scrape-time state of a model's pipeline.
pub fn model_state(model: &str, queue_depth: usize, queue_capacity: usize, ready: bool) {
    let m = get();
    let label = ModelLabel {
        model: model.into(),
    };
    m.queue_depth.get_or_create(&label).set(queue_depth as i64);
    m.queue_capacity
        .get_or_create(&label)
        .set(queue_capacity as i64);
    m.model_ready.get_or_create(&label).set(i64::from(ready));
}

/// The pipeline of `model` refused to queue a frame.
pub fn admission_refused(model: &str, reason: AdmissionRefusal) {
    get()
        .admission_refused
        .get_or_create(&ModelReasonLabels {
            model: model.into(),
            reason: reason.as_str().into(),
        })
        .inc();
}

/// Scrape-time state of a model's latency budget: the expected wait of a
/// frame queued now and the measured service time per frame (zero until
/// the first batch).
pub fn queue_wait_state(model: &str, expected_wait: Duration, per_frame: Duration) {
    let m = get();
    let label = ModelLabel {
        model: model.into(),
    };
    m.expected_wait
        .get_or_create(&label)
        .set(expected_wait.as_secs_f64());
    m.service_per_frame
        .get_or_create(&label)
        .set(per_frame.as_secs_f64());
}

/// Scrape-time state of a model's fair scheduler: tenants with frames
/// queued. (Per-tenant depths are not exported: tenant names are not a
/// bounded label set.)
pub fn scheduler_state(model: &str, active_tenants: usize) {
    let label = ModelLabel {
        model: model.into(),
    };
    get()
        .active_tenants
        .get_or_create(&label)
        .set(active_tenants as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_name_is_exported_and_nothing_else() {
        // Touch every labelled family once so it appears in the output.
        let _g = session_opened(Transport::Ws);
        frame_received(Transport::Http);
        frame_answered(Transport::Http, "m", &StageTimings::default());
        frame_dropped(Transport::Ws, "queue-full");
        frame_failed(Transport::Ws, "invalid-image");
        auth_failure(Transport::Http);
        oidc_jwks_fetch("kc", true);
        rate_limited(Transport::Http, LimitKind::Detect, 1);
        get().ratelimit_store_errors.inc();
        batch_ran("m", 4, Duration::from_millis(3), true);
        cuda_fallback("m");
        model_state("m", 1, 256, true);
        scheduler_state("m", 2);
        admission_refused("m", AdmissionRefusal::QueueWait);
        queue_wait_state("m", Duration::from_millis(40), Duration::from_millis(5));
        let text = get().encode();
        for name in METRIC_NAMES {
            let sampled = text.lines().any(|l| {
                l.strip_prefix(name).is_some_and(|rest| {
                    rest.starts_with(' ')
                        || rest.starts_with('{')
                        || rest.starts_with("_bucket")
                        || rest.starts_with("_sum")
                        || rest.starts_with("_count")
                })
            });
            assert!(sampled, "{name} is declared but not exported:\n{text}");
        }
        // Every exported family is declared (TYPE lines name counters
        // without `_total` and info metrics without `_info`).
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let family = family.split_whitespace().next().unwrap();
            assert!(
                METRIC_NAMES.iter().any(|n| n.starts_with(family)),
                "{family} is exported but not declared in METRIC_NAMES"
            );
        }
        for l in text.lines().filter(|l| l.starts_with("# HELP")) {
            assert!(
                l.split_whitespace().count() > 3,
                "metric without help text: {l}"
            );
        }
    }
}
