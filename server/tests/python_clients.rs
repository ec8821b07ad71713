//! Third-party clients written only from docs/protocol.md — Python with
//! `websockets` and with `aioquic` (server/tests/python/) — complete a
//! session against a real gateway and get the HTTP path's detections.

mod support;

use std::process::Command;

use support::*;

/// Generates the Python FlatBuffers code from the schema with the pinned
/// flatc (installed by protocol/scripts/regen.sh).
fn python_codegen(dir: &std::path::Path) {
    let root = repo_root();
    let out = Command::new(root.join("protocol/scripts/regen.sh"))
        .arg("install")
        .output()
        .expect("run regen.sh install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flatc = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let status = Command::new(flatc)
        .args(["--python", "-o"])
        .arg(dir)
        .arg(root.join("protocol/schema/framegate.fbs"))
        .status()
        .unwrap();
    assert!(status.success());
}

fn run_client(script: &str, args: &[String], gen: &std::path::Path) -> Vec<serde_json::Value> {
    let root = repo_root();
    let py_dir = root.join("server/tests/python");
    let out = Command::new(python())
        .arg(py_dir.join(script))
        .args(args)
        .env(
            "PYTHONPATH",
            format!("{}:{}", gen.display(), py_dir.display()),
        )
        .output()
        .expect("run the python client");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn check(gw: &Gateway, answers: &[serde_json::Value], images: &[&str]) {
    let dets: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|a| a["kind"] == "detections")
        .collect();
    assert_eq!(dets.len(), images.len(), "{answers:?}");
    for (i, (d, img)) in dets.iter().zip(images).enumerate() {
        assert_eq!(d["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(d["usage_frames"].as_u64(), Some(i as u64 + 1));
        let http = dets_from_json(
            &gw.detect(data(img), "image/jpeg")
                .await
                .json()
                .await
                .unwrap(),
        );
        let got = dets_from_json(d);
        assert!(!got.is_empty());
        assert_eq!(got.len(), http.len(), "{img}");
        for (a, b) in got.iter().zip(&http) {
            assert_eq!(a.class_id, b.class_id, "{img}");
            assert!(iou(&a.xyxy, &b.xyxy) > 0.999, "{img}");
        }
    }
}

#[tokio::test]
async fn python_websockets_and_aioquic_clients_complete_sessions() {
    let gen = tempfile::tempdir().unwrap();
    python_codegen(gen.path());
    let gw = Gateway::start(&[]).await;
    let images = ["dog.jpg", "horses.jpg", "person.jpg"];
    let paths: Vec<String> = images
        .iter()
        .map(|i| {
            repo_root()
                .join("server/tests/data")
                .join(i)
                .display()
                .to_string()
        })
        .collect();

    let mut args = vec![gw.ws_url(), KEY.to_string()];
    args.extend(paths.clone());
    let answers = run_client("fg_ws_client.py", &args, gen.path());
    check(&gw, &answers, &images).await;
    assert_eq!(
        answers.last().unwrap()["code"].as_u64(),
        Some(1000),
        "normal close after Bye"
    );

    let (addr, fp) = gw.quic.clone().unwrap();
    let mut args = vec![
        addr.ip().to_string(),
        addr.port().to_string(),
        fp,
        KEY.to_string(),
    ];
    args.extend(paths);
    let answers = run_client("fg_quic_client.py", &args, gen.path());
    check(&gw, &answers, &images).await;
}
