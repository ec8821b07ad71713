//! Many WebSocket sessions at once: every frame gets exactly one answer, in
//! order per session, and each session only sees its own frames.

mod support;

use framegate_protocol::ServerMessage;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_sessions_each_get_one_answer_per_frame_in_order() {
    const SESSIONS: usize = 32;
    const FRAMES: u64 = 6;
    // 192 frames at once is seconds of work on two workers: far more than
    // the latency budget queues. This test is about isolation and order,
    // so admission by expected wait is off (tests/overload_admission.rs
    // covers it).
    let gw = Gateway::start(&["--max-queue-wait-ms", "0"]).await;
    let photos = [
        "dog.jpg",
        "person.jpg",
        "horses.jpg",
        "giraffe.jpg",
        "kite.jpg",
    ];
    let sizes = [
        (768u32, 576u32),
        (640, 424),
        (773, 512),
        (500, 500),
        (1352, 900),
    ];
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let (mut ws, _) = open_session(&gw).await;
        let photo = s % photos.len();
        let jpeg = data(photos[photo]);
        let size = sizes[photo];
        tasks.push(tokio::spawn(async move {
            // Sequence numbers are unique per session so answers can be told apart.
            let base = (s as u64 + 1) * 1000;
            let seqs: Vec<u64> = (0..FRAMES).map(|i| base + i).collect();
            // Send all frames (credits default to 8 ≥ FRAMES), then read.
            for &seq in &seqs {
                send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
            }
            let mut answered = Vec::new();
            for _ in 0..FRAMES {
                match recv(&mut ws).await {
                    Some(ServerMessage::Detections(d)) => {
                        assert_eq!(
                            (d.width, d.height),
                            size,
                            "session {s} got another session's frame"
                        );
                        answered.push(d.seq);
                    }
                    other => panic!("session {s}: expected Detections, got {other:?}"),
                }
            }
            assert_eq!(
                answered, seqs,
                "session {s}: answers out of order or missing"
            );
            answered.len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("session task");
    }
    assert_eq!(total, SESSIONS * FRAMES as usize);
}
