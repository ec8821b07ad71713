//! Backpressure: a client sending ten times faster than the gateway serves
//! gets exactly one answer per frame, in order; the dropping policies report
//! their drops in Dropped (never billed, never computed), `block` drops
//! nothing; the gateway's memory stays bounded while far more bytes are
//! sent than it could hold.

mod support;

use std::time::Duration;

use framegate_client::{Answer, Client, DropReason, Image, OverloadPolicy, SessionOptions};
use futures_util::StreamExt;
use support::*;

/// 640×480 raw RGB: 900 KiB per frame, so buffering frames would show.
fn big_frame(i: u8) -> Image {
    let mut px = vec![0u8; 640 * 480 * 3];
    for (j, p) in px.iter_mut().enumerate() {
        *p = (j as u8).wrapping_mul(31).wrapping_add(i);
    }
    Image::rgb8(640, 480, px).unwrap()
}

struct Outcome {
    detections: u64,
    dropped: u64,
    last_usage: u64,
    peak_rss: u64,
}

async fn flood(
    gw: &Gateway,
    client: &Client,
    policy: OverloadPolicy,
    frames: u64,
    interval: Duration,
) -> Outcome {
    let mut s = client
        .session(SessionOptions::default().policy(policy))
        .await
        .unwrap();
    let sender = s.sender();
    let images: Vec<Image> = (0..4).map(big_frame).collect();
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        for i in 0..frames {
            tick.tick().await;
            sender.send(images[i as usize % 4].clone()).await.unwrap();
        }
    });
    let mut next = 1;
    let mut out = Outcome {
        detections: 0,
        dropped: 0,
        last_usage: 0,
        peak_rss: 0,
    };
    while next <= frames {
        let a = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("answers keep coming")
            .expect("the session goes on")
            .unwrap();
        assert_eq!(a.seq(), next, "one answer per frame, in order");
        next += 1;
        match a {
            Answer::Detections(d) => {
                out.detections += 1;
                out.last_usage = d.usage.frames;
            }
            Answer::Dropped { reason, .. } => {
                assert!(
                    matches!(reason, DropReason::Superseded | DropReason::NoCredit),
                    "{reason:?}"
                );
                out.dropped += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        out.peak_rss = out.peak_rss.max(gw.rss_bytes());
    }
    send.await.unwrap();
    s.finish().await.unwrap();
    assert!(
        s.next().await.is_none(),
        "nothing beyond one answer per frame"
    );
    assert_eq!(next, frames + 1, "every frame answered");
    out
}

#[tokio::test]
async fn ten_times_faster_client_bounded_memory_and_reported_drops() {
    // Under `block` the session keeps 8 frames in flight on one worker, so
    // its last frames wait several service times in the session; on a busy
    // machine that can pass the latency budget. This test is about the
    // overload policies and memory, so admission by expected wait is off
    // (tests/overload_admission.rs covers it).
    let gw = Gateway::start(&[
        "--workers",
        "1",
        "--max-batch",
        "1",
        "--max-queue-wait-ms",
        "0",
    ])
    .await;
    let client = Client::connect(&format!("{}?pin={}", gw.quic_url(), gw.fingerprint()), KEY)
        .await
        .unwrap();
    // How fast does the gateway serve? One frame, alone.
    let mut s = client.session(SessionOptions::default()).await.unwrap();
    s.send(big_frame(9)).await.unwrap();
    let service = match s.next().await.unwrap().unwrap() {
        Answer::Detections(d) => Duration::from_micros(u64::from(d.timings.total_us)),
        other => panic!("{other:?}"),
    };
    drop(s);
    let interval = (service / 10).max(Duration::from_micros(500));
    let baseline = gw.rss_bytes();

    let frames = 120;
    for policy in [OverloadPolicy::DropOldest, OverloadPolicy::LatestOnly] {
        let o = flood(&gw, &client, policy, frames, interval).await;
        eprintln!(
            "{policy:?}: {} computed, {} dropped, peak RSS {} MiB (baseline {} MiB), {} MiB sent",
            o.detections,
            o.dropped,
            o.peak_rss >> 20,
            baseline >> 20,
            (frames * 640 * 480 * 3) >> 20
        );
        assert_eq!(o.detections + o.dropped, frames);
        assert!(o.dropped > 0, "{policy:?} at 10x must drop stale frames");
        assert_eq!(
            o.last_usage, o.detections,
            "only computed frames are billed"
        );
        // 120 × 900 KiB ≈ 105 MiB were sent; a bounded gateway holds a few
        // frames per session, not the backlog.
        assert!(
            o.peak_rss < baseline + (64 << 20),
            "RSS grew from {baseline} to {}",
            o.peak_rss
        );
    }
    // Block: the SDK waits for credit, so nothing is dropped.
    let o = flood(&gw, &client, OverloadPolicy::Block, 30, interval).await;
    assert_eq!((o.detections, o.dropped), (30, 0));
    assert!(o.peak_rss < baseline + (64 << 20));
    // Dropped frames were never computed: every computed frame was billed.
    let (inferred, billed) = gw.counters().await;
    assert_eq!(inferred, billed);
}
