//! One-shot HTTP errors keep what the gateway said: its code, whether to
//! retry and when (before, a 429's retry hint and code were dropped, and a
//! proxy's HTML error page became "bad JSON", not retryable). The peer here
//! is a scripted HTTP server: each request gets the next answer.

use std::time::Duration;

use framegate_client::{Client, ClientError};
use framegate_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::dog;

/// Answers request n with `answers[n - 1]` (status line, headers, body),
/// after reading the whole request.
async fn scripted_http(answers: Vec<(&'static str, &'static str, &'static str)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for (status, headers, body) in answers {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 16 << 10];
            let head_end = loop {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                request.extend_from_slice(&buf[..n]);
                if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while request.len() < head_end + length {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its body ended");
                request.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
            let _ = tcp.shutdown().await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_errors_keep_the_code_and_the_retry_hint() {
    let url = scripted_http(vec![
        (
            "429 Too Many Requests",
            "Content-Type: application/json\r\nRetry-After: 2\r\n",
            r#"{"error":{"code":"overloaded","message":"the queue is full","retryable":true,"retry_after_ms":1500}}"#,
        ),
        (
            "503 Service Unavailable",
            "Content-Type: text/html\r\nRetry-After: 7\r\n",
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        ),
        (
            "401 Unauthorized",
            "Content-Type: application/json\r\n",
            r#"{"error":{"code":"unauthorized","message":"unknown API key","retryable":false}}"#,
        ),
        ("408 Request Timeout", "", ""),
    ])
    .await;
    let client = Client::connect(&url, "fg_test_key").await.unwrap();

    // The gateway's JSON error: its code, its retryable, its own hint (ms)
    // over the header's whole seconds.
    let e = client.detect(dog()).await.unwrap_err();
    let ClientError::Http {
        status,
        code,
        message,
        ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!((*status, *code), (429, Some(ErrorCode::Overloaded)));
    assert_eq!(message, "the queue is full");
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));

    // A proxy's HTML page: an HTTP error still, retryable by its status,
    // with the header's hint and the page's text.
    let e = client.detect(dog()).await.unwrap_err();
    let ClientError::Http {
        status,
        code,
        message,
        ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!((*status, *code), (503, None));
    assert!(
        message.contains("503 Service Temporarily Unavailable"),
        "{message}"
    );
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    // Not retryable when the gateway says so.
    let e = client.detect(dog()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Http {
                status: 401,
                code: Some(ErrorCode::Unauthorized),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    assert_eq!(e.retry_after(), None);

    // An empty 408: retryable by its status.
    let e = client.detect(dog()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Http {
                status: 408,
                code: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
}
