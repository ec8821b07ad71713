//! The one configuration file, `framegate.toml`.
//!
//! Every field has a documented default, so the gateway runs with no file at
//! all. The whole file is validated before start-up and every problem is
//! reported at once (not just the first). Command-line flags and environment
//! variables override single fields (see `main.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod backend;
pub mod reference;
pub mod tenancy;
pub use backend::{BackendConfig, BackendKind, TritonConfig};
pub use tenancy::{PlanLimits, TenantConfig};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners for the public HTTP/WebSocket side.
    pub http: HttpConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Limits applied to every frame and message before any image work.
    pub limits: LimitsConfig,
    /// Session behaviour (WebSocket and, later, QUIC).
    pub session: SessionConfig,
    /// The ingress queue, batcher and inference workers.
    pub pipeline: PipelineConfig,
    /// ONNX Runtime.
    pub onnxruntime: OnnxRuntimeConfig,
    /// Which backend runs the models (`onnx`, a remote `triton` tier, or `synthetic`).
    pub backend: BackendConfig,
    /// The synthetic backend (`[backend] kind = "synthetic"`).
    pub synthetic: crate::backend::synthetic::SyntheticConfig,
    /// Models served. Empty means the bundled NanoDet-g model.
    pub models: Vec<ModelConfig>,
    /// Which model answers requests that name none. Default: the first model.
    pub default_model: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// QUIC listener.
    pub quic: QuicConfig,
    /// WebTransport (HTTP/3) listener for browsers (the console).
    pub webtransport: WebTransportConfig,
    /// Certificates for QUIC (and TLS in general).
    pub tls: TlsConfig,
    /// Folder for state the gateway keeps (the development certificate).
    /// Default `$XDG_DATA_HOME/framegate`, else `~/.local/share/framegate`.
    pub data_dir: Option<PathBuf>,
    /// Where the gateway keeps local state.
    pub storage: StorageConfig,
    /// Usage metering and budgets.
    pub metering: MeteringConfig,
    /// Stripe billing.
    pub billing: BillingConfig,
    /// The admin API (its own listener; see docs/operations.md, "Admin API").
    pub admin: AdminConfig,
    /// Plans: named sets of limits (see `config::tenancy`).
    pub plans: std::collections::BTreeMap<String, PlanLimits>,
    /// Tenants: their plan and overrides.
    pub tenants: std::collections::BTreeMap<String, TenantConfig>,
    /// Where rate-limit state lives (the limits themselves are in `[plans]`).
    pub ratelimit: RateLimitConfig,
}

impl Config {
    /// A tenant's effective limits: its plan with its overrides.
    pub fn tenant_limits(&self, tenant: &str) -> PlanLimits {
        tenancy::resolve(&self.plans, &self.tenants, tenant)
    }
}

/// HTTP and WebSocket listener.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for HTTP (`/v1/detect`, `/v1/models`, health) and WebSocket
    /// (`/v1/stream`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted on `/v1/detect`, in bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most request-body bytes open HTTP requests together may hold (the
    /// HTTP and HTTPS listeners together; the admin listener has a budget
    /// of its own of the same size), from the moment they arrive until
    /// their handler is done with them. A body that would take the total
    /// over it is refused with 429 (`overloaded`, retryable; HTTP/1.1: the
    /// connection closed): at once when its declared length does not fit,
    /// else when the bytes that do not fit arrive. Without it, many large
    /// uploads at once could make the gateway hold `max_body_bytes` each,
    /// as many as clients open. At least `max_body_bytes` + 16 KiB (a
    /// multipart body's room for its part headers). Default: 256 MiB (16
    /// uploads of the largest size, about 1,600 of a 160 KB camera frame),
    /// or `max_body_bytes` + 16 KiB when that is more.
    pub max_body_bytes_in_flight: Option<usize>,
    /// Seconds a new connection gets to send its first bytes (TLS: to finish
    /// its handshake), and a WebSocket client its `Hello`. Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds an HTTP/1.1 connection may wait for the next request's
    /// headers, and take to send them: an idle keep-alive connection is
    /// closed after this, and so is a client sending its headers slowly.
    /// Keep a load balancer's idle timeout towards the gateway below it
    /// (AWS ALB: 60 s by default), or it may reuse a connection the gateway
    /// has just closed. HTTP/2 connections are pinged at this interval, and
    /// closed when a ping goes unanswered or when no request (nor a
    /// WebSocket over HTTP/2) has been open on them for this long. Default
    /// 75.
    pub keepalive_timeout_secs: u64,
    /// Seconds a request body may go without a byte arriving while the
    /// gateway reads it: a client that stops sending half-way is answered
    /// 408 (HTTP/1.1: and its connection closed; HTTP/2: the stream ends),
    /// instead of holding the request and its buffer. Like nginx's
    /// `client_body_timeout`, it bounds each gap, not the whole upload, so
    /// a large image on a slow link still arrives. Default 30.
    pub body_timeout_secs: u64,
    /// Seconds a WebSocket session may go without a byte from its client
    /// before the gateway takes the connection for dead (a client that
    /// vanished without a close: a NAT entry gone, a network dropped) and
    /// detaches the session, which then waits for a resume as after any
    /// broken connection. A quiet connection is pinged every third of this
    /// and every WebSocket client answers pings by itself, so only a dead
    /// one (or a client that stopped reading) reaches it. 0 turns it off.
    /// Default 60.
    pub ws_idle_timeout_secs: u64,
    /// After SIGTERM/SIGINT, seconds the gateway waits for open requests and
    /// sessions to finish before it closes them and exits (usage is flushed
    /// after that). Sessions drain on their own first: each gets the
    /// `going-away` notice, answers the frames it admitted and closes with
    /// 1001, so this is a bound, rarely reached. Keep it below the
    /// orchestrator's grace period (the Kubernetes manifests use 30 s).
    /// Default 20.
    pub shutdown_timeout_secs: u64,
    /// Also serve HTTP and WebSocket over TLS (HTTPS/WSS) here, with the
    /// `[tls]` certificate (or the development certificate). Default: off.
    pub tls_listen: Option<SocketAddr>,
}

