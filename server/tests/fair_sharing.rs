//! Fair sharing on the real server: a noisy tenant floods over several
//! WebSocket sessions (100× the quiet tenant's rate, twice what the
//! gateway can serve) while a quiet tenant streams at 20 fps. The quiet
//! tenant's p99 latency stays close to its unloaded p99 (measured first, in
//! the same run) and none of its frames is refused, while the noisy tenant
//! gets queue-full drops. The synthetic backend costs a fixed 4 ms per batch
//! of up to 4 frames on one worker (1000 fps), so the gateway saturates.
//!
//! The allowance is the bound of docs/architecture.md ("Fair sharing"):
//! with weights 1:1 the quiet frame is at most second in the dispatch order,
//! so it waits at most one batch in service plus `max_delay`, plus slack for
//! a shared test machine. Through one FIFO it would wait behind the noisy
//! backlog: `queue_capacity / max_batch` batches, 128 ms here. The latency
//! budget is off: this test is about the shares of a full queue, and a
//! sleep of 4 ms that overran to 16 ms on a busy test machine made the
//! budget refuse frames (`overloaded`) before the queue was full
//! (`tests/overload_admission.rs` covers the budget).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use framegate_protocol::{Bytes, ClientMessage, Codec, DropReason, Frame, Hello, ServerMessage};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use support::*;

const NOISY_KEY: &str = "key-noisy-tenant-0001";
const QUIET_KEY: &str = "key-quiet-tenant-0002";
const BATCH_COST: Duration = Duration::from_millis(4);
const MAX_DELAY: Duration = Duration::from_millis(2);
const QUIET_EVERY: Duration = Duration::from_millis(50);
const NOISY_SESSIONS: usize = 10;
/// Each noisy session's interval: together 100× the quiet rate.
const NOISY_EVERY: Duration = Duration::from_millis(5);
/// Scheduling noise of a loaded, shared test machine (the clients run on
/// the same cores as the gateway).
const SLACK: Duration = Duration::from_millis(60);
/// Quiet frames measured under load.
const LOADED_FRAMES: u64 = 160;

fn frame(seq: u64) -> ClientMessage {
    ClientMessage::Frame(Frame {
        seq,
        capture_ts_us: seq,
        codec: Codec::Rgb8,
        width: 16,
        height: 16,
        deadline_us: 0,
        payload: Bytes::from(vec![(seq % 251) as u8; 16 * 16 * 3]),
    })
}

async fn session(gw: &Gateway, key: &str) -> (Ws, u32) {
    let mut ws = ws_connect(gw, None).await;
    send(&mut ws, &ClientMessage::Hello(Hello::new(key))).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(w)) => (ws, w.credits),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The quiet tenant: `n` frames, one every [`QUIET_EVERY`]; end-to-end
/// latencies of the answered ones, their queueing delays as the gateway
/// measured them (`timings.queue_us`), and how many were dropped.
async fn quiet(ws: &mut Ws, first_seq: u64, n: u64) -> (Vec<Duration>, Vec<Duration>, u64) {
    let mut lat = Vec::new();
    let mut queued = Vec::new();
    let mut dropped = 0;
    let mut tick = tokio::time::interval(QUIET_EVERY);
    for seq in first_seq..first_seq + n {
        tick.tick().await;
        let t = Instant::now();
        send(ws, &frame(seq)).await;
        loop {
            match recv(ws).await {
                Some(ServerMessage::Detections(d)) => {
                    assert_eq!(d.seq, seq);
                    lat.push(t.elapsed());
                    queued.push(Duration::from_micros(u64::from(d.timings.queue_us)));
                    break;
                }
                Some(ServerMessage::Dropped(d)) => {
                    assert_eq!(d.seqs, vec![seq]);
                    dropped += 1;
                    break;
                }
                Some(ServerMessage::Credit(_)) => {}
                other => panic!("quiet: unexpected {other:?}"),
            }
        }
    }
    (lat, queued, dropped)
}

#[derive(Default)]
struct NoisyStats {
    answered: AtomicU64,
    queue_full: AtomicU64,
    /// Sum of answered latencies, µs.
    latency_us: AtomicU64,
}

