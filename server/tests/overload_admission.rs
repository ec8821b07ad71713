//! Far past capacity, admission by expected queue wait keeps admitted frames
//! fast and refuses the rest at once (docs/architecture.md, "Admission by
//! expected queue wait").
//!
//! The synthetic backend sleeps 20 ms per batch of up to 4 frames on one
//! worker: 200 frames/s, 5 ms per frame when batches are full (labelled:
//! this is about admission, not inference). `pipeline.max_queue_wait_ms` is
//! 100. Over WebSocket, 16 sessions of one tenant send frames every 2 ms
//! each ignoring credits (about 40× capacity) while a second tenant's
//! well-behaved session streams one frame at a time; over HTTP, 48 callers
//! post back to back.
//!
//! Checked from the answers themselves, not from wall clocks: every frame
//! gets exactly one answer, in order; refusals say why (`Dropped{overloaded}`
//! naming the budget, `Dropped{queue-full}` for the noisy tenant over its
//! share while the calm one has a frame queued, `Error{no-credit}` beyond
//! the window; HTTP 429 with `Retry-After`); the calm tenant gets every
//! frame computed; and each computed frame's own stage timings show it
//! started within the budget (at least the queue floor's 8 frames, two
//! batches here) plus one batch (`queue_us`, and `total_us` less
//! its own batch for the time since the gateway took it, session wait
//! included) — plus slack for a shared test machine. Before the budget the
//! flood queued 16 sessions × 4 frames in the pipeline: about 320 ms of
//! queue, with 4 more frames per session waiting in the session behind them.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use framegate_protocol::{
    Bytes, ClientMessage, Codec, DropReason, ErrorCode, Frame, Hello, ServerMessage,
};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const NOISY_KEY: &str = "key-noisy-overload-0001";
const CALM_KEY: &str = "key-calm-overload-0002";
const BUDGET: Duration = Duration::from_millis(100);
const BATCH_COST: Duration = Duration::from_millis(20);
const NOISY_SESSIONS: usize = 16;
const NOISY_FRAMES: u64 = 120;
const NOISY_EVERY: Duration = Duration::from_millis(2);
const CALM_FRAMES: u64 = 20;
/// Scheduling noise of a loaded, shared test machine, and the service-time
/// estimate lagging a batch behind.
const SLACK: Duration = Duration::from_millis(50);

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let mut cfg = format!(
        "[synthetic]\nfixed_us = {}\nwait = \"sleep\"\n\
         [pipeline]\nworkers = 1\nmax_batch = 4\nmax_queue_wait_ms = {}\n\
         [session]\ncredits = 8\nmax_in_pipeline = 4\n",
        BATCH_COST.as_micros(),
        BUDGET.as_millis()
    );
    for (tenant, key) in [("noisy", NOISY_KEY), ("calm", CALM_KEY), ("dev", KEY)] {
        cfg.push_str(&format!(
            "[[auth.keys]]\ntenant = \"{tenant}\"\nsha256 = \"{}\"\n",
            hex::encode(Sha256::digest(key.as_bytes()))
        ));
    }
    let path = dir.join("framegate.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

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

async fn session(gw: &Gateway, key: &str) -> Ws {
    let mut ws = ws_connect(gw, None).await;
    send(&mut ws, &ClientMessage::Hello(Hello::new(key))).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(_)) => ws,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[derive(Default)]
struct Tally {
    detections: u64,
    overloaded: u64,
    queue_full: u64,
    no_credit: u64,
    /// Per computed frame: (queue µs, µs from the gateway taking it to its
    /// batch starting), and the longest batch seen (infer µs).
    waits: Vec<(u64, u64)>,
    longest_batch_us: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.detections += other.detections;
        self.overloaded += other.overloaded;
        self.queue_full += other.queue_full;
        self.no_credit += other.no_credit;
        self.waits.extend(other.waits);
        self.longest_batch_us = self.longest_batch_us.max(other.longest_batch_us);
    }

    /// Every computed frame started within the budget plus one batch. The
    /// budget is at least the queue's floor of 8 frames a worker: two of
    /// this test's batches of 4 (`pipeline::wait`), which a busy test
    /// machine can make longer than `BUDGET`.
    fn check_waits(&self, who: &str) {
        let floor_us = 2 * self.longest_batch_us;
        let bound = (BUDGET.as_micros() as u64).max(floor_us)
            + SLACK.as_micros() as u64
            + self.longest_batch_us;
        let worst_queue = self.waits.iter().map(|w| w.0).max().unwrap_or(0);
        let worst_start = self.waits.iter().map(|w| w.1).max().unwrap_or(0);
        eprintln!(
            "{who}: {} computed, {} overloaded, {} queue-full, {} no-credit; worst queue {} ms, \
             worst start {} ms, bound {} ms (longest batch {} ms)",
            self.detections,
            self.overloaded,
            self.queue_full,
            self.no_credit,
            worst_queue / 1000,
            worst_start / 1000,
            bound / 1000,
            self.longest_batch_us / 1000
        );
        assert!(
            worst_queue <= bound,
            "{who}: a computed frame queued {worst_queue} µs, over {bound} µs"
        );
        assert!(
            worst_start <= bound,
            "{who}: a computed frame started {worst_start} µs after the gateway took it, over {bound} µs"
        );
    }
}

