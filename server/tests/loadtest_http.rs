//! The load harness's HTTP transport (`framegate-load --transport http`,
//! raw body and `--http-multipart`) against a real `framegate serve
//! --backend synthetic`: short bounded closed loops where every request is
//! answered once with stage timings, a wrong key is counted as 401s, and a
//! connection the server closes is replaced.

mod support;

use framegate_loadtest::recorder::{Totals, STAGES};
use framegate_loadtest::transport::http::HttpTransport;
use support::{Gateway, KEY};

async fn closed_loop(url: String, key: &str, multipart: bool, sessions: usize) -> Totals {
    let transport = HttpTransport::new(url, key.into(), multipart, 3).unwrap();
    support::load::closed_loop(transport, sessions, 3).await
}

fn assert_all_answered(t: &Totals, what: &str) {
    assert!(t.answered > 0, "{what}: nothing answered");
    assert_eq!(
        t.answered, t.sent,
        "{what}: dropped {:?} errors {:?}",
        t.dropped, t.errors
    );
    assert!(
        t.errors.is_empty() && t.dropped.is_empty(),
        "{what}: {:?} {:?}",
        t.errors,
        t.dropped
    );
    assert_eq!((t.lost, t.unmatched), (0, 0), "{what}");
    // Stage timings come from the gateway's JSON answers.
    let total = STAGES.iter().position(|s| *s == "total").unwrap();
    assert_eq!(t.stages[total].len(), t.answered, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_and_multipart_closed_loops_answer_every_request() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    let url = gw.url("/v1/detect");
    let raw = closed_loop(url.clone(), KEY, false, 2).await;
    assert_all_answered(&raw, "raw body");
    let mp = closed_loop(url.clone(), KEY, true, 2).await;
    assert_all_answered(&mp, "multipart");

    // A wrong key: every request is answered 401 and counted as such.
    let t = closed_loop(url.clone(), "not-the-key-0123456789", true, 1).await;
    assert!(t.sent > 0 && t.answered == 0);
    assert_eq!(
        t.errors.get("http-401").copied(),
        Some(t.sent),
        "{:?}",
        t.errors
    );

    // A body the gateway cannot read is an error, not an answer: the raw
    // path with a multipart content type would be refused, so a multipart
    // run that answered everything above really sent multipart bodies.
    let t = closed_loop(gw.url("/v1/nope"), KEY, true, 1).await;
    assert!(
        t.answered == 0 && t.errors.contains_key("http-404"),
        "{:?}",
        t.errors
    );

    // The gateway still serves.
    assert_all_answered(&closed_loop(url, KEY, false, 1).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closes_is_replaced() {
    // A server that answers one request per connection, then closes it
    // (`Connection: close`): every request still gets its answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // Read the head, then the body by Content-Length.
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = br#"{"detections":[{}]}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(body).await;
            });
        }
    });
    let t = closed_loop(format!("http://{addr}/detect"), KEY, true, 1).await;
    server.abort();
    assert!(t.answered > 3, "answered {}", t.answered);
    assert_all_answered_no_timings(&t);
}

fn assert_all_answered_no_timings(t: &Totals) {
    assert_eq!(
        t.answered, t.sent,
        "dropped {:?} errors {:?}",
        t.dropped, t.errors
    );
    assert!(t.errors.is_empty() && t.dropped.is_empty());
}