/// One noisy session: a frame every [`NOISY_EVERY`] while it holds credit.
async fn noisy(mut ws: Ws, credits: u32, stop: Arc<AtomicBool>, stats: Arc<NoisyStats>) {
    let mut tick = tokio::time::interval(NOISY_EVERY);
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                if sent.len() < credits as usize {
                    seq += 1;
                    sent.insert(seq, Instant::now());
                    send(&mut ws, &frame(seq)).await;
                }
            }
            m = ws.next() => {
                let Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) = m else {
                    continue;
                };
                match ServerMessage::decode(&b, &Default::default()).unwrap() {
                    ServerMessage::Detections(d) => {
                        let t = sent.remove(&d.seq).expect("answer to a sent frame");
                        stats.answered.fetch_add(1, Ordering::Relaxed);
                        stats.latency_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    ServerMessage::Dropped(d) => {
                        assert_eq!(d.reason, DropReason::QueueFull, "{d:?}");
                        for s in &d.seqs {
                            sent.remove(s);
                        }
                        stats.queue_full.fetch_add(d.seqs.len() as u64, Ordering::Relaxed);
                    }
                    ServerMessage::Credit(_) => {}
                    other => panic!("noisy: unexpected {other:?}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_cannot_raise_a_quiet_tenants_latency() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = format!(
        "[synthetic]\nfixed_us = {}\nwait = \"sleep\"\n\
         [pipeline]\nworkers = 1\nmax_batch = 4\nmax_delay_us = {}\nqueue_capacity = 128\n\
         max_queue_wait_ms = 0\n\
         [session]\ncredits = 16\nmax_in_pipeline = 16\n",
        BATCH_COST.as_micros(),
        MAX_DELAY.as_micros()
    );
    for (tenant, key) in [("noisy", NOISY_KEY), ("quiet", QUIET_KEY)] {
        cfg.push_str(&format!(
            "[[auth.keys]]\ntenant = \"{tenant}\"\nsha256 = \"{}\"\n",
            hex::encode(Sha256::digest(key.as_bytes()))
        ));
    }
    let path = dir.path().join("framegate.toml");
    std::fs::write(&path, cfg).unwrap();
    let gw = Gateway::start(&["--backend", "synthetic", "--config", path.to_str().unwrap()]).await;
    let started = Instant::now();

    // 1. Unloaded: the quiet tenant alone (the first frames warm up).
    let (mut q, _) = session(&gw, QUIET_KEY).await;
    let _ = quiet(&mut q, 1, 5).await;
    let (mut unloaded, _, dropped) = quiet(&mut q, 6, 40).await;
    assert_eq!(dropped, 0);

    // 2. The noisy tenant floods over several sessions.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(NoisyStats::default());
    let mut floods = Vec::new();
    for _ in 0..NOISY_SESSIONS {
        let (ws, credits) = session(&gw, NOISY_KEY).await;
        floods.push(tokio::spawn(noisy(
            ws,
            credits,
            stop.clone(),
            stats.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drops_before = stats.queue_full.load(Ordering::Relaxed);

    // 3. Loaded: the quiet tenant again, same rate.
    let (mut loaded, mut queued, dropped) = quiet(&mut q, 100, LOADED_FRAMES).await;
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await.unwrap();
    }
    let answered = stats.answered.load(Ordering::Relaxed);
    let queue_full = stats.queue_full.load(Ordering::Relaxed);
    let noisy_mean =
        Duration::from_micros(stats.latency_us.load(Ordering::Relaxed) / answered.max(1));
    let (u50, u99) = (pct(&mut unloaded, 0.5), pct(&mut unloaded, 0.99));
    let (l50, l99) = (pct(&mut loaded, 0.5), pct(&mut loaded, 0.99));
    let (q50, q99) = (pct(&mut queued, 0.5), pct(&mut queued, 0.99));
    // The documented bound at 1:1, one worker, batches of 4: one batch in
    // service, then the quiet frame is at most second in line.
    let bound = BATCH_COST + MAX_DELAY;
    let allowance = bound + SLACK;
    eprintln!(
        "fair_sharing: quiet unloaded p50 {u50:?} p99 {u99:?}; loaded p50 {l50:?} p99 {l99:?} \
         (allowed p99 {:?}); quiet queueing p50 {q50:?} p99 {q99:?} (bound {bound:?}); quiet drops {dropped}; noisy answered {answered} \
         (mean latency {noisy_mean:?}), queue-full drops {queue_full} ({drops_before} in the first second); \
         {:.1} s",
        u99 + allowance,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        dropped, 0,
        "the quiet tenant was refused while another flooded"
    );
    assert_eq!(loaded.len() as u64, LOADED_FRAMES);
    assert!(queue_full > 0, "the noisy tenant got no queue-full drops");
    // The gateway really was saturated: the noisy tenant's frames queued.
    assert!(
        noisy_mean > BATCH_COST * 6,
        "noisy mean latency {noisy_mean:?}: the load did not saturate the gateway"
    );
    // The gateway's own measure of the queueing delay, which the clients'
    // share of the CPU does not blur.
    assert!(
        q99 <= bound + Duration::from_millis(30),
        "quiet queueing p99 {q99:?} vs the bound {bound:?}"
    );
    assert!(
        l99 <= u99 + allowance,
        "quiet p99 {l99:?} under load vs {u99:?} unloaded (allowance {allowance:?})"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
