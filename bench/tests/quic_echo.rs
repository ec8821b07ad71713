//! `quic-echo` answers the load harness's QUIC transport: a real
//! `quic-echo` process on a free loopback port, a short bounded closed loop
//! with the certificate pinned by the fingerprint it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use framegate_loadtest::driver::{self, Load, RunPlan};
use framegate_loadtest::frames::FrameSet;
use framegate_loadtest::recorder::Recorder;
use framegate_loadtest::transport::quic::{parse_pin, QuicTransport};

struct Echo(Child);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `quic-echo 127.0.0.1:0`; its address and certificate SHA-256.
fn start_echo() -> (Echo, SocketAddr, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quic-echo"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn quic-echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read quic-echo's first line");
    let echo = Echo(child);
    let rest = line
        .split("listening on quic://")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let fp = rest.split("sha256 ").nth(1).unwrap().trim().to_string();
    (echo, addr, fp)
}

#[tokio::test]
async fn quic_echo_answers_every_frame_of_a_closed_loop() {
    let (_echo, addr, fp) = start_echo();
    let transport = QuicTransport::new(
        addr,
        "localhost".into(),
        String::new(),
        String::new(),
        parse_pin(&fp).unwrap(),
        2,
    )
    .unwrap();
    let plan = RunPlan {
        sessions: 3,
        load: Load::Closed { in_flight: 4 },
        duration: Duration::from_millis(800),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(5),
        connect_parallelism: 4,
        ignore_credits: false,
        refusal_backoff: Duration::ZERO,
    };
    let frames = Arc::new(FrameSet::synthetic(64, 48, 80, 2).unwrap());
    let start = Instant::now() + Duration::from_millis(300);
    let rec = Arc::new(Recorder::new(start));
    let t0 = Instant::now();
    driver::run(&plan, Arc::new(transport), frames, rec.clone(), start).await;
    assert!(t0.elapsed() < Duration::from_secs(10), "bounded run");
    let t = rec.finish();
    assert_eq!(
        t.sessions_opened, 3,
        "connect errors: {:?}",
        t.connect_errors
    );
    assert!(t.answered > 0);
    assert_eq!(
        t.answered, t.sent,
        "dropped {:?} errors {:?}",
        t.dropped, t.errors
    );
    assert!(t.errors.is_empty() && t.dropped.is_empty());
    assert_eq!((t.lost, t.unmatched), (0, 0));
    assert!(t.closed_early.is_empty(), "{:?}", t.closed_early);
}

#[tokio::test]
async fn a_certificate_that_is_not_the_pinned_one_is_refused() {
    let (_echo, addr, _fp) = start_echo();
    let transport = QuicTransport::new(
        addr,
        "localhost".into(),
        String::new(),
        String::new(),
        [7u8; 32],
        1,
    )
    .unwrap();
    let plan = RunPlan {
        sessions: 1,
        load: Load::Closed { in_flight: 1 },
        duration: Duration::from_millis(200),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(1),
        connect_parallelism: 1,
        ignore_credits: false,
        refusal_backoff: Duration::ZERO,
    };
    let frames = Arc::new(FrameSet::synthetic(16, 16, 50, 1).unwrap());
    let start = Instant::now() + Duration::from_millis(100);
    let rec = Arc::new(Recorder::new(start));
    driver::run(&plan, Arc::new(transport), frames, rec.clone(), start).await;
    let t = rec.finish();
    assert_eq!((t.sessions_opened, t.sent), (0, 0));
    assert_eq!(
        t.connect_errors.values().sum::<u64>(),
        1,
        "{:?}",
        t.connect_errors
    );
}
