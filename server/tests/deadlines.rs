//! Per-frame deadlines: a frame that cannot be answered in time is dropped
//! before inference (reported as Dropped{deadline-exceeded}, never computed,
//! never billed); a frame with time to spare is computed.

mod support;

use std::time::{Duration, SystemTime};

use framegate_client::{Answer, Client, DropReason, FrameOptions, Image, SessionOptions};
use futures_util::StreamExt;
use support::*;

#[tokio::test]
async fn frames_past_their_deadline_are_dropped_not_computed() {
    let gw = Gateway::start(&[]).await;
    let client = Client::connect(&format!("ws://{}", gw.addr), KEY)
        .await
        .unwrap();
    let mut s = client.session(SessionOptions::default()).await.unwrap();
    let img = Image::encoded(data("dog.jpg")).unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    let later = SystemTime::now() + Duration::from_secs(120);
    s.send_with(img.clone(), FrameOptions::default().deadline(past))
        .await
        .unwrap();
    s.send_with(img.clone(), FrameOptions::default().deadline(later))
        .await
        .unwrap();
    s.send_with(img, FrameOptions::default().deadline(past))
        .await
        .unwrap();
    s.finish().await.unwrap();
    let mut answers = Vec::new();
    while let Some(a) = s.next().await {
        answers.push(a.unwrap());
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    for i in [0, 2] {
        match &answers[i] {
            Answer::Dropped { reason, seq, .. } => {
                assert_eq!(*reason, DropReason::DeadlineExceeded);
                assert_eq!(*seq, i as u64 + 1);
            }
            other => panic!("expected a deadline drop, got {other:?}"),
        }
    }
    match &answers[1] {
        Answer::Detections(d) => assert_eq!((d.seq, d.usage.frames), (2, 1)),
        other => panic!("expected Detections, got {other:?}"),
    }
    assert_eq!(
        gw.counters().await,
        (1, 1),
        "only the frame in time was computed and billed"
    );
}
