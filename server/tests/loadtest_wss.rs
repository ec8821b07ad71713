//! The load harness's WebSocket transport (`framegate-load --transport ws`)
//! against a real `framegate serve --backend synthetic`, over `ws://` and
//! over `wss://` to the HTTPS listener with the certificate pinned: every
//! frame is answered once, with stage timings; a wrong pin opens nothing.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use framegate_loadtest::recorder::{Totals, STAGES};
use framegate_loadtest::transport::quic::{parse_pin, pinned_tls};
use framegate_loadtest::transport::ws::WsTransport;
use support::{Gateway, KEY};

/// `url`'s host is a name that never resolves (RFC 6761 `.invalid`): the
/// connections must go to `addr`, the address the loopback guard checked,
/// without looking the name up again.
async fn closed_loop(
    url: String,
    addr: SocketAddr,
    tls: Option<[u8; 32]>,
    sessions: usize,
) -> Totals {
    let transport = WsTransport {
        url,
        tls: tls.map(|pin| Arc::new(pinned_tls(pin).unwrap())),
        key: KEY.into(),
        model: String::new(),
        addrs: vec![addr],
    };
    support::load::closed_loop(transport, sessions, 4).await
}

fn every_frame_answered(t: &Totals, what: &str) {
    assert_eq!(
        t.sessions_opened, 2,
        "{what}: connect errors {:?}",
        t.connect_errors
    );
    assert!(t.answered > 0, "{what}: nothing answered");
    assert_eq!(
        t.answered, t.sent,
        "{what}: dropped {:?} errors {:?}",
        t.dropped, t.errors
    );
    assert_eq!((t.lost, t.unmatched), (0, 0), "{what}");
    assert!(t.closed_early.is_empty(), "{what}: {:?}", t.closed_early);
    let total = STAGES.iter().position(|s| *s == "total").unwrap();
    assert_eq!(t.stages[total].len(), t.answered, "{what}: stage timings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_closed_loops_against_the_synthetic_backend_answer_every_frame() {
    let gw = Gateway::start(&["--backend", "synthetic", "--https-listen", "127.0.0.1:0"]).await;
    let https: SocketAddr = gw.https_addr().parse().unwrap();
    let pin = parse_pin(&gw.fingerprint()).unwrap();

    let t = closed_loop(
        format!("ws://gateway.invalid:{}/v1/stream", gw.addr.port()),
        gw.addr,
        None,
        2,
    )
    .await;
    every_frame_answered(&t, "ws");
    // Each session ended with Bye and a close: none waits for a resume.
    let open = gw.sessions_open_within(0, Duration::from_secs(3)).await;
    assert_eq!(open, 0, "sessions left waiting for a resume after the run");
    let wss = format!("wss://gateway.invalid:{}/v1/stream", https.port());
    let t = closed_loop(wss.clone(), https, Some(pin), 2).await;
    every_frame_answered(&t, "wss");

    // Another certificate's pin: the TLS handshake fails, no session opens.
    let mut wrong = pin;
    wrong[0] ^= 0xff;
    let t = closed_loop(wss, https, Some(wrong), 1).await;
    assert_eq!((t.sessions_opened, t.sent), (0, 0));
    assert_eq!(
        t.connect_errors.values().sum::<u64>(),
        1,
        "{:?}",
        t.connect_errors
    );
}
