//! A real Prometheus scrapes a gateway under traffic; a PromQL query over
//! its HTTP API returns the frame count, and every metric the dashboard uses
//! is in `/metrics`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framegate_protocol::ServerMessage;
use support::*;

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn query(port: u16, q: &str) -> Option<f64> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_counts_the_frames_answered() {
    let gw = Gateway::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: framegate\n    static_configs:\n      - targets: ['{}']\n",
            gw.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; `make test` installs it)"),
    );

    // 4 frames over HTTP, 5 over WebSocket, and 1 refused image.
    for _ in 0..4 {
        assert_eq!(gw.detect(data("dog.jpg"), "image/jpeg").await.status(), 200);
    }
    assert_eq!(
        gw.detect(data("truncated.jpg"), "image/jpeg")
            .await
            .status(),
        400
    );
    let (mut ws, _) = open_session(&gw).await;
    for seq in 1..=5 {
        send(&mut ws, &jpeg_frame(seq, &data("kite.jpg"))).await;
    }
    for _ in 0..5 {
        assert!(matches!(
            recv(&mut ws).await,
            Some(ServerMessage::Detections(_))
        ));
    }

    let end = Instant::now() + Duration::from_secs(45);
    let mut last = None;
    while Instant::now() < end {
        last = query(port, "sum(framegate_frames_answered_total)").await;
        if last == Some(9.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last, Some(9.0), "Prometheus did not see 9 answered frames");
    let ws_answered = query(
        port,
        r#"sum(framegate_frames_answered_total{transport="ws"})"#,
    )
    .await;
    assert_eq!(ws_answered, Some(5.0));
    let failed = query(
        port,
        r#"sum(framegate_frames_failed_total{code="invalid-image"})"#,
    )
    .await;
    assert_eq!(failed, Some(1.0));
    drop(prom);

    // Every metric the dashboard uses is exported by the running gateway.
    let text = gw.metrics().await;
    let dashboard =
        std::fs::read_to_string(repo_root().join("deploy/grafana/framegate.json")).unwrap();
    for name in framegate::metrics::METRIC_NAMES {
        if dashboard.contains(name.trim_end_matches("_total")) {
            let family = name.trim_end_matches("_total").trim_end_matches("_info");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} missing from /metrics"
            );
        }
    }
    assert!(
        text.contains("framegate_stage_duration_seconds_bucket{"),
        "stage histograms recorded"
    );
}