fn on_detections(t: &mut Tally, d: &framegate_protocol::Detections) {
    let tm = &d.timings;
    t.detections += 1;
    // total_us runs to the end of the frame's own batch: less the batch
    // (backend and postprocess; no decode with this backend) it is the
    // time from the gateway taking the frame to its batch starting.
    let batch = u64::from(tm.infer_us) + u64::from(tm.postprocess_us);
    t.waits.push((
        u64::from(tm.queue_us),
        u64::from(tm.total_us).saturating_sub(batch),
    ));
    t.longest_batch_us = t.longest_batch_us.max(batch);
}

/// One noisy session: frames every [`NOISY_EVERY`] whatever the credits,
/// while every answer is read and checked (exactly one per frame, in order).
async fn noisy(ws: Ws) -> Tally {
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(NOISY_EVERY);
        for seq in 1..=NOISY_FRAMES {
            tick.tick().await;
            sink.send(Message::Binary(frame(seq).encode()))
                .await
                .expect("the gateway keeps reading");
        }
        sink
    });
    let mut t = Tally::default();
    let mut answered: BTreeSet<u64> = BTreeSet::new();
    let mut last = 0;
    let answer = |seq: u64, last: &mut u64, answered: &mut BTreeSet<u64>| {
        assert!(seq > *last, "answer for {seq} after {last}: out of order");
        assert!(answered.insert(seq), "{seq} answered twice");
        *last = seq;
    };
    while (answered.len() as u64) < NOISY_FRAMES {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("answers keep coming (hang guard)");
        let b = match next {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(_)) => continue,
            other => panic!("the session ended early: {other:?}"),
        };
        match ServerMessage::decode(&b, &Default::default()).unwrap() {
            ServerMessage::Detections(d) => {
                answer(d.seq, &mut last, &mut answered);
                on_detections(&mut t, &d);
            }
            ServerMessage::Dropped(d) => {
                match d.reason {
                    DropReason::Overloaded => {
                        assert!(d.message.contains("ms wait budget allows"), "{d:?}");
                        // The hint: about when the queue is back within
                        // its budget (at least 100 ms), never more than the
                        // whole wait.
                        let wait = expected_wait_ms(&d.message);
                        let after = d.retry_after_ms.expect("a retry hint") as u64;
                        assert!((100..=wait.max(100)).contains(&after), "{d:?}");
                        t.overloaded += d.seqs.len() as u64;
                    }
                    // Over its share of the (budget-sized) queue while
                    // the calm tenant has a frame queued.
                    DropReason::QueueFull => {
                        assert_eq!(d.retry_after_ms, Some(1000), "{d:?}");
                        t.queue_full += d.seqs.len() as u64
                    }
                    _ => panic!("unexpected reason: {d:?}"),
                }
                for s in &d.seqs {
                    answer(*s, &mut last, &mut answered);
                }
            }
            ServerMessage::Error(e) => {
                assert_eq!(e.code, ErrorCode::NoCredit, "{e:?}");
                answer(e.seq.expect("about a frame"), &mut last, &mut answered);
                t.no_credit += 1;
            }
            ServerMessage::Credit(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        (1..=NOISY_FRAMES).collect::<Vec<_>>()
    );
    drop(writer.await.unwrap());
    t
}