/// `http.max_body_bytes_in_flight` when not set: 256 MiB.
pub const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 256 << 20;

impl HttpConfig {
    /// The request-body bytes open requests may hold together:
    /// `max_body_bytes_in_flight`, or its default (see there).
    pub fn body_bytes_in_flight(&self) -> usize {
        self.max_body_bytes_in_flight.unwrap_or_else(|| {
            DEFAULT_BODY_BYTES_IN_FLIGHT.max(
                self.max_body_bytes
                    .saturating_add(crate::transport::http::MULTIPART_ROOM),
            )
        })
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: 16 << 20,
            max_body_bytes_in_flight: None,
            handshake_timeout_secs: 10,
            keepalive_timeout_secs: 75,
            body_timeout_secs: 30,
            ws_idle_timeout_secs: 60,
            shutdown_timeout_secs: 20,
            tls_listen: None,
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static API keys, each with the tenant it belongs to. When empty, the
    /// gateway also accepts a single development key: `FRAMEGATE_DEV_KEY`
    /// from the environment, or (when no `oidc` issuer is configured) a
    /// random key printed once at start-up.
    /// Issued keys (`framegate keys create`, the admin API) live in the key
    /// store, not here.
    pub keys: Vec<ApiKeyConfig>,
    /// Trusted OIDC issuers whose bearer JWTs are accepted besides API keys
    /// (`[[auth.oidc]]`, see `auth::oidc`). Default: none.
    pub oidc: Vec<crate::auth::oidc::OidcIssuerConfig>,
    /// Where issued API keys, and tenants and plans set at run time, live:
    /// `embedded` (`keys.redb` in `storage.data_dir`, one gateway) or
    /// `redis` (shared by a cluster). Default `embedded`.
    pub store: String,
    /// Redis URL when `store = "redis"`. Default: `metering.redis_url`.
    pub redis_url: Option<String>,
    /// Seconds a looked-up key (or tenant, or plan) is cached in the
    /// process. A key revoked on any gateway is refused by every gateway
    /// within this bound. Default 5.
    pub cache_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            oidc: Vec::new(),
            store: "embedded".into(),
            redis_url: None,
            cache_ttl_secs: 5,
        }
    }
}

/// The admin API's listener (keys, tenants, plans, any tenant's usage).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; never the public one. Keep it on a
    /// private interface. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Run the admin listener at all (it also stays off while no admin
    /// credential exists). Default true.
    pub enabled: bool,
    /// SHA-256 (hex) of the admin token (`printf %s TOKEN | sha256sum`); the
    /// token itself may instead come from `FRAMEGATE_ADMIN_TOKEN`. Keys with
    /// the `admin` scope are admin credentials too.
    pub token_sha256: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".parse().expect("valid default address"),
            enabled: true,
            token_sha256: None,
        }
    }
}

/// One static API key.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Tenant the key belongs to.
    pub tenant: String,
    /// SHA-256 of the key, hex encoded (`printf %s KEY | sha256sum`). The
    /// key itself never appears in the configuration.
    pub sha256: String,
    /// What the key may do. Default: stream, detect, usage.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<crate::auth::Scope>,
}

fn default_scopes() -> Vec<crate::auth::Scope> {
    crate::auth::Scope::DEFAULT.to_vec()
}

/// Limits checked before any image is decoded.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest protocol message (WebSocket message), in bytes. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Pixel budget per frame (width × height), checked from the image header
    /// before decoding. Default 40 megapixels.
    pub max_frame_pixels: u64,
    /// Largest accepted width or height, in pixels. Default 16384.
    pub max_frame_side: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            max_frame_pixels: 40_000_000,
            max_frame_side: 16_384,
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Credits granted in `Welcome`: the most frames a session may have in
    /// flight. Default 8. Size it to the client's frame rate times the
    /// expected latency; more only adds queueing.
    pub credits: u32,
    /// Frames of one session in the shared pipeline at once; the rest wait
    /// in the session, where `drop-oldest` / `latest-only` can still drop
    /// them. Default 2 (enough to keep two workers busy for one session).
    pub max_in_pipeline: u32,
    /// Seconds a session whose connection broke keeps computing and waits
    /// for a resume (Hello with its token); also a session that said `Bye`
    /// whose client has not confirmed the end (docs/protocol.md, "Ending").
    /// Default 30.
    pub resume_grace_secs: u64,
    /// Answers kept per session until the client acknowledges them, so a
    /// resume can re-send them. When full the oldest is forgotten and a
    /// resume that needs it is refused. Default 64.
    pub resume_buffer: usize,
    /// Sessions alive at once (attached or waiting for a resume); more are
    /// refused with `overloaded`. Default 10000.
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            credits: 8,
            max_in_pipeline: 2,
            resume_grace_secs: 30,
            resume_buffer: 64,
            max_sessions: 10_000,
        }
    }
}

