//! The Rust SDK against a real gateway over QUIC (stream and datagrams),
//! WebSocket and HTTP: every path gives the HTTP path's detections for the
//! same image, and a wrong certificate pin is refused.

mod support;

use framegate_client::{
    Answer, Client, ClientError, ClientOptions, Image, OverloadPolicy, SessionOptions,
};
use futures_util::StreamExt;
use support::*;

fn same(a: &framegate_client::Detections, b: &framegate_client::Detections, what: &str) {
    assert_eq!((a.width, a.height), (b.width, b.height), "{what}");
    assert_eq!(
        a.detections.len(),
        b.detections.len(),
        "{what}: {a:?} vs {b:?}"
    );
    assert!(!a.detections.is_empty());
    for (x, y) in a.detections.iter().zip(&b.detections) {
        assert_eq!(x.class_id, y.class_id, "{what}");
        let (bx, by) = ([x.x1, x.y1, x.x2, x.y2], [y.x1, y.y1, y.x2, y.y2]);
        assert!(iou(&bx, &by) > 0.999, "{what}: {bx:?} vs {by:?}");
        assert!((x.score - y.score).abs() < 1e-3, "{what}");
    }
}

async fn stream_three(
    client: &Client,
    opts: SessionOptions,
    jpeg: &[u8],
) -> Vec<framegate_client::Detections> {
    let mut s = client.session(opts).await.expect("session");
    for _ in 0..3 {
        s.send(Image::encoded(jpeg.to_vec()).unwrap())
            .await
            .unwrap();
    }
    s.finish().await.unwrap();
    let mut out = Vec::new();
    while let Some(a) = s.next().await {
        match a.expect("answer") {
            Answer::Detections(d) => out.push(d),
            other => panic!("expected Detections, got {other:?}"),
        }
    }
    assert_eq!(out.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(out[2].usage.frames, 3);
    out
}

#[tokio::test]
async fn sdk_over_quic_ws_wss_and_http_gives_the_http_detections() {
    let gw = Gateway::start(&["--https-listen", "127.0.0.1:0"]).await;
    let jpeg = data("dog.jpg");
    let http = Client::connect(&gw.url(""), KEY).await.unwrap();
    let reference = http
        .detect(Image::encoded(jpeg.clone()).unwrap())
        .await
        .unwrap();
    // The SDK's HTTP path is the gateway's JSON.
    let raw = dets_from_json(
        &gw.detect(jpeg.clone(), "image/jpeg")
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(raw.len(), reference.detections.len());

    let quic_url = format!("{}?pin={}", gw.quic_url(), gw.fingerprint());
    let quic = Client::connect(&quic_url, KEY).await.unwrap();
    same(
        &quic
            .detect(Image::encoded(jpeg.clone()).unwrap())
            .await
            .unwrap(),
        &reference,
        "quic one-shot",
    );
    for d in stream_three(&quic, SessionOptions::default(), &jpeg).await {
        same(&d, &reference, "quic stream");
    }
    // Datagrams: small raw frames fit one datagram each; every frame still
    // gets exactly one answer (Lost only if a datagram were lost).
    let mut s = quic
        .session(
            SessionOptions::default()
                .datagrams(true)
                .policy(OverloadPolicy::DropOldest),
        )
        .await
        .unwrap();
    for _ in 0..5 {
        s.send(Image::rgb8(16, 16, vec![128u8; 16 * 16 * 3]).unwrap())
            .await
            .unwrap();
    }
    // Read the answers before Bye: Bye travels on the stream and may
    // overtake datagrams (frames behind it are lost, by the spec).
    let mut seqs = Vec::new();
    let mut computed = 0;
    while seqs.len() < 5 {
        let a = tokio::time::timeout(std::time::Duration::from_secs(30), s.next())
            .await
            .expect("answers")
            .expect("session open")
            .unwrap();
        if let Answer::Detections(d) = &a {
            assert_eq!((d.width, d.height), (16, 16));
            computed += 1;
        }
        seqs.push(a.seq());
    }
    s.finish().await.unwrap();
    assert!(s.next().await.is_none());
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(computed >= 1);

    let ws = Client::connect(&format!("ws://{}", gw.addr), KEY)
        .await
        .unwrap();
    for d in stream_three(&ws, SessionOptions::default(), &jpeg).await {
        same(&d, &reference, "websocket stream");
    }
    // WSS with the same (development) certificate, pinned.
    let https = gw.https_addr();
    let wss = Client::connect(&format!("wss://{https}?pin={}", gw.fingerprint()), KEY)
        .await
        .unwrap();
    for d in stream_three(&wss, SessionOptions::default(), &jpeg).await {
        same(&d, &reference, "wss stream");
    }
    same(
        &wss.detect(Image::encoded(jpeg.clone()).unwrap())
            .await
            .unwrap(),
        &reference,
        "wss one-shot",
    );
    // The pin is taken from the options too.
    let pinned = Client::connect_with(
        &gw.quic_url(),
        KEY,
        ClientOptions::default().pin_sha256(gw.fingerprint()),
    )
    .await
    .unwrap();
    same(
        &pinned
            .detect(Image::encoded(jpeg.clone()).unwrap())
            .await
            .unwrap(),
        &reference,
        "pinned via options",
    );
}

#[tokio::test]
async fn wrong_pin_or_key_is_refused_with_a_typed_error() {
    let gw = Gateway::start(&[]).await;
    let jpeg = data("dog.jpg");
    let wrong = format!("{}?pin={}", gw.quic_url(), "00".repeat(32));
    let client = Client::connect(&wrong, KEY).await.unwrap();
    match client.detect(Image::encoded(jpeg.clone()).unwrap()).await {
        Err(ClientError::Connect { reason, .. }) => assert!(
            reason.contains("fingerprint") || reason.contains("certificate"),
            "{reason}"
        ),
        other => panic!("expected a certificate error, got {other:?}"),
    }
    let no_pin = Client::connect(&gw.quic_url(), KEY).await.unwrap();
    assert!(matches!(
        no_pin.detect(Image::encoded(jpeg.clone()).unwrap()).await,
        Err(ClientError::Connect { .. })
    ));

    let quic_url = format!("{}?pin={}", gw.quic_url(), gw.fingerprint());
    let bad_key = Client::connect(&quic_url, "wrong-key").await.unwrap();
    match bad_key.session(SessionOptions::default()).await {
        Err(ClientError::Gateway { code, .. }) => {
            assert_eq!(code, framegate_client::ErrorCode::Unauthorized)
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(matches!(
        Client::connect("ftp://x", KEY).await,
        Err(ClientError::InvalidUrl(_))
    ));
}
