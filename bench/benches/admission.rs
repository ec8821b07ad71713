//! What admitting a frame costs: the credential check (once per session,
//! once per one-shot request) and the rate-limit decision (every frame),
//! with the state in this process and in Redis; the ingress queue push+pop
//! measured in the same run as the peer to compare with.
//!
//! The Redis cases start their own `redis-server` on a free loopback port
//! (say so and skip them when it is not installed).
//!
//! ```sh
//! cargo bench -p framegate-bench --bench admission
//! ```
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::FutureExt;

use framegate::auth::{Authenticator, Principal};
use framegate::config::{PlanLimits, RateLimitConfig};
use framegate::pipeline::queue::IngressQueue;
use framegate::ratelimit::{RateLimiter, Subject};
use framegate::session::SystemClock;

const KEY: &str = "fg_live_0123456789abcdef0123456789abcdef";

/// Limits high enough that every decision admits: the cost measured is the
/// decision, not a refusal path.
fn limits() -> PlanLimits {
    PlanLimits {
        frames_per_sec: Some(1e9),
        burst: Some(1_000_000_000),
        ..Default::default()
    }
}

fn principal(auth: &Authenticator) -> Principal {
    let mut p = auth.authenticate(KEY).now_or_never().unwrap().unwrap();
    p.limits = Arc::new(limits());
    p
}

fn local(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("peer_ingress_queue_push_pop", |b| {
        let q = IngressQueue::new(256);
        b.iter(|| {
            q.push(black_box(1u64)).unwrap();
            black_box(q.pop())
        })
    });
    let auth = Authenticator::single(KEY, "acme");
    g.bench_function("auth_api_key", |b| {
        b.iter(|| {
            black_box(
                auth.authenticate(black_box(KEY))
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    let rl = RateLimiter::local(Arc::new(SystemClock));
    let p = principal(&auth);
    let subject = Subject::new(&limits(), &p);
    g.bench_function("ratelimit_local_frame", |b| {
        b.iter(|| {
            let d = rl.frames(black_box(&subject), 1).now_or_never().unwrap();
            black_box(d)
        })
    });
    // One-shot detect: authenticate, build the caller's buckets, decide.
    g.bench_function("auth_plus_ratelimit_local_detect", |b| {
        b.iter(|| {
            let p = principal(&auth);
            let s = Subject::new(&limits(), &p);
            rl.detect(&s).now_or_never().unwrap().unwrap();
        })
    });
    // Many tenants: the sharded map under a spread of keys.
    let subjects: Vec<Subject> = (0..10_000)
        .map(|i| {
            let mut p = principal(&auth);
            p.tenant = format!("t{i}");
            Subject::new(&limits(), &p)
        })
        .collect();
    g.bench_function("ratelimit_local_frame_10k_tenants", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % subjects.len();
            black_box(rl.frames(&subjects[i], 1).now_or_never().unwrap())
        })
    });
    g.finish();
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Redis, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((Redis(child), format!("redis://127.0.0.1:{port}/")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn redis(c: &mut Criterion) {
    let Some((_server, url)) = start_redis() else {
        eprintln!("admission/ratelimit_redis_*: SKIPPED, redis-server is not installed");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = RateLimitConfig {
        store: "redis".into(),
        redis_url: Some(url),
        timeout_ms: 1000,
        ..Default::default()
    };
    let rl =
        rt.block_on(async { RateLimiter::from_config(&cfg, "", Arc::new(SystemClock)).unwrap() });
    let auth = Authenticator::single(KEY, "acme");
    let p = principal(&auth);
    let subject = Subject::new(&limits(), &p);
    let mut key_limits = limits();
    key_limits.frames_per_sec = Some(5e8);
    let mut pk = p.clone();
    pk.limits = Arc::new(key_limits);
    let tenant_and_key = Subject::new(&limits(), &pk);
    // Warm the connection and load the script.
    rt.block_on(rl.frames(&subject, 1));

    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ratelimit_redis_frame", |b| {
        b.iter(|| {
            let d = rt.block_on(rl.frames(&subject, 1));
            assert_eq!(d.admitted, 1);
        })
    });
    g.bench_function("ratelimit_redis_frame_tenant_and_key", |b| {
        b.iter(|| {
            let d = rt.block_on(rl.frames(&tenant_and_key, 1));
            assert_eq!(d.admitted, 1);
        })
    });
    // Five frames decided in one call (a session's waiting frames): the
    // cost per frame is a fifth of one round trip.
    g.throughput(Throughput::Elements(5));
    g.bench_function("ratelimit_redis_5_frames_one_call", |b| {
        b.iter(|| {
            let d = rt.block_on(rl.frames(&subject, 5));
            assert_eq!(d.admitted, 5);
        })
    });
    g.finish();
    assert!(
        !rl.is_shared() || rl.local_buckets() == 0,
        "no fallback used"
    );
}

criterion_group!(benches, local, redis);
criterion_main!(benches);
