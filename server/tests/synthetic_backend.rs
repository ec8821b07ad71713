//! `--backend synthetic`: deterministic made-up boxes without the model,
//! reported as synthetic, over HTTP and WebSocket.

mod support;

use framegate_protocol::ServerMessage;
use support::*;

#[tokio::test]
async fn synthetic_backend_answers_deterministically_and_says_so() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    assert!(
        gw.stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("SYNTHETIC")),
        "start-up says the backend is synthetic"
    );
    let models: serde_json::Value = reqwest::Client::new()
        .get(gw.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["models"][0]["backend"], "synthetic", "{models}");

    let dog = data("dog.jpg");
    let first: serde_json::Value = gw
        .detect(dog.clone(), "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    let again: serde_json::Value = gw
        .detect(dog.clone(), "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["detections"], again["detections"]);
    let dets = dets_from_json(&first);
    assert!((1..=3).contains(&dets.len()), "{first}");
    for d in &dets {
        assert!(d.xyxy[2] <= 768.0 && d.xyxy[3] <= 576.0, "{d:?}");
    }
    // No decode, no model: the stage timings say so.
    assert_eq!(first["timings_us"]["decode"], 0);

    let other: serde_json::Value = gw
        .detect(data("person.jpg"), "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["detections"], other["detections"]);

    let (mut ws, _) = open_session(&gw).await;
    send(&mut ws, &jpeg_frame(1, &dog)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Detections(d)) => {
            assert_eq!(d.seq, 1);
            let got = dets_from_proto(&d);
            assert_eq!(got.len(), dets.len());
            for (g, h) in got.iter().zip(&dets) {
                assert_eq!(g.class_id, h.class_id);
                assert!(iou(&g.xyxy, &h.xyxy) > 0.99, "{g:?} vs {h:?}");
            }
        }
        other => panic!("expected Detections, got {other:?}"),
    }
}