/// Pipeline settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capacity of the ingress queue per model, in frames. When it is full,
    /// HTTP answers 429 with `Retry-After` and a stream gets `Dropped`
    /// (queue-full) for that frame. Default 256.
    ///
    /// Shared fairly among tenants (see "Fair sharing" in
    /// docs/architecture.md): a tenant alone may fill it; while others have
    /// frames queued, a tenant may hold at most its weighted share
    /// `⌈queue_capacity · weight / (sum of the waiting tenants' weights)⌉`,
    /// but never less than `tenant_queue_floor`.
    pub queue_capacity: usize,
    /// Frames any tenant may queue even when its weighted share is smaller.
    /// Size it to at least the frames one tenant keeps in flight at a low
    /// rate (a session holds up to `session.max_in_pipeline`). Default 4.
    pub tenant_queue_floor: usize,
    /// Frames beyond `queue_capacity` that tenants below their share may
    /// still queue while another tenant holds more than its share (it filled
    /// the queue while it was alone). This is what admits a quiet tenant at
    /// once next to a noisy one; it also bounds memory: at most
    /// `queue_capacity + queue_headroom` frames are ever queued. Default:
    /// `queue_capacity / 4`, at least `tenant_queue_floor`.
    pub queue_headroom: Option<usize>,
    /// The latency budget, in milliseconds: the longest a frame is expected
    /// to wait for an inference worker. A frame that would wait longer (by
    /// the queue ahead of it × the measured service time per frame ÷
    /// workers, counting what it already waited in its session) is refused
    /// at once: HTTP 429 with `Retry-After`, a stream's
    /// `Dropped{overloaded}`. Admitted frames then start within this budget
    /// plus the rest of the batch running when they arrived, however many
    /// sessions, credits or tenants there are (see "Admission by expected
    /// queue wait" in docs/architecture.md). Size it to at least the
    /// service time of max(`max_batch`, 8) frames (× the per-frame time, see
    /// `framegate_service_seconds_per_frame`); a shorter budget acts as that
    /// time, so that batches stay full and a session at the default 8 credits
    /// is not refused on a slow model. 0 turns it off (only `queue_capacity`
    /// bounds the queue). Default 500.
    pub max_queue_wait_ms: u64,
    /// Largest batch handed to a backend. Default: 1 with the `onnx`
    /// backend (inference on this machine's CPU, also with `preprocess =
    /// "cuda"`; `solo_backlog` if that is larger), 8 with `triton` (a GPU server gains from large batches) and
    /// `synthetic`. One-thread ONNX Runtime sessions run no faster per frame
    /// in batches, and every frame of a batch waits for the whole batch:
    /// against batches of 8, frames one at a time gave 4–5 % more frames/s
    /// at saturation, 0.67–0.82× the p99 there, at 10× overload 0.64× the
    /// admitted p99 in 0.38× the memory, and the same p99 at half load
    /// (docs/benchmarks.md, "CPU batch size at saturation").
    pub max_batch: Option<usize>,
    /// How long, in microseconds, a frame may wait for batch-mates while some
    /// inference worker is busy. When every worker is idle a batch leaves at
    /// once. Default 2000 (2 ms).
    pub max_delay_us: u64,
    /// Inference workers (OS threads, one backend session each). Default: 2
    /// on machines with at most 4 cores, else cores / 2.
    pub workers: Option<usize>,
    /// Intra-op threads per worker's ONNX Runtime session. Default 1.
    pub threads_per_worker: usize,
    /// Intra-op threads of the solo session: one extra ONNX Runtime session
    /// that runs a lone frame arriving while every worker is idle (or each
    /// of a short backlog in turn, see `solo_backlog`), so at
    /// light load a frame gets every inference thread (lower latency) while
    /// under load the workers' own sessions run frames side by side (higher
    /// throughput). No other batch is started while a solo batch runs.
    /// 0 or 1 (or not above `threads_per_worker`) turns it off. Default:
    /// `workers × threads_per_worker`, at most 8.
    pub solo_threads: Option<usize>,
    /// How many frames may be waiting, with every worker idle, for the solo
    /// session still to be used: the next one (in fair order; the oldest
    /// with one tenant) runs solo and the others wait for it, one after
    /// another, instead of running side by side on the workers' one-thread
    /// sessions (on 2 cores each of two side-by-side runs took about twice
    /// as long as a solo run). 1 runs only a lone frame solo. Without a solo
    /// session (one worker, `solo_threads` off, a backend without a thread
    /// setting) it has no effect. Measured on 2 cores only, at 21 frames/s
    /// from 4 sessions, pooled over five alternated 10 s runs: 3 gave a p99
    /// of 117 ms instead of 149 over WebSocket and 137 instead of 151 over
    /// HTTP, but run by run the p99s overlapped, and closed loop gave 2–6.5 %
    /// fewer frames/s (two pairs at 4 frames in flight, the mean of six at
    /// 2), within the noise (docs/benchmarks.md, "Solo backlog"). At least
    /// 1, at most `max_batch`. Default 1.
    pub solo_backlog: usize,
    /// Whether ONNX Runtime's pool threads (sessions with more than one
    /// intra-op thread, such as the solo session) keep spin-waiting after a
    /// run returns, ready for the next one. `true` (the default) gives the
    /// lowest tail latency; `false` stops them as each run ends. On 2 cores
    /// at 15 lone frames/s, `false` used 0.83–0.87 cores instead of
    /// 1.32–1.45 (each run was followed by ~45 ms of spinning), with the
    /// same median latency and a p99 3–6 ms higher (docs/benchmarks.md,
    /// "ONNX Runtime's spin after a run"). One-thread sessions never spin.
    pub spin_after_run: bool,
    /// Threads of the async runtime that runs the network side: sockets,
    /// HTTP, WebSocket and QUIC sessions, metering (image work is on the
    /// inference workers). Default: half the cores, at least 1, so the
    /// network side and the inference workers do not take turns on the same
    /// cores. On 2 cores, 1 thread answered 11–58 % more gateway-only
    /// WebSocket frames than 2 with the same inference rate and latency
    /// (docs/benchmarks.md, "Threads for the network side").
    pub io_threads: Option<usize>,
    /// Where decoded frames are resized, normalised and laid out as the
    /// model's input: `cpu` (the inference worker's thread, antialiased
    /// bilinear) or `cuda` (the kernels of `framegate-cuda` on the GPU
    /// `cuda_device`, compiled at start with NVRTC: one launch per batch,
    /// plain bilinear as OpenCV's `INTER_LINEAR`; raw RGB8, BGR8 and NV12
    /// frames go to the GPU as they arrived). JPEG and PNG are decoded on
    /// the CPU either way. With `cuda`, a machine without a usable GPU, driver
    /// or NVRTC library refuses to start, naming what is missing. Default
    /// `cpu`.
    pub preprocess: PreprocessDevice,
    /// The CUDA device (ordinal) of `preprocess = "cuda"`. Default 0.
    pub cuda_device: usize,
}

