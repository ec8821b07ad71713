//! The load harness's QUIC transport (`framegate-load --transport quic`)
//! against a real `framegate serve --backend synthetic`: a short bounded
//! closed loop where every frame is answered, once, with stage timings.

mod support;

use framegate_loadtest::recorder::{Totals, STAGES};
use framegate_loadtest::transport::quic::{parse_pin, pin_of_pem_file, QuicTransport};
use support::{Gateway, KEY};

async fn closed_loop(gw: &Gateway, key: &str, sessions: usize, pin: [u8; 32]) -> Totals {
    let (addr, _) = gw.quic.clone().expect("QUIC is on");
    let transport =
        QuicTransport::new(addr, "localhost".into(), key.into(), String::new(), pin, 2).unwrap();
    support::load::closed_loop(transport, sessions, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_closed_loop_against_the_synthetic_backend_answers_every_frame() {
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&[
        "--backend",
        "synthetic",
        "--data-dir",
        data.path().to_str().unwrap(),
    ])
    .await;
    // The development certificate's file pins the same certificate as the
    // fingerprint the gateway prints.
    let pin = parse_pin(&gw.fingerprint()).unwrap();
    assert_eq!(
        pin_of_pem_file(&data.path().join("tls/dev-cert.pem")).unwrap(),
        pin
    );

    let t = closed_loop(&gw, KEY, 3, pin).await;
    assert_eq!(
        t.sessions_opened, 3,
        "connect errors: {:?}",
        t.connect_errors
    );
    assert!(t.answered > 0);
    assert_eq!(
        t.answered, t.sent,
        "dropped {:?} errors {:?}",
        t.dropped, t.errors
    );
    assert!(t.errors.is_empty() && t.dropped.is_empty());
    assert_eq!((t.lost, t.unmatched), (0, 0));
    assert!(t.closed_early.is_empty(), "{:?}", t.closed_early);
    // Stage timings come from the gateway's Detections.
    let total = STAGES.iter().position(|s| *s == "total").unwrap();
    assert_eq!(t.stages[total].len(), t.answered);
    assert!(t.stages[total].max() > 0);

    // A wrong key is refused in the handshake: no session, nothing sent.
    let t = closed_loop(&gw, "not-the-key-0123456789", 1, pin).await;
    assert_eq!((t.sessions_opened, t.sent), (0, 0));
    let reasons: Vec<_> = t.connect_errors.keys().collect();
    assert!(
        reasons.iter().any(|r| r.contains("Unauthorized")),
        "{reasons:?}"
    );
    // The gateway still serves.
    let t = closed_loop(&gw, KEY, 1, pin).await;
    assert!(t.answered > 0 && t.errors.is_empty());
}
