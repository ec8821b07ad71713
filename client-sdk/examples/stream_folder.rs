//! Streams a folder of JPEG files as a camera would — at a fixed frame rate,
//! looping — and prints the detections as they arrive.
//!
//! ```text
//! cargo run -p framegate-client --example stream_folder -- \
//!     'quic://127.0.0.1:8443?pin=SHA256' KEY server/tests/data --fps 15 --policy latest-only
//! ```
//!
//! Options: `--fps N` (default 10), `--frames N` (stop after N frames;
//! default: one pass over the folder), `--policy block|drop-oldest|latest-only`.

use std::time::Duration;

use framegate_client::{Answer, Client, Image, OverloadPolicy, SessionOptions};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(key), Some(dir)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: stream_folder URL KEY DIR [--fps N] [--frames N] [--policy P]");
    };
    let (mut fps, mut frames, mut policy) = (10.0f64, None, OverloadPolicy::Block);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--fps" => fps = value.parse()?,
            "--frames" => frames = Some(value.parse::<usize>()?),
            "--policy" => policy = value.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    files.sort();
    let images: Vec<(String, Image)> = files
        .iter()
        .filter_map(|p| {
            Image::from_file(p)
                .ok()
                .map(|i| (p.display().to_string(), i))
        })
        .collect();
    anyhow::ensure!(!images.is_empty(), "no readable JPEG files in {dir}");
    let total = frames.unwrap_or(images.len());

    let client = Client::connect(&url, &key).await?;
    let mut session = client
        .session(SessionOptions::default().policy(policy))
        .await?;
    println!(
        "session {} on model {}",
        session.session_id(),
        session.model()
    );
    let sender = session.sender();
    let camera = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for i in 0..total {
            tick.tick().await;
            let (_, img) = &images[i % images.len()];
            sender.send(img.clone()).await?;
        }
        anyhow::Ok(())
    });
    let mut answered = 0;
    while answered < total {
        let Some(answer) = session.next().await else {
            break;
        };
        answered += 1;
        match answer? {
            Answer::Detections(d) => {
                let objs: Vec<String> = d
                    .detections
                    .iter()
                    .map(|o| format!("{} {:.2}", o.label, o.score))
                    .collect();
                println!(
                    "#{:<4} {:>6.1} ms  {}",
                    d.seq,
                    f64::from(d.timings.total_us) / 1000.0,
                    objs.join(", ")
                );
            }
            Answer::Dropped { seq, reason, .. } => println!("#{seq:<4} dropped ({reason:?})"),
            Answer::Error {
                seq,
                code,
                message,
                retry_after,
            } => match retry_after {
                Some(after) => {
                    println!("#{seq:<4} error {code:?}: {message} (retry after {after:?})")
                }
                None => println!("#{seq:<4} error {code:?}: {message}"),
            },
            Answer::Lost { seq } => println!("#{seq:<4} lost"),
        }
    }
    camera.await??;
    session.finish().await?;
    Ok(())
}
