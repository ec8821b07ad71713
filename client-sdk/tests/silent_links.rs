//! Connections that go quiet: a WebSocket whose gateway stops talking
//! without closing (a NAT entry gone, a network dropped) is found dead by
//! the session's keep-alive and resumed; datagram frames the gateway never
//! answers are reported lost after `datagram_timeout` and give their
//! credit back, so a session sending through a run of lost datagrams does
//! not stall. The gateways here are scripted peers.

mod support;

use support::welcome;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framegate_client::{Answer, Client, Image, SessionOptions};
use framegate_protocol::framing;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket gateway: the first connection is welcomed and then hears
/// and says nothing, holding the socket open; later ones are welcomed and
/// held (pings answered). Returns its address and the resume tokens seen.
async fn gateway_that_goes_quiet() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    gateway_that_goes_quiet_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// [`gateway_that_goes_quiet`] on `listener`.
fn gateway_that_goes_quiet_on(
    listener: tokio::net::TcpListener,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let Some((mut ws, hello)) = support::accept_hello(tcp).await else {
                    return;
                };
                log.lock().unwrap().push(hello.resume_token.clone());
                ws.send(Message::Binary(welcome(4).encode())).await.unwrap();
                if n == 1 {
                    // Silence: the socket stays open, nothing is read or
                    // written (pings go unanswered).
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                // Reading answers pings (tungstenite queues the pong).
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    (addr, seen)
}

/// A session on the gateway at `addr` that pings every 100 ms (400 ms
/// without a word means dead) and reconnects after 20 ms.
async fn watchful_session(addr: SocketAddr) -> framegate_client::Session {
    let client = Client::connect(&format!("ws://{addr}"), "fg_test_key")
        .await
        .unwrap();
    client
        .session(
            SessionOptions::default()
                .keepalive(Duration::from_millis(100))
                .reconnect_backoff(Duration::from_millis(20)),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_websocket_that_goes_quiet_is_found_dead_and_resumed() {
    let (addr, seen) = gateway_that_goes_quiet().await;
    let session = watchful_session(addr).await;
    let started = Instant::now();
    while session.resumes() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a silent connection was never found dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().unwrap()[..2], ["", "resume-me"]);
    // The resumed connection answers pings: it stays up.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        session.resumes(),
        1,
        "a healthy quiet connection was dropped"
    );
}

/// A QUIC gateway that welcomes one session with `credits` and never
/// answers a datagram frame (as if every one were lost). Returns the URL
/// with the certificate pin.
async fn quic_gateway_that_loses_every_datagram(credits: u32) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"framegate/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut hello).await.unwrap();
        send.write_all(&framing::encode(&welcome(credits).encode()))
            .await
            .unwrap();
        // Frames arrive as datagrams; none is ever answered.
        while conn.read_datagram().await.is_ok() {}
        drop(ep);
    });
    format!("quic://{addr}?pin={}", hex::encode(Sha256::digest(&der)))
}

#[tokio::test]
async fn lost_datagrams_time_out_and_give_their_credit_back() {
    let url = quic_gateway_that_loses_every_datagram(2).await;
    let client = Client::connect(&url, "fg_test_key").await.unwrap();
    let mut session = client
        .session(
            SessionOptions::default()
                .datagrams(true)
                .datagram_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    // 2 credits and no answer ever: under `block`, the third send needs a
    // lost frame's credit back.
    // Small enough for one datagram (343 bytes; only its header is read).
    let jpeg = include_bytes!("../../server/tests/data/huge-header.jpg");
    let sent = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..5 {
            session
                .send(Image::encoded(&jpeg[..]).unwrap())
                .await
                .unwrap();
        }
    })
    .await;
    assert!(
        sent.is_ok(),
        "sends stalled: lost datagrams kept their credit"
    );
    let mut lost = Vec::new();
    while lost.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(10), session.next()).await {
            Ok(Some(Ok(Answer::Lost { seq }))) => lost.push(seq),
            other => panic!("expected Lost answers, got {other:?}"),
        }
    }
    assert_eq!(lost, [1, 2, 3, 4, 5]);
}

/// A gateway that stops reading while the client is sending large frames:
/// the client's write waits for window that never opens, so it neither
/// pings nor reads, and the keep-alive deadline alone never fires (before,
/// the session hung until TCP gave up, about 15 minutes, or for ever). The
/// socket's bound on unacknowledged data breaks it and the session resumes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_write_stalled_by_a_gateway_that_stopped_reading_is_found_dead() {
    // Small receive buffers: the first connection's window closes soon;
    // it then stops reading (and talking) with the socket open.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (addr, seen) = gateway_that_goes_quiet_on(socket.listen(16).unwrap());
    let session = watchful_session(addr).await;
    let sender = session.sender();
    // Four 4 MB frames: far more than the socket buffers hold.
    tokio::spawn(async move {
        for _ in 0..4 {
            let pixels = vec![0u8; 1200 * 1200 * 3];
            if sender
                .send(framegate_client::Image::rgb8(1200, 1200, pixels).unwrap())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    while session.resumes() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a write stalled by a gateway that stopped reading was never given up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().unwrap()[..2], ["", "resume-me"]);
}
