//! Bad input over HTTP: each case gets a clear 4xx with a JSON error, nothing
//! reaches image decoding that should not, and the next good request is served.

mod support;

use std::time::Duration;
use support::usage::write_config;
use support::*;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status);
    let v: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["retryable"], false, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

async fn still_serves(gw: &Gateway) {
    let resp = gw.detect(data("dog.jpg"), "image/jpeg").await;
    assert_eq!(
        resp.status(),
        200,
        "the gateway stopped serving good requests"
    );
    let got = dets_from_json(&resp.json().await.unwrap());
    assert!(got.iter().any(|d| d.label == "dog"));
}

#[tokio::test]
async fn each_bad_request_is_refused_clearly_and_the_server_keeps_serving() {
    let gw = Gateway::start(&["--max-batch", "4"]).await;

    let msg = expect_error(gw.detect(vec![], "image/jpeg").await, 400, "bad-request").await;
    assert!(msg.contains("empty"), "{msg}");
    still_serves(&gw).await;

    let msg = expect_error(
        gw.detect(data("truncated.jpg"), "image/jpeg").await,
        400,
        "invalid-image",
    )
    .await;
    assert!(msg.contains("truncated"), "{msg}");
    still_serves(&gw).await;

    for (file, ct) in [
        ("huge-header.png", "image/png"),
        ("huge-header.jpg", "image/jpeg"),
    ] {
        let msg = expect_error(gw.detect(data(file), ct).await, 413, "payload-too-large").await;
        assert!(
            msg.contains("30000x30000") && msg.contains("pixel budget"),
            "{file}: {msg}"
        );
    }
    still_serves(&gw).await;

    let msg = expect_error(
        gw.detect(data("random.bin"), "application/octet-stream")
            .await,
        415,
        "unsupported-media-type",
    )
    .await;
    assert!(msg.contains("JPEG or PNG"), "{msg}");
    // Random bytes that start like a JPEG still fail cleanly.
    let mut fake = vec![0xFF, 0xD8, 0xFF, 0xE0];
    fake.extend_from_slice(&data("random.bin"));
    let resp = gw.detect(fake, "image/jpeg").await;
    assert_eq!(resp.status(), 400);
    still_serves(&gw).await;

    expect_error(
        gw.detect(b"hello".to_vec(), "text/plain").await,
        415,
        "unsupported-media-type",
    )
    .await;

    // Wrong or missing key: 401 before any image work.
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/detect"))
        .bearer_auth("not-the-key")
        .header("content-type", "image/jpeg")
        .body(data("dog.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    expect_error(resp, 401, "unauthorized").await;
    let resp = client
        .post(gw.url("/v1/detect"))
        .header("content-type", "image/jpeg")
        .body(data("huge-header.png"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    still_serves(&gw).await;

    // Unknown model.
    let resp = client
        .post(gw.url("/v1/detect?model=nope"))
        .bearer_auth(KEY)
        .header("content-type", "image/jpeg")
        .body(data("dog.jpg"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "not-found").await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(&cfg, "[http]\nmax_body_bytes = 100000\n").unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let big = data("dog.jpg"); // 163 KB > 100 KB
    let msg = expect_error(gw.detect(big, "image/jpeg").await, 413, "payload-too-large").await;
    assert!(msg.contains("100000"), "{msg}");
    // The server still answers the next request (a small one, refused for its own reason).
    let msg = expect_error(
        gw.detect(data("huge-header.png"), "image/png").await,
        413,
        "payload-too-large",
    )
    .await;
    assert!(msg.contains("pixel budget"), "{msg}");
}

#[tokio::test]
async fn the_body_limit_is_the_image_limit_and_a_broken_body_is_400() {
    // max_body_bytes is exactly dog.jpg: the image itself may be that big,
    // raw or inside a multipart body (whose part headers and boundaries
    // come on top), and a declared Content-Length says so up front.
    let dog = data("dog.jpg");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[http]\nmax_body_bytes = {}\n", dog.len()),
    );
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    assert_eq!(gw.detect(dog.clone(), "image/jpeg").await.status(), 200);
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"dog.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    body.extend_from_slice(&dog);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/detect"))
        .bearer_auth(KEY)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .header("content-length", body.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // One byte more of image is too large, raw or multipart.
    let mut bigger = dog.clone();
    bigger.push(0);
    expect_error(
        gw.detect(bigger.clone(), "image/jpeg").await,
        413,
        "payload-too-large",
    )
    .await;
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n".to_vec();
    body.extend_from_slice(&bigger);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/detect"))
        .bearer_auth(KEY)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "payload-too-large").await;

    // Malformed chunked encoding: the body cannot be read. That is a bad
    // request, not a body over the limit.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/detect HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("payload-too-large"), "{answer}");
    still_serves(&gw).await;
}

/// Reads until the gateway closes the connection or `limit` passes; true if
/// it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408 or similar before the close
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_headers_slowly_or_not_at_all_is_closed() {
    // http.handshake_timeout_secs bounds a request's headers: a slowloris
    // client (a header line trickling in) and one that connects and sends
    // nothing lose their connections instead of holding them for ever.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[http]\nhandshake_timeout_secs = 1\nkeepalive_timeout_secs = 1\n",
    );
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let addr = gw.url("").trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The first byte of the HTTP/2 preface, then nothing: the server waits
    // for more before it can tell HTTP/1 from HTTP/2.
    let mut preface = tokio::net::TcpStream::connect(&addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        preface.write_all(b"P").await.unwrap();
    }
    {
        use tokio::io::AsyncWriteExt;
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        // One more byte every 300 ms: never the end of the headers.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            slow.write_all(b"a").await.unwrap();
        }
    }
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a client trickling its headers kept its connection"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a client that sent nothing kept its connection"
    );
    assert!(
        closed_within(&mut preface, Duration::from_secs(3)).await,
        "a client that sent one byte of the HTTP/2 preface kept its connection"
    );
    // A client that sends its request at once is served, on the same
    // listener, and may keep its connection for the next request.
    let mut quick = tokio::net::TcpStream::connect(&addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        quick
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), quick.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    still_serves(&gw).await;
}

