//! Throughput of the usage accumulator's hot path (usage events per second).
//!
//! `cargo bench -p framegate --bench accumulator` — a plain timing harness
//! (no criterion): each case runs a fixed number of events, best of 5.
//! Cases: one thread recording through a kept handle (a WebSocket session);
//! one thread looking the series up per event (an HTTP request); two threads
//! on the same series (worst-case contention on one cache line); two threads
//! on different series; and a drain of 10,000 series.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framegate::metering::UsageAccumulator;

const EVENTS: u64 = 10_000_000;

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn report(name: &str, events: u64, d: Duration) {
    println!(
        "{name:<48} {:>8.1} M events/s  ({:.1} ns/event)",
        events as f64 / d.as_secs_f64() / 1e6,
        d.as_nanos() as f64 / events as f64
    );
}

fn threads(acc: &Arc<UsageAccumulator>, n: usize, same_series: bool) -> Duration {
    let start = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|t| {
            let acc = acc.clone();
            std::thread::spawn(move || {
                let tenant = if same_series {
                    "acme".to_string()
                } else {
                    format!("t{t}")
                };
                let h = acc.handle(&tenant, "k", "m");
                for i in 0..EVENTS / n as u64 {
                    h.record(black_box(i & 1023));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

fn main() {
    let acc = Arc::new(UsageAccumulator::new(60));
    let h = acc.handle("acme", "k", "nanodet-g");
    let d = best_of(5, || {
        let start = Instant::now();
        for i in 0..EVENTS {
            h.record(black_box(i & 1023));
        }
        start.elapsed()
    });
    report("record, kept handle, 1 thread", EVENTS, d);

    for t in 0..100 {
        acc.handle(&format!("tenant{t}"), "k", "nanodet-g");
    }
    let d = best_of(5, || {
        let start = Instant::now();
        for i in 0..EVENTS / 10 {
            acc.handle(black_box("acme"), "k", "nanodet-g")
                .record(i & 1023);
        }
        start.elapsed()
    });
    report("lookup + record, 101 series, 1 thread", EVENTS / 10, d);

    let d = best_of(5, || threads(&acc, 2, true));
    report("record, 2 threads, same series", EVENTS, d);
    let d = best_of(5, || threads(&acc, 2, false));
    report("record, 2 threads, own series", EVENTS, d);

    let big = UsageAccumulator::new(60);
    let handles: Vec<_> = (0..10_000)
        .map(|i| big.handle(&format!("t{i}"), "k", "m"))
        .collect();
    let d = best_of(5, || {
        for h in &handles {
            h.record(1);
        }
        let start = Instant::now();
        black_box(big.drain(1_000));
        start.elapsed()
    });
    println!(
        "drain of 10,000 series                           {:>8.2} ms",
        d.as_secs_f64() * 1e3
    );
    let total = acc.drain(0).iter().map(|d| d.frames).sum::<u64>();
    assert!(total > 0);
}