/// Where frames are preprocessed (`pipeline.preprocess`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessDevice {
    /// On the inference worker's CPU thread (the default).
    #[default]
    Cpu,
    /// On a CUDA GPU, one kernel launch per batch.
    Cuda,
}

impl PreprocessDevice {
    /// `cpu` or `cuda`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PreprocessDevice::Cpu => "cpu",
            PreprocessDevice::Cuda => "cuda",
        }
    }
}

/// `pipeline.max_batch` where inference runs on this machine's CPU (the
/// `onnx` backend, whatever the preprocessing device).
pub const CPU_MAX_BATCH: usize = 1;
/// `pipeline.max_batch` everywhere else (Triton, the synthetic backend), and
/// for a pipeline configured in code without [`Config::resolve_defaults`].
pub const DEFAULT_MAX_BATCH: usize = 8;

impl PipelineConfig {
    /// `max_batch`, or [`DEFAULT_MAX_BATCH`] where it was left unset and not
    /// resolved by [`Config::resolve_defaults`].
    pub fn max_batch(&self) -> usize {
        self.max_batch.unwrap_or(DEFAULT_MAX_BATCH)
    }

    /// The default `max_batch` for inference on `backend` (see the field).
    pub fn default_max_batch(backend: BackendKind) -> usize {
        match backend {
            BackendKind::Onnx => CPU_MAX_BATCH,
            BackendKind::Triton | BackendKind::Synthetic => DEFAULT_MAX_BATCH,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            tenant_queue_floor: 4,
            queue_headroom: None,
            max_queue_wait_ms: 500,
            max_batch: None,
            max_delay_us: 2_000,
            workers: None,
            threads_per_worker: 1,
            solo_threads: None,
            solo_backlog: 1,
            spin_after_run: true,
            io_threads: None,
            preprocess: PreprocessDevice::Cpu,
            cuda_device: 0,
        }
    }
}

impl PipelineConfig {
    /// The number of inference workers, after applying the default.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            if cores <= 4 {
                2
            } else {
                cores / 2
            }
        })
    }

    /// Threads of the async runtime, after applying the default.
    pub fn io_thread_count(&self) -> usize {
        self.io_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            (cores / 2).max(1)
        })
    }

    /// Intra-op threads of the solo session, after applying the default;
    /// `None` when it is off.
    pub fn solo_thread_count(&self) -> Option<usize> {
        let n = self
            .solo_threads
            .unwrap_or_else(|| (self.worker_count() * self.threads_per_worker).min(8));
        (n > 1 && n > self.threads_per_worker).then_some(n)
    }

    /// `queue_headroom`, after applying the default.
    pub fn headroom(&self) -> usize {
        self.queue_headroom
            .unwrap_or((self.queue_capacity / 4).max(self.tenant_queue_floor))
    }

    /// `max_delay_us` as a duration.
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.max_delay_us)
    }

    /// `max_queue_wait_ms` as a duration (zero: off).
    pub fn max_queue_wait(&self) -> Duration {
        Duration::from_millis(self.max_queue_wait_ms)
    }
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`. Default: `ORT_DYLIB_PATH`, else the
    /// location `scripts/install-onnxruntime.sh` installs to.
    pub dylib: Option<PathBuf>,
}

/// A model to serve, described by a `model.toml` file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path to the model's `model.toml` (its `file` and `labels` are relative
    /// to it).
    pub spec: PathBuf,
    /// Name to serve it under; default: the `name` in its `model.toml`.
    pub name: Option<String>,
}

/// QUIC listener settings (see docs/protocol.md, "QUIC").
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Serve QUIC at all. Default true.
    pub enabled: bool,
    /// UDP address. Default `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// Connections at once; new ones beyond are refused during the
    /// handshake (CONNECTION_REFUSED). Default 1024.
    pub max_connections: usize,
    /// Seconds for the TLS handshake plus the client's Hello; slower
    /// connections are closed. Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds without any packet (not even a keep-alive) before a
    /// connection is closed. Default 30. Clients should send keep-alives
    /// more often (the Rust SDK: every 5 s).
    pub idle_timeout_secs: u64,
    /// Bytes a stream may have in flight unread; bounds the memory one
    /// stream costs. Size it to latency × bandwidth. Default 4 MiB.
    pub stream_receive_window: u32,
    /// Accept frames as QUIC datagrams from sessions that ask in Hello.
    /// Default true.
    pub datagrams: bool,
    /// Bytes of received datagrams buffered per connection before new ones
    /// are dropped (a dropped datagram is a lost frame). Default 1 MiB.
    pub datagram_receive_buffer: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8443".parse().expect("valid default address"),
            max_connections: 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 30,
            stream_receive_window: 4 << 20,
            datagrams: true,
            datagram_receive_buffer: 1 << 20,
        }
    }
}

/// WebTransport listener settings (see docs/protocol.md, "WebTransport").
///
/// Browsers reach the same streaming session as over WebSocket and QUIC
/// through HTTP/3 WebTransport at `https://HOST:PORT/v1/wt`. Connection
/// limits and timeouts are those of `[quic]`. Without `[tls] cert`/`key` the
/// gateway generates a fresh short-lived certificate (ECDSA P-256, 13 days)
/// at every start and publishes its SHA-256 at `GET /v1/webtransport`, so
/// browsers can trust it through `serverCertificateHashes`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebTransportConfig {
    /// Serve WebTransport at all. Default false: browsers use WebSocket.
    pub enabled: bool,
    /// UDP address. Default `127.0.0.1:8444`.
    pub listen: SocketAddr,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:8444".parse().expect("valid default address"),
        }
    }
}

