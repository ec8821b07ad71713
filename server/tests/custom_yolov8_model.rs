//! Bring-your-own model: a YOLOv8/YOLO11-style export (one `[B, 4+C, N]`
//! output, letterbox, RGB 0..1). The test builds a small ONNX graph with
//! known outputs (tools/reference/make_yolo_onnx.py) and checks the boxes the
//! gateway returns, mapped back through the letterbox.

mod support;

use std::process::Command;

use support::*;

#[tokio::test]
async fn yolov8_export_is_decoded_and_unletterboxed() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("yolo-test.onnx");
    let out = Command::new(python())
        .arg(repo_root().join("tools/reference/make_yolo_onnx.py"))
        .arg("--out")
        .arg(&onnx)
        .arg("--print-expected")
        .output()
        .expect("run make_yolo_onnx.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .expect("expected-table JSON"),
    )
    .unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&onnx).unwrap()))
    };
    std::fs::write(dir.path().join("labels.txt"), "alpha\nbeta\ngamma\n").unwrap();
    let spec = dir.path().join("model.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
name = "yolo-test"
file = "yolo-test.onnx"
sha256 = "{sha}"
labels = "labels.txt"
[input]
name = "images"
width = 64
height = 64
channel_order = "rgb"
resize = "letterbox"
pad_value = 114
mean = [0.0, 0.0, 0.0]
std = [255.0, 255.0, 255.0]
[decoder]
kind = "yolov8"
output = "output0"
score_threshold = 0.25
nms_iou = 0.45
"#
        ),
    )
    .unwrap();
    let gw = Gateway::start(&["--model", spec.to_str().unwrap()]).await;

    // A white 128x64 PNG: letterboxed to 64x32 at scale 0.5, 16 px bars top and bottom.
    let (w, h) = (128u32, 64u32);
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&vec![255u8; (w * h * 3) as usize])
            .unwrap();
    }
    let resp = gw.detect(png_bytes, "image/png").await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "yolo-test");
    let got = dets_from_json(&v);

    // Expected: from the constant table, per anchor the best class; anchor 0's
    // scores scaled by the input mean; threshold, class-aware NMS, then
    // x = cx / 0.5, y = (cy - 16) / 0.5, clipped to the frame.
    let mean = (32.0 * 64.0 * 1.0 + 32.0 * 64.0 * 114.0 / 255.0) / (64.0 * 64.0);
    let anchors = expected["anchors"].as_array().unwrap();
    let mut want: Vec<(u32, f32, [f32; 4])> = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let f = |k: &str| a[k].as_f64().unwrap() as f32;
        let scores: Vec<f32> = a["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32 * if i == 0 { mean } else { 1.0 })
            .collect();
        let (c, s) =
            scores
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (c, &s)| if s > b.1 { (c, s) } else { b });
        if s <= 0.25 {
            continue;
        }
        let (cx, cy, bw, bh) = (f("cx"), f("cy"), f("w"), f("h"));
        let map = |x: f32, y: f32| {
            (
                (x / 0.5).clamp(0.0, w as f32),
                ((y - 16.0) / 0.5).clamp(0.0, h as f32),
            )
        };
        let (x1, y1) = map(cx - bw / 2.0, cy - bh / 2.0);
        let (x2, y2) = map(cx + bw / 2.0, cy + bh / 2.0);
        want.push((c as u32, s, [x1, y1, x2, y2]));
    }
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept: Vec<(u32, f32, [f32; 4])> = Vec::new();
    for c in want {
        let input_box = |b: &[f32; 4]| *b; // IoU is scale-invariant except for clipping; compare in frame space
        if kept
            .iter()
            .all(|k| k.0 != c.0 || iou(&input_box(&k.2), &input_box(&c.2)) <= 0.45)
        {
            kept.push(c);
        }
    }
    assert_eq!(got.len(), kept.len(), "got {got:?}, want {kept:?}");
    assert!(
        got.len() >= 3,
        "the table is built to keep at least 3 boxes"
    );
    for (g, k) in got.iter().zip(&kept) {
        assert_eq!(g.class_id, k.0);
        assert_eq!(g.label, ["alpha", "beta", "gamma"][k.0 as usize]);
        assert!((g.score - k.1).abs() < 1e-3, "{g:?} vs {k:?}");
        for (a, b) in g.xyxy.iter().zip(&k.2) {
            assert!((a - b).abs() < 1e-3, "{g:?} vs {k:?}");
        }
    }
}
