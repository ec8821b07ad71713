//! QUIC vs WebSocket at equal offered load: opens SESSIONS sessions, each
//! sending one image at FPS frames/s (open loop, `drop-oldest`), for SECONDS,
//! and reports answered frames/s and the send→answer latency percentiles.
//! Used for docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p framegate-client --example transport_bench -- \
//!     URL KEY IMAGE --fps 20 --seconds 20 --sessions 2
//! ```

use std::time::{Duration, Instant};

use framegate_client::{Answer, Client, Image, OverloadPolicy, SessionOptions};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(key), Some(image)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!(
            "usage: transport_bench URL KEY IMAGE [--fps N] [--seconds N] [--sessions N]"
        );
    };
    let (mut fps, mut seconds, mut sessions) = (20.0f64, 20u64, 1usize);
    while let Some(flag) = args.next() {
        let v = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--fps" => fps = v.parse()?,
            "--seconds" => seconds = v.parse()?,
            "--sessions" => sessions = v.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let img = Image::from_file(&image)?;
    let client = Client::connect(&url, &key).await?;
    // Warm-up: one frame.
    client.detect(img.clone()).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let client = client.clone();
        let img = img.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client
                .session(SessionOptions::default().policy(OverloadPolicy::DropOldest))
                .await?;
            let sender = s.sender();
            let n = (fps * seconds as f64) as u64;
            let send = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps));
                let mut sent_at = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    tick.tick().await;
                    sent_at.push(Instant::now());
                    sender.send(img.clone()).await?;
                }
                anyhow::Ok(sent_at)
            });
            let mut answers = Vec::new();
            for _ in 0..n {
                let Some(a) = s.next().await else { break };
                answers.push((a?, Instant::now()));
            }
            let sent_at = send.await??;
            s.finish().await?;
            let mut lat = Vec::new();
            let mut dropped = 0u64;
            for (a, at) in answers {
                match a {
                    Answer::Detections(d) => lat.push(at - sent_at[(d.seq - 1) as usize]),
                    _ => dropped += 1,
                }
            }
            anyhow::Ok((lat, dropped))
        }));
    }
    let mut lat = Vec::new();
    let mut dropped = 0;
    for t in tasks {
        let (l, d) = t.await??;
        lat.extend(l);
        dropped += d;
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "{url}: offered {:.0} fps, answered {:.1} fps, dropped {dropped}, p50 {:.1} ms, p99 {:.1} ms ({} frames)",
        fps * sessions as f64,
        lat.len() as f64 / wall,
        pct(0.5),
        pct(0.99),
        lat.len()
    );
    Ok(())
}