/// TLS certificates. Without `cert`/`key` the gateway generates a
/// self-signed development certificate in `data_dir` (printed with its
/// SHA-256 fingerprint at start so clients can pin it).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Log settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: String,
    /// A `tracing` filter, e.g. `info,framegate=debug`. Default `info,ort=warn`;
    /// `RUST_LOG` wins when set. Wire-level libraries (see
    /// [`WIRE_LOG_TARGETS`]) stay at `info` or above so no key is ever logged.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info,ort=warn".into(),
        }
    }
}

/// Libraries whose debug/trace logs contain raw protocol bytes or headers
/// (and so could contain keys); the gateway caps them at `info`.
pub const WIRE_LOG_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "axum",
    "quinn",
    "quinn_proto",
    "rustls",
    "reqwest",
    "tonic",
    "redis",
];
/// Local state.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder for local state: the embedded usage store (`usage.redb`) and
    /// the metering write-ahead file (`usage.wal`). One folder per gateway
    /// process. Default `framegate-data` (relative to the working directory).
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("framegate-data"),
        }
    }
}

/// Usage metering (see `docs/billing.md`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    /// `embedded` (a file in `storage.data_dir`, one gateway) or `redis`
    /// (shared by several gateways). Default `embedded`.
    pub store: String,
    /// Redis URL when `store = "redis"`. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// How often usage is flushed to the store, in milliseconds. It is also
    /// the most usage a SIGKILL can lose. Default 1000.
    pub flush_interval_ms: u64,
    /// Usage window, in seconds; it must divide 3600. Billing events are per
    /// tenant and window. Default 60.
    pub window_secs: u64,
    /// Limit on one store operation, in milliseconds. Default 2000.
    pub store_timeout_ms: u64,
    /// Size past which the write-ahead file is rewritten compactly during a
    /// store outage, in bytes. Default 64 MiB.
    pub wal_max_bytes: u64,
    /// Longest wait for the store at shutdown, in seconds; what is left stays
    /// in the write-ahead file. Default 10.
    pub shutdown_flush_secs: u64,
    /// Name of this gateway in flush ids and logs. Default `gw<pid>`.
    pub gateway_id: Option<String>,
    /// Frames per calendar month (UTC) per tenant; tenants not listed are
    /// uncapped. Example: `budgets = { acme = 1000000 }`.
    pub budgets: std::collections::BTreeMap<String, u64>,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            store: "embedded".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            flush_interval_ms: 1000,
            window_secs: 60,
            store_timeout_ms: 2000,
            wal_max_bytes: 64 << 20,
            shutdown_flush_secs: 10,
            gateway_id: None,
            budgets: Default::default(),
        }
    }
}

/// Rate limits (see docs/operations.md, "Rate limits"). The limits come
/// from `[plans]` / `[tenants]` (and key overrides); this section says where
/// their state is kept.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `local` (in this process: exact for one gateway, N gateways admit up
    /// to N × the limit) or `redis` (one limit shared by every gateway that
    /// uses the same Redis). Default `local`.
    pub store: String,
    /// Redis URL when `store = "redis"`. Default: `metering.redis_url`.
    pub redis_url: Option<String>,
    /// Limit on one Redis decision, in milliseconds; a slower answer counts
    /// as a store error. Default 100.
    pub timeout_ms: u64,
    /// What a decision does when Redis cannot be reached: `local` (enforce
    /// the limit in this process only: each gateway admits up to the limit),
    /// `allow` (admit everything) or `deny` (refuse everything limited).
    /// Default `local`.
    pub on_store_error: String,
    /// Rate-limit buckets kept in this process (local store, and the
    /// fallback); idle buckets are evicted first, so memory stays bounded
    /// with any number of keys. Default 1000000 (about 100 MB at most).
    pub max_local_entries: usize,
    /// Seconds a streaming session's slot in Redis lives without a
    /// heartbeat (every third of it), so a crashed gateway's sessions stop
    /// counting against `max_sessions` after this. Sessions admitted while
    /// Redis was down are registered by their next heartbeat once it is
    /// back. Default 30.
    pub session_ttl_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            store: "local".into(),
            redis_url: None,
            timeout_ms: 100,
            on_store_error: "local".into(),
            max_local_entries: 1_000_000,
            session_ttl_secs: 30,
        }
    }
}

/// Stripe billing (see `docs/billing.md`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Run the reporter in `serve`. Default false.
    pub enabled: bool,
    /// Stripe API base URL. Default `https://api.stripe.com/`.
    pub api_base: String,
    /// Environment variable holding the secret key. Default `STRIPE_API_KEY`.
    pub api_key_env: String,
    /// File holding the secret key (wins over the environment variable).
    pub api_key_file: Option<PathBuf>,
    /// How often the reporter runs, in milliseconds. Default 10000.
    pub report_interval_ms: u64,
    /// Seconds after a window ends before it is reported, so every gateway
    /// has flushed it. Later usage is still reported (as a further event).
    /// Default 10.
    pub grace_secs: u64,
    /// Limit on one Stripe request, in milliseconds. Default 10000.
    pub request_timeout_ms: u64,
    /// Reporter lease in Redis, in milliseconds. Default 10000.
    pub lease_ttl_ms: u64,
    /// Tenant → Stripe customer and meter.
    pub customers: Vec<BillingCustomer>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api_base: "https://api.stripe.com/".into(),
            api_key_env: "STRIPE_API_KEY".into(),
            api_key_file: None,
            report_interval_ms: 10_000,
            grace_secs: 10,
            request_timeout_ms: 10_000,
            lease_ttl_ms: 10_000,
            customers: Vec::new(),
        }
    }
}

/// A tenant billed through Stripe.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingCustomer {
    /// Tenant.
    pub tenant: String,
    /// Stripe customer id (`cus_…`).
    pub customer: String,
    /// The meter's `event_name` in Stripe. Default `framegate_frames`.
    #[serde(default = "default_meter")]
    pub meter_event_name: String,
}