/// Sends `start` (a request whose body stops short) and reads until the
/// gateway closes: its 408 answer, with `Connection: close`.
async fn stalled_answer(addr: std::net::SocketAddr, start: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(start).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("no answer to a stalled body within 10 s, nor a close")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    answer
}

/// A request body that stops arriving is answered 408 after
/// `http.body_timeout_secs` and its connection closed (before, the request
/// and its buffer were held for as long as the client kept the socket); a
/// body that keeps arriving, however slowly, is read.
#[tokio::test]
async fn a_body_that_stops_arriving_is_408_and_a_slow_one_is_read() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[http]\nbody_timeout_secs = 3\n");
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let jpeg = data("dog.jpg");
    let head = format!(
        "POST /v1/detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let mut start = head.clone().into_bytes();
    start.extend_from_slice(&jpeg[..4096]);
    let answer = stalled_answer(gw.addr, &start).await;
    assert!(answer.contains("http.body_timeout_secs"), "{answer}");
    // A JSON endpoint's body (self-service key creation) alike: the same
    // 408 and JSON error, not the extractor's plain-text 400.
    let answer = stalled_answer(
        gw.addr,
        format!(
            "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.contains("\"code\":\"bad-request\""), "{answer}");
    // The same body in five pieces 1 s apart (5 s in all, longer than the
    // limit, each gap well under it) is read and answered.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    for piece in jpeg.chunks(jpeg.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow.write_all(piece).await.unwrap();
    }
    let got = read_until(&mut slow, "\"detections\"", Duration::from_secs(120)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"dog\""), "{got}");
    still_serves(&gw).await;
}

