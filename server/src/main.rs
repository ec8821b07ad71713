//! The `framegate` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use framegate::auth::{Authenticator, DevKey, DEV_KEY_ENV};
use framegate::backend::onnx::OnnxThreads;
use framegate::config::{BackendKind, Config, ModelConfig};
use framegate::gateway::{onnx_factory, synthetic_factory, triton_factory, Gateway};
use framegate::pipeline::Readiness;

mod cli;

#[derive(Parser)]
#[command(name = "framegate", version, about = "A streaming inference gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; size does not matter
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate a configuration file and print it with every default filled in.
    CheckConfig {
        /// The file.
        #[arg(long, short, env = "FRAMEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The configuration's defaults and reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Stripe billing by hand: one reporting pass, or a preview.
    Billing(cli::BillingArgs),
    /// Usage of any tenant, read from the usage store (an admin's view).
    Usage(cli::UsageArgs),
    /// API keys: create, list, revoke (the key store, or a gateway's admin API).
    Keys(cli::KeysArgs),
    /// Tenants set at run time: their plan and overrides.
    Tenants(cli::TenantsArgs),
    /// Plans set at run time.
    Plans(cli::PlansArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the whole default configuration as TOML (a starting
    /// `framegate.toml`).
    Defaults,
    /// Print the configuration reference (Markdown, every field with its
    /// type, default and doc comment), or write it into a document between
    /// its `<!-- config-reference:begin -->` / `end` markers.
    Reference {
        /// The document to update in place (docs/operations.md).
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (`framegate.toml`); optional, every field has a default.
    #[arg(long, short, env = "FRAMEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP + WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "FRAMEGATE_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Inference workers [default: 2 on small machines].
    #[arg(long, env = "FRAMEGATE_WORKERS")]
    workers: Option<usize>,
    /// Threads of the async runtime (network side) [default: half the
    /// cores, at least 1].
    #[arg(long, env = "FRAMEGATE_IO_THREADS")]
    io_threads: Option<usize>,
    /// Where frames are resized and normalised: `cpu` or `cuda` (a GPU,
    /// kernels compiled at start) [default: cpu].
    #[arg(long, env = "FRAMEGATE_PREPROCESS", value_enum)]
    preprocess: Option<framegate::config::PreprocessDevice>,
    /// ONNX Runtime intra-op threads per worker [default: 1].
    #[arg(long, env = "FRAMEGATE_THREADS_PER_WORKER")]
    threads_per_worker: Option<usize>,
    /// ONNX Runtime intra-op threads of the solo session that runs a lone
    /// frame while every worker is idle; 0 turns it off [default: workers ×
    /// threads per worker, at most 8].
    #[arg(long, env = "FRAMEGATE_SOLO_THREADS")]
    solo_threads: Option<usize>,
    /// With every worker idle, how many waiting frames still go to the solo
    /// session one at a time [default: 1].
    #[arg(long, env = "FRAMEGATE_SOLO_BACKLOG")]
    solo_backlog: Option<usize>,
    /// Whether ONNX Runtime's pool threads keep spin-waiting after a run:
    /// lower tail latency, more CPU at moderate rates [default: true].
    #[arg(long, env = "FRAMEGATE_SPIN_AFTER_RUN")]
    spin_after_run: Option<bool>,
    /// Largest batch [default: 8].
    #[arg(long, env = "FRAMEGATE_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Longest wait for batch-mates while a worker is busy, microseconds [default: 2000].
    #[arg(long, env = "FRAMEGATE_MAX_DELAY_US")]
    max_delay_us: Option<u64>,
    /// Ingress queue capacity per model [default: 256].
    #[arg(long, env = "FRAMEGATE_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// Latency budget: refuse frames expected to wait longer than this for
    /// a worker, milliseconds; 0 = off [default: 500].
    #[arg(long, env = "FRAMEGATE_MAX_QUEUE_WAIT_MS")]
    max_queue_wait_ms: Option<u64>,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else the install location).
    #[arg(long, env = "FRAMEGATE_ORT_DYLIB")]
    ort_dylib: Option<PathBuf>,
    /// Serve this model.toml instead of the bundled model (repeatable).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Backend: onnx, triton (remote KServe v2 servers, `[backend.triton]`), or synthetic (made-up boxes at the `[synthetic]` cost) [default: onnx].
    #[arg(long, env = "FRAMEGATE_BACKEND", value_enum)]
    backend: Option<BackendKind>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "FRAMEGATE_LOG_FORMAT")]
    log_format: Option<String>,
    /// QUIC listen address (UDP), or `off` [default: 127.0.0.1:8443].
    #[arg(long, env = "FRAMEGATE_QUIC_LISTEN")]
    quic_listen: Option<String>,
    /// WebTransport (HTTP/3) listen address (UDP) for browsers, or `off`
    /// [default: off; `[webtransport]`].
    #[arg(long, env = "FRAMEGATE_WEBTRANSPORT_LISTEN")]
    webtransport_listen: Option<String>,
    /// PEM certificate chain for QUIC (with --tls-key) instead of the
    /// generated development certificate.
    #[arg(long, env = "FRAMEGATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "FRAMEGATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Also serve HTTPS + WSS here with the TLS certificate [default: off].
    #[arg(long, env = "FRAMEGATE_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// Folder for the gateway's state: the development certificate, the
    /// embedded usage store and the metering write-ahead file (sets both
    /// `data_dir` and `storage.data_dir`).
    #[arg(long, env = "FRAMEGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Admin API listen address, or `off` [default: 127.0.0.1:9090]; never
    /// the public port.
    #[arg(long, env = "FRAMEGATE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    // Wire-level libraries log whole messages at trace level (a Hello with
    // its key, HTTP headers). Keys must never reach a log, whatever filter
    // the operator picks, so these targets are capped at info.
    for target in framegate::config::WIRE_LOG_TARGETS {
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `config`: the file named by `--config` (or the defaults), before the
/// command line's overrides.
async fn serve(args: ServeArgs, mut config: Config) -> Result<()> {
    if let Some(a) = args.http_listen {
        config.http.listen = a;
    }
    if let Some(w) = args.workers {
        config.pipeline.workers = Some(w);
    }
    if let Some(n) = args.io_threads {
        config.pipeline.io_threads = Some(n);
    }
    if let Some(p) = args.preprocess {
        config.pipeline.preprocess = p;
    }
    if let Some(t) = args.threads_per_worker {
        config.pipeline.threads_per_worker = t;
    }
    if let Some(t) = args.solo_threads {
        config.pipeline.solo_threads = Some(t);
    }
    if let Some(b) = args.solo_backlog {
        config.pipeline.solo_backlog = b;
    }
    if let Some(s) = args.spin_after_run {
        config.pipeline.spin_after_run = s;
    }
    if let Some(b) = args.max_batch {
        config.pipeline.max_batch = Some(b);
    }
    if let Some(d) = args.max_delay_us {
        config.pipeline.max_delay_us = d;
    }
    if let Some(q) = args.queue_capacity {
        config.pipeline.queue_capacity = q;
    }
    if let Some(w) = args.max_queue_wait_ms {
        config.pipeline.max_queue_wait_ms = w;
    }
    if let Some(p) = args.ort_dylib {
        config.onnxruntime.dylib = Some(p);
    }
    if let Some(b) = args.backend {
        config.backend.kind = b;
    }
    if let Some(f) = args.log_format {
        config.log.format = f;
    }
    match args.quic_listen.as_deref() {
        None => {}
        Some("off") => config.quic.enabled = false,
        Some(a) => {
            config.quic.listen = a
                .parse()
                .with_context(|| format!("--quic-listen {a:?}: not an address"))?
        }
    }
    match args.webtransport_listen.as_deref() {
        None => {}
        Some("off") => config.webtransport.enabled = false,
        Some(a) => {
            config.webtransport.enabled = true;
            config.webtransport.listen = a
                .parse()
                .with_context(|| format!("--webtransport-listen {a:?}: not an address"))?
        }
    }
    if args.tls_cert.is_some() {
        config.tls.cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        config.tls.key = args.tls_key;
    }
    if let Some(d) = args.data_dir {
        config.storage.data_dir = d.clone();
        config.data_dir = Some(d);
    }
    if args.https_listen.is_some() {
        config.http.tls_listen = args.https_listen;
    }
    match args.admin_listen.as_deref() {
        None => {}
        Some("off") => config.admin.enabled = false,
        Some(a) => {
            config.admin.listen = a
                .parse()
                .with_context(|| format!("--admin-listen {a:?}: not an address"))?
        }
    }
    for m in args.models {
        config.models.push(ModelConfig {
            spec: m,
            name: None,
        });
    }
    config.resolve_defaults();
    config.validate()?;
    init_logging(&config);
    tracing::info!(
        io_threads = config.pipeline.io_thread_count(),
        inference_workers = config.pipeline.worker_count(),
        max_batch = config.pipeline.max_batch(),
        preprocess = config.pipeline.preprocess.as_str(),
        "threads"
    );

    let factory = match config.backend.kind {
        BackendKind::Onnx => {
            framegate::backend::onnx::init_runtime(config.onnxruntime.dylib.as_deref()).map_err(
                |e| anyhow::anyhow!("{}", e.to_string().trim_start_matches("not ready: ")),
            )?;
            onnx_factory(OnnxThreads {
                threads: config.pipeline.threads_per_worker,
                spin_after_run: config.pipeline.spin_after_run,
            })
        }
        BackendKind::Triton => {
            let triton = config.backend.triton.clone();
            let pool = tokio::task::spawn_blocking(move || {
                framegate::backend::triton::pool::TritonPool::connect(&triton)
            })
            .await??;
            triton_factory(pool, &config.backend.triton, config.pipeline.max_batch())
        }
        BackendKind::Synthetic => {
            println!("framegate: SYNTHETIC backend: made-up boxes, no model inference");
            synthetic_factory(config.synthetic.clone())
        }
    };

    let key_store = framegate::auth::keys::KeyStore::open(&config)?;
    let (mut auth, dev_key) = Authenticator::from_config(
        &config,
        Some(key_store.clone()),
        std::env::var(DEV_KEY_ENV).ok(),
    );
    let admin_auth = std::sync::Arc::new(framegate::admin::AdminAuth::new(
        &config,
        std::env::var(framegate::admin::ADMIN_TOKEN_ENV).ok(),
    ));
    if !config.auth.oidc.is_empty() {
        // Keys are fetched in the background: an issuer that is down at
        // start-up only means its tokens are refused until it answers.
        let verifier = framegate::auth::oidc::OidcVerifier::new(&config.auth.oidc)
            .map_err(|e| anyhow::anyhow!(e))?;
        verifier.prefetch();
        auth.set_token_verifier(std::sync::Arc::new(verifier));
    }
    let listen = config.http.listen;
    let material = if config.quic.enabled || config.http.tls_listen.is_some() {
        let data_dir = config
            .data_dir
            .clone()
            .unwrap_or_else(framegate::transport::tls::default_data_dir);
        Some(
            framegate::transport::tls::load_or_generate(&config.tls, &data_dir)
                .map_err(|e| anyhow::anyhow!(e))?,
        )
    } else {
        None
    };
    let https = match (config.http.tls_listen, &material) {
        (Some(addr), Some(m)) => Some(
            framegate::transport::https::TlsListener::bind(
                addr,
                m,
                Duration::from_secs(config.http.handshake_timeout_secs),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        _ => None,
    };
    let quic = match (config.quic.enabled, material) {
        (true, Some(material)) => {
            let listener = framegate::transport::quic::QuicListener::bind(&config.quic, &material)
                .map_err(|e| anyhow::anyhow!(e))?;
            Some((listener, material))
        }
        (_, material) => {
            if let Some(m) = material {
                println!(
                    "framegate: TLS certificate sha256 {} ({})",
                    m.fingerprint, m.origin
                );
            }
            None
        }
    };
    // WebTransport: the configured certificate, else a fresh short-lived
    // one whose hash browsers pin (the long-lived development certificate
    // does not fit `serverCertificateHashes`).
    let webtransport = if config.webtransport.enabled {
        let (material, pin) = if config.tls.cert.is_some() {
            let data_dir = config
                .data_dir
                .clone()
                .unwrap_or_else(framegate::transport::tls::default_data_dir);
            (
                framegate::transport::tls::load_or_generate(&config.tls, &data_dir),
                false,
            )
        } else {
            (framegate::transport::tls::webtransport_certificate(), true)
        };
        let material = material.map_err(|e| anyhow::anyhow!(e))?;
        let listener = framegate::transport::webtransport::WebTransportListener::bind(
            &config.webtransport,
            &config.quic,
            &material,
            pin,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        Some((listener, material))
    } else {
        None
    };
    // A remote model that does not fit its model.toml, or CUDA
    // preprocessing on a machine without a usable GPU, is a configuration
    // error: refuse to start rather than serve with /readyz failing.
    let must_load = config.backend.kind == BackendKind::Triton
        || config.pipeline.preprocess == framegate::config::PreprocessDevice::Cuda;
    let gw = Gateway::start(config, auth, factory)?;
    if must_load {
        let gw = gw.clone();
        let readiness = tokio::task::spawn_blocking(move || loop {
            match gw.readiness() {
                Readiness::Loading => std::thread::sleep(Duration::from_millis(20)),
                other => return other,
            }
        })
        .await?;
        if let Readiness::Failed(f) = readiness {
            bail!("{}", f.trim_start_matches("not ready: "));
        }
    }
    let metering = std::sync::Arc::new(framegate::metering::Metering::open(&gw.config)?);
    let reporter = cli::start_reporter(&gw.config, &metering).await?;
    let mut gw = gw.with_metering(metering.clone());
    if let Some((listener, _)) = &webtransport {
        gw = gw.with_webtransport(listener.info());
    }
    metering.start().await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    match dev_key {
        DevKey::Generated(k) => println!(
            "framegate: no API keys configured; generated development key (shown once, set {DEV_KEY_ENV} to choose your own):\n  {k}"
        ),
        DevKey::FromEnv => println!("framegate: using the development key from {DEV_KEY_ENV}"),
        DevKey::None if gw.config.auth.keys.is_empty() => println!(
            "framegate: no development key (OIDC issuers configured): callers use their issuers' tokens or keys issued in the key store"
        ),
        DevKey::None => {}
    }
    println!(
        "framegate {} listening on http://{addr} (WebSocket ws://{addr}/v1/stream)",
        env!("CARGO_PKG_VERSION")
    );
    // Shutdown in three steps, each a watch flag: `stop_rx` (SIGTERM: stop
    // accepting, sessions get the going-away notice and drain), `quic_gone`
    // (QUIC: close what is left), and the process exit after usage is
    // flushed.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (close_quic, quic_gone) = tokio::sync::watch::channel(false);
    let quic_stopped = stop_rx.clone();
    start_admin(&gw, admin_auth, &key_store, quic_stopped.clone()).await?;
    if let Some(tls) = https {
        use axum::serve::Listener;
        let addr = tls.local_addr()?;
        println!("framegate: HTTPS listening on https://{addr} (WebSocket wss://{addr}/v1/stream)");
        let app = framegate::transport::http::router(gw.clone());
        spawn_router(&gw, tls, app, gw.body_budget.clone(), quic_stopped.clone());
    }
    let quic_task = match quic {
        Some((listener, material)) => {
            let addr = listener.local_addr()?;
            println!(
                "framegate: QUIC listening on quic://{addr} (ALPN framegate/1), certificate sha256 {} ({})",
                material.fingerprint, material.origin
            );
            let mut stopped = quic_stopped;
            let mut gone = quic_gone;
            Some(tokio::spawn(listener.serve(
                gw.clone(),
                async move {
                    let _ = stopped.changed().await;
                },
                async move {
                    let _ = gone.changed().await;
                },
            )))
        }
        None => None,
    };
    let webtransport_task = match webtransport {
        Some((listener, material)) => {
            let addr = listener.local_addr()?;
            println!(
                "framegate: WebTransport listening on https://{addr}{} (HTTP/3), certificate sha256 {} ({})",
                framegate::transport::webtransport::PATH,
                material.fingerprint,
                material.origin
            );
            // Closed with QUIC, after the drain: new sessions are refused
            // (going away) by the registry meanwhile.
            let mut stopped = close_quic.subscribe();
            Some(tokio::spawn(listener.serve(gw.clone(), async move {
                let _ = stopped.changed().await;
            })))
        }
        None => None,
    };
    {
        // Log when the models are ready, without blocking the listener.
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            loop {
                match gw.readiness() {
                    Readiness::Ready => {
                        println!(
                            "framegate: ready ({} ms to load and warm up)",
                            started.elapsed().as_millis()
                        );
                        return;
                    }
                    Readiness::Failed(f) => {
                        eprintln!("framegate: model failed to load: {f}");
                        return;
                    }
                    Readiness::Loading => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }
    // On SIGTERM/SIGINT: /readyz turns 503, the listeners stop accepting,
    // and every open session is told the gateway is going away (it answers
    // what it admitted, refuses later frames, closes with 1001). Open
    // requests and sessions get `http.shutdown_timeout_secs` for that;
    // then whatever is left is closed and the gateway exits.
    {
        let gw = gw.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!(
                sessions = gw.sessions.len(),
                "shutting down: draining sessions (going-away)"
            );
            gw.sessions.go_away();
            let _ = stop_tx.send(true);
        });
    }
    let mut graceful = stop_rx.clone();
    let serve = framegate::transport::serve_http(gw.clone(), listener, async move {
        let _ = graceful.changed().await;
    });
    let mut hard = stop_rx;
    let deadline = Duration::from_secs(gw.config.http.shutdown_timeout_secs);
    let sessions = gw.sessions.clone();
    let drained = async move {
        // Upgraded WebSocket connections are not tracked by the HTTP
        // server's graceful shutdown: wait for the sessions themselves.
        serve.await?;
        while !sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = drained => r?,
        _ = async move {
            let _ = hard.changed().await;
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!(seconds = deadline.as_secs(), sessions = gw.sessions.len(), "shutdown deadline passed with connections open; closing them");
            gw.sessions.close_all();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while !gw.sessions.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
    }
    let _ = close_quic.send(true);
    for t in [quic_task, webtransport_task].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    tracing::info!("shutting down: answering queued frames");
    let flush_deadline = Duration::from_secs(gw.config.metering.shutdown_flush_secs);
    tokio::task::spawn_blocking(move || gw.shutdown()).await?;
    cli::stop_reporter(reporter).await;
    metering.shutdown(flush_deadline).await;
    Ok(())
}

/// Starts the admin listener when enabled and some admin credential exists.
async fn start_admin(
    gw: &std::sync::Arc<Gateway>,
    auth: std::sync::Arc<framegate::admin::AdminAuth>,
    store: &framegate::auth::keys::KeyStore,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let config = &gw.config.admin;
    if !config.enabled {
        return Ok(());
    }
    if !auth.has_token() && !framegate::admin::store_has_admin_key(store).await {
        println!(
            "framegate: admin API off: no admin credential; set {} (or [admin] token_sha256), or create a key with the admin scope (framegate keys create --tenant ops --scopes admin), then restart",
            framegate::admin::ADMIN_TOKEN_ENV
        );
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin API)", config.listen))?;
    println!(
        "framegate: admin API listening on http://{}",
        listener.local_addr()?
    );
    let app = framegate::admin::router(gw.clone(), auth);
    // A budget of its own: a flood of public uploads cannot lock the
    // operators out of the admin API.
    let budget = framegate::transport::BodyBudget::new(gw.config.http.body_bytes_in_flight());
    spawn_router(gw, listener, app, budget, stopped);
    Ok(())
}

/// Serves `app` on `listener` with the `[http]` deadlines and `budget` for
/// request bodies until `stopped` changes (SIGTERM), in its own task.
fn spawn_router<L: axum::serve::Listener>(
    gw: &Gateway,
    listener: L,
    app: axum::Router,
    budget: framegate::transport::BodyBudget,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let deadlines = framegate::transport::HttpDeadlines::of(&gw.config.http);
    tokio::spawn(framegate::transport::serve_router(
        listener,
        app,
        deadlines,
        budget,
        async move {
            let _ = stopped.changed().await;
        },
    ));
}

/// Frame payloads (tens of KiB each) are allocated by the transport threads
/// and freed by the inference workers once a batch is answered. glibc gives
/// such blocks back to the kernel as soon as a heap's free top passes the
/// trim threshold (`madvise`, per arena), so the next frames fault the same
/// pages in again and the kernel zeroes them: in a gateway-only profile
/// (WebSocket, ~50 KB frames) `unmap_page_range`, page faults, `clear_page`
/// and `malloc_consolidate` took about 7 % of the gateway's CPU. Keeping
/// freed memory (the same settings the ONNX Runtime backend needs for its
/// tensors) makes the steady state fault-free, whatever the backend.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is thread-safe and only changes allocator tuning
    // parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> Result<()> {
    // One TLS crypto provider for every rustls user in the process (QUIC,
    // HTTPS, the Stripe client): aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            keep_freed_memory();
            // Read before the runtime is built: it sizes the runtime.
            let config = load_config(args.config.as_ref())?;
            let io_threads = args
                .io_threads
                .unwrap_or_else(|| config.pipeline.io_thread_count());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(io_threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(serve(args, config))
        }
        Command::CheckConfig { config } => {
            let Some(path) = config else {
                bail!("give a file with --config");
            };
            let mut c = load_config(Some(&path))?;
            c.resolve_defaults();
            c.validate()?;
            println!("{}", toml::to_string_pretty(&c)?);
            Ok(())
        }
        Command::Config(ConfigCommand::Defaults) => {
            // Unresolved: `pipeline.max_batch` follows the backend chosen.
            print!("{}", toml::to_string_pretty(&Config::default())?);
            Ok(())
        }
        Command::Config(ConfigCommand::Reference { write: None }) => {
            print!("{}", framegate::config::reference::markdown());
            Ok(())
        }
        Command::Config(ConfigCommand::Reference { write: Some(path) }) => {
            let doc = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let new = framegate::config::reference::splice(&doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if new != doc {
                std::fs::write(&path, new)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("{}: configuration reference updated", path.display());
            } else {
                println!(
                    "{}: configuration reference already up to date",
                    path.display()
                );
            }
            Ok(())
        }
        Command::Billing(args) => cli::run_async(cli::billing(args)),
        Command::Usage(args) => cli::run_async(cli::usage(args)),
        Command::Keys(args) => cli::run_async(cli::keys(args)),
        Command::Tenants(args) => cli::run_async(cli::tenants(args)),
        Command::Plans(args) => cli::run_async(cli::plans(args)),
    }
}