/// The "would wait about N ms" of an overload refusal.
fn expected_wait_ms(message: &str) -> u64 {
    let (_, rest) = message
        .split_once("would wait about ")
        .unwrap_or_else(|| panic!("no expected wait in {message:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

async fn refused_for_queue_wait(gw: &Gateway) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .find(|l| {
            l.starts_with("framegate_admission_refused_total{")
                && l.contains("reason=\"queue-wait\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no queue-wait refusal series:\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_past_capacity_gets_fast_answers_or_prompt_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;

    let mut floods = Vec::new();
    for _ in 0..NOISY_SESSIONS {
        let ws = session(&gw, NOISY_KEY).await;
        floods.push(tokio::spawn(noisy(ws)));
    }
    // The calm tenant, during the flood: one frame at a time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut calm_ws = session(&gw, CALM_KEY).await;
    let mut calm = Tally::default();
    for seq in 1..=CALM_FRAMES {
        send(&mut calm_ws, &frame(seq)).await;
        match recv(&mut calm_ws).await {
            Some(ServerMessage::Detections(d)) => {
                assert_eq!(d.seq, seq);
                on_detections(&mut calm, &d);
            }
            other => panic!("calm tenant, frame {seq}: expected Detections, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut noisy = Tally::default();
    for f in floods {
        noisy.add(f.await.unwrap());
    }
    let sent = NOISY_SESSIONS as u64 * NOISY_FRAMES;
    assert_eq!(
        noisy.detections + noisy.overloaded + noisy.queue_full + noisy.no_credit,
        sent
    );
    assert!(
        noisy.overloaded > 0,
        "about 40× capacity must be refused for queue wait: {} computed, {} no-credit",
        noisy.detections,
        noisy.no_credit
    );
    assert!(noisy.detections > 0);
    noisy.check_waits("noisy tenant");
    calm.check_waits("calm tenant");
    assert!(refused_for_queue_wait(&gw).await >= noisy.overloaded);
}

/// A 16×16 PNG.
fn small_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 16, 16);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .unwrap()
        .write_image_data(&[90; 16 * 16 * 3])
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_past_capacity_gets_429_with_retry_after_and_fast_answers() {
    const CALLERS: usize = 48;
    const REQUESTS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let png = small_png();
    let client = reqwest::Client::new();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (client, url, png) = (client.clone(), gw.url("/v1/detect"), png.clone());
        callers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            for _ in 0..REQUESTS {
                let r = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "image/png")
                    .body(png.clone())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                let body: serde_json::Value = r.json().await.unwrap();
                match status {
                    200 => {
                        let tm = &body["timings_us"];
                        let batch =
                            tm["infer"].as_u64().unwrap() + tm["postprocess"].as_u64().unwrap();
                        t.detections += 1;
                        // HTTP counts from the request's arrival, body
                        // read included: check the queue alone.
                        let queue = tm["queue"].as_u64().unwrap();
                        t.waits.push((queue, queue));
                        t.longest_batch_us = t.longest_batch_us.max(batch);
                    }
                    429 => {
                        assert_eq!(body["error"]["code"], "overloaded", "{body}");
                        assert!(
                            body["error"]["message"]
                                .as_str()
                                .unwrap()
                                .contains("ms wait budget allows"),
                            "{body}"
                        );
                        assert_eq!(body["error"]["retryable"], true, "{body}");
                        let after: u64 = retry_after
                            .expect("429 carries Retry-After")
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!(after >= 1, "{after}");
                        // The same wait in ms in the body; the header
                        // rounds it up to whole seconds.
                        let ms = body["error"]["retry_after_ms"]
                            .as_u64()
                            .expect("retry_after_ms");
                        assert_eq!(after, ms.div_ceil(1000).max(1), "{body}");
                        let wait = expected_wait_ms(body["error"]["message"].as_str().unwrap());
                        assert!((100..=wait.max(100)).contains(&ms), "{body}");
                        t.overloaded += 1;
                    }
                    other => panic!("unexpected status {other}: {body}"),
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for c in callers {
        all.add(c.await.unwrap());
    }
    assert_eq!(all.detections + all.overloaded, (CALLERS * REQUESTS) as u64);
    assert!(
        all.overloaded > 0,
        "48 callers on a queue of about 20 must be refused: {} computed",
        all.detections
    );
    assert!(all.detections > 0);
    all.check_waits("HTTP");
    assert!(refused_for_queue_wait(&gw).await >= all.overloaded);
}