fn default_meter() -> String {
    "framegate_frames".into()
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("cannot read {}: {e}", path.display())],
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Fills the defaults that depend on other sections (today
    /// `pipeline.max_batch`, by backend). Call it once the file and the
    /// command line have been applied.
    /// With the `onnx` backend an unset `max_batch` is at least
    /// `solo_backlog` (a backlog that runs solo fits in a batch).
    pub fn resolve_defaults(&mut self) {
        let backend = self.backend.kind;
        let p = &mut self.pipeline;
        let backlog = p.solo_backlog;
        p.max_batch.get_or_insert_with(|| match backend {
            BackendKind::Onnx => PipelineConfig::default_max_batch(backend).max(backlog),
            _ => PipelineConfig::default_max_batch(backend),
        });
    }

    /// Checks every field, collecting all problems.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = tenancy::problems(&self.plans, &self.tenants);
        let p = &self.pipeline;
        if p.queue_capacity == 0 {
            problems.push("pipeline.queue_capacity must be at least 1".into());
        }
        if p.queue_capacity > 0 && p.tenant_queue_floor > p.queue_capacity {
            problems.push(format!(
                "pipeline.tenant_queue_floor ({}) must be at most pipeline.queue_capacity ({})",
                p.tenant_queue_floor, p.queue_capacity
            ));
        }
        if p.queue_headroom.is_some_and(|h| h > 1_000_000) {
            problems.push("pipeline.queue_headroom must be at most 1000000".into());
        }
        if let Some(b) = p.max_batch.filter(|b| !(1..=256).contains(b)) {
            problems.push(format!("pipeline.max_batch must be in 1..=256, got {b}"));
        }
        if p.workers == Some(0) {
            problems.push("pipeline.workers must be at least 1".into());
        }
        if p.io_threads == Some(0) {
            problems.push("pipeline.io_threads must be at least 1".into());
        }
        if p.preprocess == PreprocessDevice::Cuda
            && self.limits.max_frame_side > framegate_cuda::MAX_DIM
        {
            problems.push(format!(
                "limits.max_frame_side must be at most {} with pipeline.preprocess = \"cuda\" (the kernels' largest side), got {}",
                framegate_cuda::MAX_DIM,
                self.limits.max_frame_side
            ));
        }
        if p.solo_backlog == 0 {
            problems.push("pipeline.solo_backlog must be at least 1".into());
        }
        if p.solo_backlog > p.max_batch() && p.max_batch() > 0 {
            problems.push(format!(
                "pipeline.solo_backlog must be at most pipeline.max_batch ({}), got {}: a longer backlog goes to the workers as batches",
                p.max_batch(),
                p.solo_backlog
            ));
        }
        if p.threads_per_worker == 0 {
            problems.push("pipeline.threads_per_worker must be at least 1".into());
        }
        if p.max_delay_us > 1_000_000 {
            problems.push("pipeline.max_delay_us must be at most 1000000 (1 s)".into());
        }
        if p.max_queue_wait_ms > 600_000 {
            problems.push(
                "pipeline.max_queue_wait_ms must be at most 600000 (10 min; 0 turns it off)".into(),
            );
        }
        if self.session.credits == 0 || self.session.credits > 1024 {
            problems.push("session.credits must be in 1..=1024".into());
        }
        if self.session.max_in_pipeline == 0 {
            problems.push("session.max_in_pipeline must be at least 1".into());
        }
        if self.session.resume_buffer == 0 {
            problems.push("session.resume_buffer must be at least 1".into());
        }
        crate::transport::quic::validate(&self.quic, &self.tls, &mut problems);
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            problems.push("limits.max_message_bytes must be at least 1024".into());
        }
        if l.max_frame_pixels == 0 {
            problems.push("limits.max_frame_pixels must be at least 1".into());
        }
        if self.http.max_body_bytes < 1024 {
            problems.push("http.max_body_bytes must be at least 1024".into());
        }
        let body_room = crate::transport::http::MULTIPART_ROOM;
        if let Some(budget) = self.http.max_body_bytes_in_flight {
            if budget < self.http.max_body_bytes.saturating_add(body_room) {
                problems.push(format!(
                    "http.max_body_bytes_in_flight must be at least http.max_body_bytes + {body_room} (room for a multipart body's part headers), got {budget} with max_body_bytes {}",
                    self.http.max_body_bytes
                ));
            }
        }
        for (i, k) in self.auth.keys.iter().enumerate() {
            if k.tenant.is_empty() {
                problems.push(format!("auth.keys[{i}].tenant is empty"));
            }
            if k.sha256.len() != 64 || hex::decode(&k.sha256).is_err() {
                problems.push(format!(
                    "auth.keys[{i}].sha256 must be 64 hex digits (the SHA-256 of the key)"
                ));
            }
        }
        crate::auth::oidc::validate(&self.auth.oidc, &mut problems);
        if !matches!(self.auth.store.as_str(), "embedded" | "redis") {
            problems.push(format!(
                "auth.store must be \"embedded\" or \"redis\", got {:?}",
                self.auth.store
            ));
        }
        if self.auth.cache_ttl_secs > 3600 {
            problems.push("auth.cache_ttl_secs must be at most 3600".into());
        }
        if let Some(h) = &self.admin.token_sha256 {
            if h.len() != 64 || hex::decode(h).is_err() {
                problems.push(
                    "admin.token_sha256 must be 64 hex digits (the SHA-256 of the token)".into(),
                );
            }
        }
        if self.admin.enabled {
            let a = self.admin.listen;
            for (name, other) in [
                ("http.listen", Some(self.http.listen)),
                ("http.tls_listen", self.http.tls_listen),
            ] {
                let Some(o) = other else { continue };
                let same_ip =
                    a.ip() == o.ip() || a.ip().is_unspecified() || o.ip().is_unspecified();
                if a.port() != 0 && a.port() == o.port() && same_ip {
                    problems.push(format!(
                        "admin.listen ({a}) must not be the public listener {name} ({o}): the admin API needs its own, private port"
                    ));
                }
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(format!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            if !m.spec.exists() {
                problems.push(format!(
                    "models[{i}].spec: {} does not exist",
                    m.spec.display()
                ));
            }
        }
        self.backend.validate(self.models.len(), &mut problems);
        let m = &self.metering;
        if !matches!(m.store.as_str(), "embedded" | "redis") {
            problems.push(format!(
                "metering.store must be \"embedded\" or \"redis\", got {:?}",
                m.store
            ));
        }
        if m.window_secs == 0 || 3600 % m.window_secs != 0 {
            problems.push("metering.window_secs must divide 3600".into());
        }
        for t in m
            .budgets
            .keys()
            .chain(self.auth.keys.iter().map(|k| &k.tenant))
            .chain(self.tenants.keys())
        {
            if t.contains(['{', '}', '\t', ':']) {
                problems.push(format!(
                    "tenant {t:?} must not contain braces, tabs or colons"
                ));
            }
        }
        let r = &self.ratelimit;
        if !matches!(r.store.as_str(), "local" | "redis") {
            problems.push(format!(
                "ratelimit.store must be \"local\" or \"redis\", got {:?}",
                r.store
            ));
        }
        if !matches!(r.on_store_error.as_str(), "local" | "allow" | "deny") {
            problems.push(format!(
                "ratelimit.on_store_error must be \"local\", \"allow\" or \"deny\", got {:?}",
                r.on_store_error
            ));
        }
        if r.max_local_entries < 1024 {
            problems.push("ratelimit.max_local_entries must be at least 1024".into());
        }
        // Times: zero where it would stop a task (an interval of 0 panics,
        // a timeout of 0 fails every call) and past what an Instant can
        // add without overflowing (a connection task would panic) or what
        // could make sense.
        const DAY_MS: u64 = 24 * 3600 * 1000;
        for (field, value, min, max) in [
            (
                "http.handshake_timeout_secs",
                self.http.handshake_timeout_secs,
                1,
                600,
            ),
            (
                "http.keepalive_timeout_secs",
                self.http.keepalive_timeout_secs,
                1,
                3600,
            ),
            (
                "http.body_timeout_secs",
                self.http.body_timeout_secs,
                1,
                3600,
            ),
            (
                "http.ws_idle_timeout_secs",
                self.http.ws_idle_timeout_secs,
                0,
                86_400,
            ),
            (
                "http.shutdown_timeout_secs",
                self.http.shutdown_timeout_secs,
                0,
                3600,
            ),
            (
                "quic.handshake_timeout_secs",
                self.quic.handshake_timeout_secs,
                1,
                600,
            ),
            (
                "session.resume_grace_secs",
                self.session.resume_grace_secs,
                0,
                86_400,
            ),
            (
                "pipeline.max_queue_wait_ms",
                self.pipeline.max_queue_wait_ms,
                0,
                600_000,
            ),
            (
                "metering.flush_interval_ms",
                self.metering.flush_interval_ms,
                1,
                60_000,
            ),
            ("ratelimit.timeout_ms", self.ratelimit.timeout_ms, 1, 10_000),
            (
                "ratelimit.session_ttl_secs",
                self.ratelimit.session_ttl_secs,
                3,
                3600,
            ),
            (
                "metering.store_timeout_ms",
                self.metering.store_timeout_ms,
                1,
                60_000,
            ),
            (
                "metering.shutdown_flush_secs",
                self.metering.shutdown_flush_secs,
                0,
                3600,
            ),
            (
                "billing.report_interval_ms",
                self.billing.report_interval_ms,
                1,
                DAY_MS,
            ),
            ("billing.grace_secs", self.billing.grace_secs, 0, 86_400),
            (
                "billing.request_timeout_ms",
                self.billing.request_timeout_ms,
                1,
                600_000,
            ),
            ("billing.lease_ttl_ms", self.billing.lease_ttl_ms, 1, DAY_MS),
        ] {
            if value < min || value > max {
                problems.push(format!("{field} must be in {min}..={max}, got {value}"));
            }
        }
        if self.limits.max_frame_side == 0 {
            problems.push("limits.max_frame_side must be at least 1".into());
        }
        let b = &self.billing;
        if b.enabled && b.customers.is_empty() {
            problems.push("billing.enabled needs at least one [[billing.customers]]".into());
        }
        if !(b.api_base.starts_with("http://") || b.api_base.starts_with("https://")) {
            problems.push("billing.api_base must be an http(s) URL".into());
        }
        for (i, c) in b.customers.iter().enumerate() {
            if c.tenant.is_empty() || c.customer.is_empty() || c.meter_event_name.is_empty() {
                problems.push(format!(
                    "billing.customers[{i}] needs tenant, customer and meter_event_name"
                ));
            }
            // A window's usage is reported once and then leaves the
            // tenant's unbilled windows: a second entry would never bill.
            if let Some(j) = b.customers[..i].iter().position(|o| o.tenant == c.tenant) {
                problems.push(format!(
                    "billing.customers[{i}] repeats tenant {:?} of billing.customers[{j}]: \
                     a tenant is billed to one customer and meter",
                    c.tenant
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn times_that_would_stop_a_task_or_overflow_are_refused() {
        for (section, field, value) in [
            ("billing", "report_interval_ms", "0"),
            ("billing", "request_timeout_ms", "0"),
            ("billing", "lease_ttl_ms", "0"),
            ("metering", "store_timeout_ms", "0"),
            ("http", "handshake_timeout_secs", "0"),
            ("quic", "handshake_timeout_secs", "9223372036854775807"),
            ("session", "resume_grace_secs", "9223372036854775807"),
            ("limits", "max_frame_side", "0"),
        ] {
            let config: Config = toml::from_str(&format!("[{section}]\n{field} = {value}\n"))
                .unwrap_or_else(|e| panic!("{section}.{field}: {e}"));
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("{section}.{field}")), "{err}");
        }
    }

    #[test]
    fn the_body_budget_fits_the_largest_body() {
        // Unset: 256 MiB, or the largest body and its multipart room when
        // that is more (a config that raised max_body_bytes still starts).
        let mut config = Config::default();
        assert_eq!(config.http.body_bytes_in_flight(), 256 << 20);
        config.http.max_body_bytes = 300 << 20;
        config.validate().unwrap();
        assert_eq!(config.http.body_bytes_in_flight(), (300 << 20) + (16 << 10));
        // Set below that: refused, saying why.
        config.http.max_body_bytes_in_flight = Some(300 << 20);
        let err = config.validate().unwrap_err();
        assert!(
            err.problems[0].contains("http.max_body_bytes_in_flight"),
            "{err}"
        );
        config.http.max_body_bytes_in_flight = Some((300 << 20) + (16 << 10));
        config.validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
            [pipeline]
            max_batch = 0
            queue_capacity = 0
            [session]
            credits = 0
            [log]
            format = "xml"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    #[test]
    fn max_batch_defaults_to_one_only_for_cpu_inference() {
        let resolved = |text: &str| {
            let mut c: Config = toml::from_str(text).unwrap();
            c.resolve_defaults();
            c.validate().unwrap();
            c.pipeline.max_batch()
        };
        assert_eq!(resolved(""), CPU_MAX_BATCH);
        // ONNX Runtime runs on the CPU with GPU preprocessing too.
        assert_eq!(
            resolved("[pipeline]\npreprocess = \"cuda\"\n"),
            CPU_MAX_BATCH
        );
        assert_eq!(
            resolved("[backend]\nkind = \"triton\"\n"),
            DEFAULT_MAX_BATCH
        );
        assert_eq!(
            resolved("[backend]\nkind = \"synthetic\"\n"),
            DEFAULT_MAX_BATCH
        );
        // A solo backlog (docs/benchmarks.md suggests 3 on a CPU gateway)
        // still fits in a batch.
        assert_eq!(resolved("[pipeline]\nsolo_backlog = 3\n"), 3);
        // A value that was set stays, whatever the backend.
        assert_eq!(resolved("[pipeline]\nmax_batch = 8\n"), 8);
        assert_eq!(
            resolved("[backend]\nkind = \"triton\"\n[pipeline]\nmax_batch = 1\n"),
            1
        );
        // A pipeline configured in code without resolving keeps 8.
        assert_eq!(PipelineConfig::default().max_batch(), DEFAULT_MAX_BATCH);
        assert_ne!(CPU_MAX_BATCH, DEFAULT_MAX_BATCH);
    }

    #[test]
    fn a_solo_backlog_beyond_a_full_batch_is_refused() {
        let mut config = Config::default();
        config.pipeline.max_batch = Some(4);
        config.pipeline.solo_backlog = 4;
        config.validate().unwrap();
        config.pipeline.solo_backlog = 5;
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("pipeline.solo_backlog"), "{err}");
    }

    #[test]
    fn bad_ratelimit_settings_are_reported() {
        let text = r#"
            [ratelimit]
            store = "memcached"
            on_store_error = "maybe"
            timeout_ms = 0
            max_local_entries = 10
            session_ttl_secs = 1
            [tenants."a{b}"]
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 6, "{err}");
        let ok: Config = toml::from_str("[ratelimit]\nstore = \"redis\"\n").unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.ratelimit.on_store_error, "local");
    }

    #[test]
    fn fair_share_settings_are_checked() {
        let config: Config =
            toml::from_str("[pipeline]\nqueue_capacity = 8\ntenant_queue_floor = 9\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("tenant_queue_floor"), "{err}");
        let config: Config = toml::from_str("[pipeline]\nqueue_capacity = 100\n").unwrap();
        assert_eq!(config.pipeline.headroom(), 25);
    }

    #[test]
    fn cuda_preprocessing_refuses_frames_larger_than_the_kernels_take() {
        let config: Config = toml::from_str("[pipeline]\npreprocess = \"cuda\"\n").unwrap();
        assert_eq!(config.pipeline.preprocess, PreprocessDevice::Cuda);
        config.validate().unwrap();
        let config: Config =
            toml::from_str("[pipeline]\npreprocess = \"cuda\"\n[limits]\nmax_frame_side = 20000\n")
                .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_frame_side") && err.contains("16384"),
            "{err}"
        );
        let config: Config = toml::from_str("[limits]\nmax_frame_side = 20000\n").unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn io_threads_default_to_half_the_cores_and_zero_is_refused() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let config = Config::default();
        assert_eq!(config.pipeline.io_thread_count(), (cores / 2).max(1));
        let config: Config = toml::from_str("[pipeline]\nio_threads = 3\n").unwrap();
        assert_eq!(config.pipeline.io_thread_count(), 3);
        let config: Config = toml::from_str("[pipeline]\nio_threads = 0\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("io_threads"), "{err}");
    }

    #[test]
    fn a_tenant_billed_twice_is_refused() {
        let text = r#"
            [billing]
            enabled = true
            [[billing.customers]]
            tenant = "acme"
            customer = "cus_1"
            [[billing.customers]]
            tenant = "globex"
            customer = "cus_2"
            [[billing.customers]]
            tenant = "acme"
            customer = "cus_3"
            meter_event_name = "other"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("billing.customers[2]")
                && err.problems[0].contains("billing.customers[0]"),
            "{err}"
        );
        let mut config = config;
        config.billing.customers.pop();
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<Config>("[pipeline]\nmax_bacth = 4\n").unwrap_err();
        assert!(err.to_string().contains("max_bacth"), "{err}");
    }
}
