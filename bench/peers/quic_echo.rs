//! `quic-echo`: the bare QUIC peer for the gateway-only comparison.
//!
//! quinn + rustls (aws-lc-rs, TLS 1.3, ALPN `framegate/1`) and nothing
//! else — the gateway's own QUIC stack with its transport settings (one
//! bidirectional stream per connection, 4 MiB stream window, 30 s idle
//! timeout): it accepts connections, takes the control stream, reads
//! u32-big-endian-length-prefixed messages (`framegate_protocol::framing`,
//! as the gateway does), answers `Hello` with `Welcome` and each `Frame`
//! with an empty `Detections` carrying its seq (decoding and verifying each
//! message with `framegate-protocol`, as any server of the protocol must).
//! `Bye` or the end of the stream finishes the stream and closes the
//! connection with code 1000. No auth, no queue, no batching, no image
//! work, no datagrams: the ceiling for framing + QUIC on this machine,
//! measured with the same `framegate-load --transport quic` client and
//! frames as the gateway (`bench/peers/ws_echo.rs` is the WebSocket twin).
//!
//! The certificate is self-signed, generated at start for `localhost`,
//! `127.0.0.1` and `::1`, and kept in memory; its SHA-256 is printed for
//! `framegate-load --quic-pin`.
//!
//! `quic-echo [ADDR]` (default 127.0.0.1:8096); prints
//! `quic-echo listening on quic://ADDR (ALPN framegate/1), certificate sha256 HEX`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::BytesMut;
use framegate_protocol::framing::{self, FrameDecoder, LENGTH_PREFIX_BYTES};
use framegate_protocol::{
    ClientMessage, DecodeLimits, Detections, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8096".into())
        .parse()
        .context("ADDR must be host:port")?;
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let fingerprint = hex::encode(Sha256::digest(cert.as_ref()));
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![b"framegate/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The gateway's defaults (`[quic]`), so only the gateway's own work
    // differs.
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(Duration::from_secs(30).try_into()?))
        .stream_receive_window((4u32 << 20).into())
        .receive_window((8u32 << 20).into())
        .datagram_receive_buffer_size(None);
    server.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(server, addr)?;
    println!(
        "quic-echo listening on quic://{} (ALPN framegate/1), certificate sha256 {fingerprint}",
        endpoint.local_addr()?
    );
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut tx, mut rx)) = conn.accept_bi().await else {
                return;
            };
            let limits = DecodeLimits::default();
            let mut decoder = FrameDecoder::new(limits.max_message_bytes);
            let mut buf = BytesMut::new();
            'conn: loop {
                match rx.read_chunk(64 << 10, true).await {
                    Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                    _ => break,
                }
                // Like the gateway: decode only whole messages (a partial
                // one would make the decoder reserve, and copy, the buffer).
                while buf.len() >= LENGTH_PREFIX_BYTES {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < LENGTH_PREFIX_BYTES + len {
                        break;
                    }
                    let body = match decoder.decode(&mut buf) {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    };
                    let answer = match ClientMessage::decode(&body, &limits) {
                        Ok(ClientMessage::Hello(_)) => ServerMessage::Welcome(Welcome {
                            session_id: "echo".into(),
                            credits: 8,
                            server_version: format!("quic-echo/{PROTOCOL_VERSION}"),
                            ..Default::default()
                        }),
                        Ok(ClientMessage::Frame(f)) => ServerMessage::Detections(Detections {
                            seq: f.seq,
                            capture_ts_us: f.capture_ts_us,
                            ..Default::default()
                        }),
                        Ok(ClientMessage::Bye(_)) => break 'conn,
                        Ok(_) => continue,
                        Err(_) => break 'conn,
                    };
                    if tx
                        .write_all(&framing::encode(&answer.encode()))
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
            }
            let _ = tx.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), tx.stopped()).await;
            conn.close(1000u32.into(), b"bye");
        });
    }
    Ok(())
}
