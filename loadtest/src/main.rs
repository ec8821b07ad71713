//! `framegate-load`: the load harness's command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use framegate_loadtest::driver::{self, Load, RunPlan};
use framegate_loadtest::frames::FrameSet;
use framegate_loadtest::recorder::Recorder;
use framegate_loadtest::report::{rfc3339, Report, RunInfo, ServerInfo};
use framegate_loadtest::target::Target;
use framegate_loadtest::transport::http::HttpTransport;
use framegate_loadtest::transport::quic::{self, QuicTransport};
use framegate_loadtest::transport::ws::WsTransport;
use framegate_loadtest::transport::SharedTransport;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum TransportArg {
    /// WebSocket sessions (`/v1/stream`).
    Ws,
    /// QUIC sessions (one connection each, ALPN framegate/1) at
    /// --quic-target; the certificate pinned by --quic-pin or --quic-cert.
    Quic,
    /// One-shot HTTP POSTs (`/v1/detect`).
    Http,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum ModeArg {
    /// N sessions × F frames/s on a fixed schedule.
    Open,
    /// Fixed frames in flight, as fast as answered.
    Closed,
    /// Sessions opened and held, nothing sent.
    Idle,
}

/// Load a framegate (or a peer) and report latency and throughput.
#[derive(Parser, Debug)]
#[command(name = "framegate-load", version)]
struct Args {
    /// Server base URL (loopback only unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// API key (Bearer / Hello credential).
    #[arg(long, env = "FRAMEGATE_KEY", default_value = "")]
    key: String,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "ws")]
    transport: TransportArg,
    /// Load mode.
    #[arg(long, value_enum, default_value = "open")]
    mode: ModeArg,
    /// Sessions (WebSocket connections or concurrent HTTP callers).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Open loop: frames per second per session.
    #[arg(long, default_value_t = 10.0)]
    fps: f64,
    /// Closed loop: frames in flight per session. HTTP, either loop: the
    /// most requests a session has open at once (a frame due while all are
    /// out is dropped as `no-credit`).
    #[arg(long, default_value_t = 1)]
    in_flight: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before measuring (same load, not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Longest wait for outstanding answers after sending stops, seconds.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// A JPEG/PNG file or a folder of them.
    #[arg(long, conflicts_with = "synthetic")]
    frames: Option<PathBuf>,
    /// Synthetic JPEG frames of this size, e.g. 640x480.
    #[arg(long)]
    synthetic: Option<String>,
    /// JPEG quality of synthetic frames.
    #[arg(long, default_value_t = 85)]
    synthetic_quality: u8,
    /// Distinct synthetic frames.
    #[arg(long, default_value_t = 8)]
    synthetic_count: usize,
    /// HTTP path for frames.
    #[arg(long, default_value = "/v1/detect")]
    http_path: String,
    /// Send HTTP frames as a multipart field `image`.
    #[arg(long)]
    http_multipart: bool,
    /// WebSocket path.
    #[arg(long, default_value = "/v1/stream")]
    ws_path: String,
    /// QUIC: the server's UDP address, host:port (loopback only unless
    /// --allow-remote) [default: --target's host, port 8443].
    #[arg(long)]
    quic_target: Option<String>,
    /// QUIC: accept only the server certificate with this SHA-256
    /// fingerprint (hex; `framegate serve` prints it at start).
    #[arg(long, conflicts_with = "quic_cert")]
    quic_pin: Option<String>,
    /// QUIC: accept only this certificate (PEM file, e.g. the gateway's
    /// DATA_DIR/tls/dev-cert.pem).
    #[arg(long)]
    quic_cert: Option<PathBuf>,
    /// QUIC: TLS server name [default: the --quic-target host].
    #[arg(long)]
    quic_server_name: Option<String>,
    /// WebSocket over TLS: connect with `wss://` to the gateway's HTTPS
    /// listener at HOST:PORT (`framegate serve --https-listen`), accepting
    /// only the certificate given by --tls-pin or --tls-cert. `--target`
    /// still names the plain HTTP port, used only to read `/v1/models` for
    /// the report.
    #[arg(long)]
    wss_target: Option<String>,
    /// wss: accept only the server certificate with this SHA-256
    /// fingerprint (hex; `framegate serve` prints it at start).
    #[arg(long, conflicts_with = "tls_cert")]
    tls_pin: Option<String>,
    /// wss: accept only this certificate (PEM file, e.g. the gateway's
    /// DATA_DIR/tls/dev-cert.pem).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// QUIC: client UDP sockets the sessions are spread over.
    #[arg(long, default_value_t = 4)]
    quic_endpoints: usize,
    /// Model to request (empty: the server's default).
    #[arg(long, default_value = "")]
    model: String,
    /// Open loop: send due frames even without credit, to overload the
    /// server (it answers the excess with `Error{no-credit}` / HTTP 429).
    #[arg(long)]
    ignore_credits: bool,
    /// Closed loop: milliseconds a session waits after a refusal
    /// (overloaded, queue-full, HTTP 429) before sending again, as a
    /// well-behaved client backs off; 0 resends at once.
    #[arg(long, default_value_t = 100)]
    refusal_backoff_ms: u64,
    /// Sessions opened in parallel.
    #[arg(long, default_value_t = 64)]
    connect_parallelism: usize,
    /// Sample this process's RSS every second (the server, on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label for the server in the report (e.g. fastapi-peer).
    #[arg(long)]
    label: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write every measured frame here as a CSV row: session, seq, when it
    /// was sent, its latency, its outcome and the server's stage timings
    /// (to find which frames were slow, not only how many).
    #[arg(long)]
    frame_log: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .context("size must look like 640x480")?;
    Ok((w.trim().parse()?, h.trim().parse()?))
}