/// One `GET path` on a kept-alive HTTP/1.1 connection: the answer's status
/// (0 when the connection was closed).
async fn http1_get(conn: &mut tokio::net::TcpStream, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head[9..12].parse().unwrap();
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return 0,
        }
    }
}

/// An HTTP/2 client that answers the gateway's pings but has no request
/// open is closed after `http.keepalive_timeout_secs` (HTTP/1.1 has its
/// header deadline for this; before, an HTTP/2 connection could be held for
/// ever by a client that sends nothing).
#[tokio::test]
async fn an_http2_connection_with_nothing_open_is_closed_and_a_busy_one_is_kept() {
    use http_body_util::Empty;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[http]\nkeepalive_timeout_secs = 3\n");
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    // The count of open requests, not a clock from the connect: a
    // connection in use (a request every third of the timeout, for three
    // times the timeout) is kept, over HTTP/2 and over HTTP/1.1
    // keep-alive; before, both were closed a timeout after the connect.
    let (mut busy, busy_driver) = h2_connect(gw.addr).await;
    let mut busy1 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..9 {
        let resp = busy
            .send_request(
                hyper::Request::get(gw.url("/healthz"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("HTTP/2 request {i} on a busy connection: {e}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(
            http1_get(&mut busy1, "/healthz").await,
            200,
            "HTTP/1.1 request {i} on a busy keep-alive connection"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!busy_driver.is_finished());
    let (mut used, used_driver) = h2_connect(gw.addr).await;
    let (_silent, silent_driver) = h2_connect(gw.addr).await;
    let resp = used
        .send_request(
            hyper::Request::get(gw.url("/healthz"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (what, driver) in [
        ("after a request", used_driver),
        ("with no request", silent_driver),
    ] {
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .unwrap_or_else(|_| panic!("an idle HTTP/2 connection ({what}) was kept"))
            .unwrap();
    }
    still_serves(&gw).await;
}

/// The JSON endpoints read their bodies before the caller is authenticated
/// (the extractor runs first), so their bound is 64 KiB, not the image
/// limit: a 1 MiB body without a key is refused with 413 and the JSON
/// error. Before, the gateway read up to 16 MiB from anyone and then
/// answered 401.
#[tokio::test]
async fn a_json_endpoint_refuses_a_large_body_before_reading_it() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    let answer = declared_json_body(&gw, 1 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload-too-large\""),
        "{answer}"
    );
    assert!(answer.contains("limit 65536"), "{answer}");
    // A small body is read and refused for what it is: no key.
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/keys"))
        .header("content-type", "application/json")
        .body("{\"name\":\"cam\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// The answer to a `POST /v1/keys` (no key) that declares a JSON body of
/// `length` bytes and sends none of it: refused from the declared length,
/// the gateway answers before any of the body arrives.
async fn declared_json_body(gw: &Gateway, length: usize) -> String {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The answer comes at once; the connection stays open a while for the
    // body (the gateway lingers to discard it), so read to the JSON's end.
    read_until(&mut conn, "}}", Duration::from_secs(10)).await
}

/// The value of the unlabelled metric `name` in the gateway's `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// Waits (at most 10 s) until `framegate_http_body_bytes_in_flight`
/// satisfies `ok`; its last value.
async fn body_bytes_held_until(gw: &Gateway, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = metric(gw, "framegate_http_body_bytes_in_flight").await;
        if ok(held) || std::time::Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads from `conn` until what arrived contains `needle` (within
/// `within`, a hang guard); what arrived.
async fn read_until(conn: &mut tokio::net::TcpStream, needle: &str, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(within, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle} within {within:?}"))
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends a `size`-byte chunked body to `path` with the test key, all of it
/// before reading, as most clients do; then reads the answer to its close.
/// An error when a write failed (the gateway closed with the body unread).
async fn chunked_upload(
    gw: &Gateway,
    path: &str,
    content_type: &str,
    size: usize,
) -> std::io::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await?;
    conn.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let chunk = [b"10000\r\n".as_slice(), &[b' '; 0x10000], b"\r\n"].concat();
    for _ in 0..size / 0x10000 {
        conn.write_all(&chunk).await?;
    }
    conn.write_all(b"0\r\n\r\n").await?;
    Ok(answer_until_close(&mut conn).await)
}

/// Reads an HTTP/1.1 answer on `conn` until the gateway closes it (a close
/// with the request's body unread may be a reset: what arrived before it
/// counts).
async fn answer_until_close(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("an answer and a close within 10 s");
    String::from_utf8_lossy(&answer).to_string()
}

/// Request bodies held at once are bounded gateway-wide
/// (`http.max_body_bytes_in_flight`): before, any number of clients could
/// each make the gateway hold an upload of up to `http.max_body_bytes`.
/// While one upload holds most of the budget, a body whose declared length
/// does not fit is refused at once (429 `overloaded`, retryable, the
/// connection closed once the rest of the body is discarded), so is a
/// chunked one when its bytes stop fitting, and
/// a JSON endpoint's body alike; once the upload is answered its bytes are
/// given back and the same request is read again.
#[tokio::test]
async fn request_bodies_held_at_once_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[http]\nmax_body_bytes = 100000\nmax_body_bytes_in_flight = 140000\nbody_timeout_secs = 120\n",
    );
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let detect_head = |length: &str| {
        format!(
            "POST /v1/detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/octet-stream\r\n{length}\r\n"
        )
    };

    // An upload of 100,000 bytes stops after 90,000: it holds them.
    let mut upload = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    upload
        .write_all(detect_head("Content-Length: 100000\r\n").as_bytes())
        .await
        .unwrap();
    upload.write_all(&vec![0x55u8; 90_000]).await.unwrap();
    let held = body_bytes_held_until(&gw, |h| h >= 90_000.0).await;
    assert_eq!(held, 90_000.0, "bytes held by the stalled upload");

    // 60,000 declared bytes do not fit the 50,000 left: refused before any
    // of them is read.
    let client = reqwest::Client::new();
    let refused = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()
                .get("connection")
                .map(|v| v.to_str().unwrap()),
            Some("close")
        );
        let v: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(v["error"]["code"], "overloaded", "{v}");
        assert_eq!(v["error"]["retryable"], true, "{v}");
        let message = v["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("http.max_body_bytes_in_flight"),
            "{message}"
        );
        message
    };
    let big = || {
        client
            .post(gw.url("/v1/detect"))
            .bearer_auth(KEY)
            .header("content-type", "application/octet-stream")
            .body(vec![0x55u8; 60_000])
    };
    let message = refused(big().send().await.unwrap()).await;
    assert!(message.contains("60000"), "{message}");

    // A chunked body (no declared length) is refused when the bytes that do
    // not fit arrive.
    // It goes on well past the refusal (8 MB in all, written before the
    // answer is read): the rest is read and discarded, so the client gets
    // its answer rather than a failed write; then the connection closes.
    let mut chunked = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut request = detect_head("Transfer-Encoding: chunked\r\n").into_bytes();
    for _ in 0..400 {
        request.extend_from_slice(format!("{:x}\r\n", 20_000).as_bytes());
        request.extend_from_slice(&[0x55u8; 20_000]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    chunked
        .write_all(&request)
        .await
        .expect("the whole chunked body is taken, the refused rest discarded");
    let answer = answer_until_close(&mut chunked).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");

    // A JSON endpoint's body (self-service key creation) alike.
    let resp = client
        .post(gw.url("/v1/keys"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{}\"}}", "x".repeat(60_000)))
        .send()
        .await
        .unwrap();
    refused(resp).await;
    assert!(metric(&gw, "framegate_http_body_budget_refusals_total").await >= 3.0);
    // One declared over the JSON limit is too large whatever the budget
    // holds: 413, not a "retry shortly".
    let answer = declared_json_body(&gw, 150_000).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The upload ends (not an image: 415) and gives its bytes back.
    upload.write_all(&vec![0x55u8; 10_000]).await.unwrap();
    let upload_answer = read_until(&mut upload, "\"error\"", Duration::from_secs(10)).await;
    assert!(upload_answer.starts_with("HTTP/1.1 415"), "{upload_answer}");
    let held = body_bytes_held_until(&gw, |h| h == 0.0).await;
    assert_eq!(held, 0.0, "bytes held after every request was answered");
    // The body refused before is read now (and refused for what it is).
    let resp = big().send().await.unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(body_bytes_held_until(&gw, |h| h == 0.0).await, 0.0);

    // A client that never lets its answers be sent (HTTP/2, a stream window
    // of 0) does not keep its bodies charged: they are given back when the
    // handler is done, not when the answer has gone.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post("/v1/keys")
        .header("host", "x")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "{{\"name\":\"{}\"}}",
            "x".repeat(60_000)
        ))))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("the answer's head within 10 s")
        .unwrap();
    assert_eq!(resp.status(), 401);
    let held = body_bytes_held_until(&gw, |h| h == 0.0).await;
    assert_eq!(
        held, 0.0,
        "bytes held for an answer its client does not take"
    );
    assert!(!driver.is_finished(), "the HTTP/2 connection is still open");
    drop(resp);
    driver.abort();
}

/// A request refused before its body is read whole (a bad key, a declared
/// length over the limit, a chunked body found over the limit while it is
/// read) is answered while the gateway reads and discards the rest of the
/// body, so a client that sends its whole body before reading (reqwest,
/// like most) gets the refusal. Before, the gateway closed with the body
/// unread, the client's write failed on the reset, and the client saw
/// "broken pipe" instead of 401 or 413.
#[tokio::test]
async fn a_request_refused_before_its_body_is_read_still_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[http]\nmax_body_bytes = 1000000\n");
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let client = reqwest::Client::new();
    let upload = |key: &str| {
        client
            .post(gw.url("/v1/detect"))
            .bearer_auth(key)
            .header("content-type", "image/jpeg")
            .body(vec![0xFFu8; 20 << 20])
            .send()
    };
    for round in 0..3 {
        let resp = upload("fg_not_a_key").await.unwrap_or_else(|e| {
            panic!("round {round}: no answer to a bad key with a 20 MB body: {e:?}")
        });
        assert_eq!(resp.status(), 401);
        let resp = upload(KEY).await.unwrap_or_else(|e| {
            panic!("round {round}: no answer to a 20 MB body over the limit: {e:?}")
        });
        assert_eq!(resp.status(), 413);
        let v: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(v["error"]["code"], "payload-too-large", "{v}");
        // A JSON endpoint's body over its 64 KiB alike.
        let resp = client
            .post(gw.url("/v1/keys"))
            .header("content-type", "application/json")
            .body(vec![b' '; 8 << 20])
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer to an 8 MB JSON body: {e:?}"));
        assert_eq!(resp.status(), 413);
        // A chunked body is found over the limit only while it is read:
        // the rest is discarded alike. (A client that writes it all before
        // reading, here by hand: reqwest streams bodies only with a
        // feature the tests do not build.)
        let answer = chunked_upload(&gw, "/v1/detect", "image/jpeg", 20 << 20)
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer to a chunked 20 MB body: {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload-too-large"), "{answer}");
        let answer = chunked_upload(&gw, "/v1/keys", "application/json", 4 << 20)
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: no answer to a chunked 4 MB JSON body: {e}")
            });
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    // The discarded bytes were not charged to the body budget, and a good
    // request is served.
    assert_eq!(body_bytes_held_until(&gw, |h| h == 0.0).await, 0.0);
    let resp = gw.detect(data("person.jpg"), "image/jpeg").await;
    assert_eq!(resp.status(), 200);
}