/// `[::1]` for an IPv6 literal, the host as it is otherwise.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn server_info(
    target: &Target,
    addrs: &[std::net::SocketAddr],
    key: &str,
    label: Option<String>,
) -> ServerInfo {
    let mut info = ServerInfo {
        label,
        ..Default::default()
    };
    // To the checked addresses, not a fresh lookup of the name; no proxy
    // from the environment and no redirect (either would send the request,
    // and the key, to a host the guard never saw).
    let Ok(client) = reqwest::Client::builder()
        .resolve_to_addrs(&target.host, addrs)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return info;
    };
    let resp = client
        .get(target.http_url("/v1/models"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if let Ok(r) = resp {
        if r.status().is_success() {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let models = v.get("models").and_then(|m| m.as_array());
                let backends: Vec<String> = models
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.get("backend").and_then(|b| b.as_str()))
                    .map(str::to_string)
                    .collect();
                info.synthetic = backends.iter().any(|b| b == "synthetic");
                info.backend = backends.first().cloned();
                info.models = Some(v);
            }
        }
    }
    info
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let target = Target::parse(&args.target)?;
    let target_addrs = target.check_loopback(args.allow_remote).await?;
    // The paths are appended to the checked authority: one that is not a
    // path could move the host the request goes to past the guard.
    framegate_loadtest::target::check_path("--ws-path", &args.ws_path)?;
    framegate_loadtest::target::check_path("--http-path", &args.http_path)?;
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    if args.duration.is_nan() || args.duration <= 0.0 || args.duration > 24.0 * 3600.0 {
        bail!("--duration must be in (0, 86400] seconds: every run is bounded");
    }
    let load = match args.mode {
        ModeArg::Open => {
            if args.fps.is_nan() || args.fps <= 0.0 {
                bail!("--fps must be positive");
            }
            Load::Open { fps: args.fps }
        }
        ModeArg::Closed => Load::Closed {
            in_flight: args.in_flight.max(1),
        },
        ModeArg::Idle => Load::Idle,
    };
    let frames = match (&args.frames, &args.synthetic) {
        (Some(p), _) => FrameSet::from_path(p)?,
        (None, Some(size)) => {
            let (w, h) = parse_size(size)?;
            FrameSet::synthetic(w, h, args.synthetic_quality, args.synthetic_count)?
        }
        (None, None) if load == Load::Idle => FrameSet::synthetic(16, 16, 50, 1)?,
        (None, None) => bail!("give --frames PATH or --synthetic WxH"),
    };
    let frames = Arc::new(frames);
    if args.wss_target.is_none() && (args.tls_pin.is_some() || args.tls_cert.is_some()) {
        bail!("--tls-pin and --tls-cert go with --wss-target (WebSocket over TLS); QUIC takes --quic-pin or --quic-cert");
    }
    if args.wss_target.is_some() && args.transport != TransportArg::Ws {
        bail!("--wss-target is for --transport ws");
    }
    let transport: SharedTransport = match args.transport {
        TransportArg::Ws => {
            let (url, tls, addrs) = match &args.wss_target {
                Some(t) => {
                    let wt = Target::parse(t)?;
                    let addrs = wt.check_loopback(args.allow_remote).await?;
                    let pin = match (&args.tls_pin, &args.tls_cert) {
                        (Some(p), _) => quic::parse_pin(p)?,
                        (None, Some(f)) => quic::pin_of_pem_file(f)?,
                        (None, None) => bail!(
                            "--wss-target needs the server's certificate: --tls-pin SHA256 \
                             (printed by `framegate serve` at start) or --tls-cert PEM"
                        ),
                    };
                    let url = format!("wss://{}{}", wt.authority, args.ws_path);
                    (url, Some(Arc::new(quic::pinned_tls(pin)?)), addrs)
                }
                None => (target.ws_url(&args.ws_path), None, target_addrs.clone()),
            };
            Arc::new(WsTransport {
                url,
                tls,
                key: args.key.clone(),
                model: args.model.clone(),
                addrs,
            })
        }
        TransportArg::Quic => {
            let qt = match &args.quic_target {
                Some(t) => Target::parse(t)?,
                None => Target::parse(&format!("{}:8443", bracket(&target.host)))?,
            };
            let addrs = qt.check_loopback(args.allow_remote).await?;
            let pin = match (&args.quic_pin, &args.quic_cert) {
                (Some(p), _) => quic::parse_pin(p)?,
                (None, Some(f)) => quic::pin_of_pem_file(f)?,
                (None, None) => bail!(
                    "--transport quic needs the server's certificate: --quic-pin SHA256 \
                     (printed by `framegate serve` and `quic-echo` at start) or --quic-cert PEM"
                ),
            };
            Arc::new(QuicTransport::new(
                addrs[0],
                args.quic_server_name.clone().unwrap_or(qt.host.clone()),
                args.key.clone(),
                args.model.clone(),
                pin,
                args.quic_endpoints.min(args.sessions),
            )?)
        }
        TransportArg::Http => {
            let path = if args.model.is_empty() {
                args.http_path.clone()
            } else {
                format!("{}?model={}", args.http_path, args.model)
            };
            Arc::new(
                HttpTransport::new(
                    target.http_url(&path),
                    args.key.clone(),
                    args.http_multipart,
                    args.in_flight,
                )?
                .connect_to(target_addrs.clone()),
            )
        }
    };
    let server = server_info(&target, &target_addrs, &args.key, args.label.clone()).await;
    if server.synthetic {
        eprintln!("framegate-load: the server runs the SYNTHETIC backend (no model inference)");
    }
    let plan = RunPlan {
        sessions: args.sessions,
        load,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        drain: Duration::from_secs_f64(args.drain.max(0.0)),
        connect_parallelism: args.connect_parallelism,
        ignore_credits: args.ignore_credits,
        refusal_backoff: Duration::from_millis(args.refusal_backoff_ms),
    };
    let started_at = rfc3339(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    // Sending starts after a short grace for opening sessions; idle runs
    // measure from the start.
    let open_grace = Duration::from_millis(200 + (args.sessions as u64).min(10_000) / 2);
    let start = Instant::now() + open_grace;
    let measure_start_monotonic_s = monotonic_now_s().map(|now| {
        now + (start + plan.warmup)
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    });
    let mut recorder = Recorder::new(start + plan.warmup);
    if let Some(p) = &args.frame_log {
        let file = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        // A large buffer: rows are written under the recorder's lock.
        let out = std::io::BufWriter::with_capacity(1 << 20, file);
        recorder = recorder.with_frame_log(Box::new(out));
    }
    let recorder = Arc::new(recorder);

    let progress = {
        let recorder = recorder.clone();
        let quiet = args.quiet;
        let total = plan.warmup + plan.duration;
        let pid = args.server_pid;
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_answered = 0;
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                if let Some(pid) = pid {
                    if let Some(b) = rss_bytes(pid) {
                        recorder.rss(Instant::now(), b);
                    }
                }
                if quiet {
                    continue;
                }
                let (sent, answered, dropped, errors, lat) = recorder.snapshot();
                let el = Instant::now().saturating_duration_since(start);
                let line = format!(
                    "[{:>5.1}/{:.0} s] sent {sent} answered {answered} ({}/s) dropped {dropped} errors {errors} p50 {:.1} ms p99 {:.1} ms",
                    el.as_secs_f64(),
                    total.as_secs_f64(),
                    answered - last_answered,
                    lat.value_at_quantile(0.5) as f64 / 1000.0,
                    lat.value_at_quantile(0.99) as f64 / 1000.0,
                );
                last_answered = answered;
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else if n.is_multiple_of(5) {
                    eprintln!("{line}");
                }
            }
        })
    };
    driver::run(&plan, transport, frames.clone(), recorder.clone(), start).await;
    progress.abort();
    if !args.quiet && std::io::stderr().is_terminal() {
        eprintln!();
    }
    let totals = recorder.finish();
    let offered = match load {
        Load::Open { fps } => Some(fps * args.sessions as f64),
        _ => None,
    };
    let run = RunInfo {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        target: args.target.clone(),
        transport: match args.transport {
            TransportArg::Ws => "ws",
            TransportArg::Quic => "quic",
            TransportArg::Http => "http",
        }
        .into(),
        mode: match args.mode {
            ModeArg::Open => "open",
            ModeArg::Closed => "closed",
            ModeArg::Idle => "idle",
        }
        .into(),
        sessions: args.sessions,
        fps_per_session: (args.mode == ModeArg::Open).then_some(args.fps),
        in_flight_per_session: (args.mode == ModeArg::Closed
            || (args.transport == TransportArg::Http && args.mode == ModeArg::Open))
            .then_some(args.in_flight),
        duration_s: args.duration,
        warmup_s: args.warmup,
        measure_start_monotonic_s,
        frames: frames.info.clone(),
        command,
    };
    let report = Report::build(run, server, offered, &totals);
    println!("{}", report.summary());
    if let Some(p) = &args.json {
        std::fs::write(p, report.to_json()).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, report.to_html()).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &args.frame_log {
        recorder
            .finish_frame_log()
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// This machine's `CLOCK_MONOTONIC` now, in seconds (the clock `Instant`
/// reads on Linux, and `perf record -k CLOCK_MONOTONIC` stamps samples
/// with).
fn monotonic_now_s() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's `measure_start_monotonic_s` is only useful if it is on
    /// the clock `Instant` reads: two readings must be as far apart as the
    /// `Instant`s taken between them (to within the time the reads take).
    #[test]
    fn the_monotonic_clock_in_seconds_keeps_pace_with_instant() {
        let a = monotonic_now_s().expect("CLOCK_MONOTONIC");
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(60));
        let i1 = Instant::now();
        let b = monotonic_now_s().expect("CLOCK_MONOTONIC");
        let clock = b - a;
        let instant = (i1 - i0).as_secs_f64();
        assert!(
            clock >= instant && clock - instant < 0.02,
            "CLOCK_MONOTONIC moved {clock:.6} s around an Instant span of {instant:.6} s"
        );
        assert!(a > 0.0, "seconds, not a zero clock: {a}");
    }
}
