//! The web console end to end in a real headless Chromium (Debian package
//! `chromium`, driven by npm `playwright-core` from `console/e2e/`), against a
//! real gateway with the real NanoDet model: Chromium's fake camera plays a
//! Y4M clip made from `tests/data/dog.jpg`, the live demo streams it over the
//! protocol at 4 fps in 320-pixel-wide JPEGs — first with the transport
//! selector on `auto`, which must pick WebTransport (HTTP/3, the gateway's
//! `[webtransport]` listener, its certificate pinned through
//! `serverCertificateHashes`), then, at the end, once more over WebSocket —
//! and the page must show
//! the dog and bicycle where the gateway finds them in the photo, with fps and
//! latency; the usage page must show what `/v1/usage` answers; a one-shot
//! detect by file must list the photo's labels.
//!
//! Needs `/usr/bin/chromium` (or `FRAMEGATE_CHROMIUM`) and
//! `console/node_modules` (`npm --prefix console ci`); `scripts/test.sh`
//! installs both. Missing either FAILS the test, it does not skip.
//!
//! Screenshots and `results.json` go to `target/tmp/console-e2e/`; with
//! `FRAMEGATE_UPDATE_SCREENSHOTS=1` the screenshots are also copied to
//! `docs/img/`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{data, iou, repo_root, Gateway, KEY};

/// A one-frame YUV4MPEG2 clip (4:2:0, full-range BT.601, as `C420jpeg`) of
/// a JPEG photo; Chromium's fake camera loops it.
fn y4m_from_jpeg(jpeg: &[u8]) -> Vec<u8> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(jpeg, options);
    let rgb = dec.decode().expect("decode dog.jpg");
    let info = dec.info().expect("jpeg info");
    let (w, h) = (usize::from(info.width) & !1, usize::from(info.height) & !1);
    let stride = usize::from(info.width) * 3;
    let px = |x: usize, y: usize| {
        let i = y * stride + x * 3;
        (
            f32::from(rgb[i]),
            f32::from(rgb[i + 1]),
            f32::from(rgb[i + 2]),
        )
    };
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    let mut out = format!("YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\nFRAME\n").into_bytes();
    for y in 0..h {
        for x in 0..w {
            let (r, g, b) = px(x, y);
            out.push(clamp(0.299 * r + 0.587 * g + 0.114 * b));
        }
    }
    let mut cb = Vec::with_capacity(w * h / 4);
    let mut cr = Vec::with_capacity(w * h / 4);
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(x + dx, y + dy);
                r += p.0 / 4.0;
                g += p.1 / 4.0;
                b += p.2 / 4.0;
            }
            cb.push(clamp(128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b));
            cr.push(clamp(128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b));
        }
    }
    out.extend_from_slice(&cb);
    out.extend_from_slice(&cr);
    out
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("FRAMEGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} not found: install Debian's `chromium` (scripts/test.sh does) or set FRAMEGATE_CHROMIUM",
        p.display()
    );
    p
}

fn check_node_modules() {
    let pw = repo_root().join("console/node_modules/playwright-core/package.json");
    assert!(
        pw.exists(),
        "console/node_modules is missing: run `npm --prefix console ci` (scripts/test.sh does)"
    );
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

async fn usage_frames(gw: &Gateway, from: u64, to: u64) -> (u64, u64) {
    let v: serde_json::Value = reqwest::Client::new()
        .get(gw.url(&format!("/v1/usage?from={from}&to={to}&granularity=hour")))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("usage json");
    (v["frames"].as_u64().unwrap(), v["pixels"].as_u64().unwrap())
}

/// The browser tests take turns: each runs a gateway with the model and a
/// Chromium, and both measure rates on two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `console/e2e/console.e2e.mjs` in Chromium against `gw` (dog.jpg
/// as the fake camera's clip, 320-pixel frames, artefacts in `out`) with
/// the extra environment `env`, and returns its `RESULT` JSON. Bounded:
/// killed at 5 minutes.
async fn run_console_e2e(gw: &Gateway, out: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let chromium = chromium();
    check_node_modules();
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).expect("artefact dir");
    let clip = out.join("dog.y4m");
    std::fs::write(&clip, y4m_from_jpeg(&data("dog.jpg"))).expect("write y4m");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("console/e2e/console.e2e.mjs"))
        .current_dir(repo_root())
        .env("FRAMEGATE_URL", gw.url(""))
        .env("FRAMEGATE_KEY", KEY)
        .env("FRAMEGATE_Y4M", &clip)
        .env(
            "FRAMEGATE_IMAGE",
            repo_root().join("server/tests/data/dog.jpg"),
        )
        .env("FRAMEGATE_E2E_OUT", out)
        .env("FRAMEGATE_CHROMIUM", &chromium)
        .env("FRAMEGATE_E2E_WIDTH", "320")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser run took over 5 minutes")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines().filter(|l| !l.starts_with("RESULT ")) {
        eprintln!("{line}");
    }
    assert!(
        output.status.success(),
        "console e2e failed ({}):\n{stderr}\nartefacts in {}\ngateway log:\n{}",
        output.status,
        out.display(),
        gw.logs().join("\n")
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT json"))
        .expect("a RESULT line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_streams_the_camera_and_shows_detections_and_usage() {
    let _one_browser = ONE_BROWSER.lock().await;
    // The dev tenant's plan allows self-service keys, so the keys page can
    // create and revoke one.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("framegate.toml");
    std::fs::write(&cfg, "[plans.default]\nmax_keys = 3\n").expect("write config");
    let gw = Gateway::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--quic-listen",
        "off",
        "--webtransport-listen",
        "127.0.0.1:0",
    ])
    .await;

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-e2e");
    let result = run_console_e2e(
        &gw,
        &out,
        &[
            ("FRAMEGATE_E2E_FPS", "4"),
            ("FRAMEGATE_E2E_SECONDS", "15"),
            ("FRAMEGATE_E2E_TRANSPORT", "auto"),
            ("FRAMEGATE_E2E_ALSO", "websocket"),
        ],
    )
    .await;

    // ---- transports: auto took WebTransport; the second run WebSocket ----
    let live = &result["live"];
    let also = &result["liveAlso"];
    assert_eq!(
        (
            live["transport"].as_str(),
            live["transportFallback"].as_str()
        ),
        (Some("webtransport"), Some("")),
        "auto should have taken WebTransport: {live}"
    );
    assert_eq!(live["shown"]["transport"], "WebTransport", "{live}");
    assert_eq!(also["transport"], "websocket", "{also}");
    assert_eq!(also["shown"]["transport"], "WebSocket", "{also}");
    let also_answered = also["answered"].as_u64().unwrap();
    assert!(
        also_answered >= 10,
        "only {also_answered} answers over WebSocket in 15 s at 4 fps: {also}"
    );
    assert!(
        also["lastBoxes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["label"] == "dog" || b["label"] == "bicycle"),
        "no dog or bicycle over WebSocket: {also}"
    );

    // ---- live demo: answers, fps, latency, and the photo's objects in place ----
    let answered = live["answered"].as_u64().unwrap();
    assert!(
        answered >= 10,
        "only {answered} answers in 15 s at 4 fps: {live}"
    );
    assert!(f(&live["fps"]) > 0.5, "fps shown {}", live["fps"]);
    let lat = &live["latencyMs"];
    assert!(
        f(&lat["p50"]) > 0.0 && f(&lat["p99"]) >= f(&lat["p50"]),
        "latency {lat}"
    );
    assert!(
        live["shown"]["p50"].as_str().unwrap().ends_with("ms"),
        "latency not on the page: {}",
        live["shown"]
    );
    assert!(f(&live["gatewayMsP50"]) > 0.0, "gateway time {live}");
    assert!(
        f(&lat["p50"]) >= f(&live["gatewayMsP50"]),
        "the browser cannot see an answer sooner than the gateway makes it: {live}"
    );
    assert_eq!(
        result["keyStorage"],
        serde_json::json!({"localStorage": 0, "sessionStorage": 0, "documentCookie": "", "cookies": 0}),
        "the key must stay in memory"
    );
    assert_eq!(result["reloadSignsOut"], true);
    let (fw, fh) = (f(&live["frameWidth"]), f(&live["frameHeight"]));
    assert_eq!((fw, fh), (320.0, 240.0), "frames were not 320 px wide");
    // Where the gateway finds them in the original photo, scaled to the frame.
    let reference: serde_json::Value = gw
        .detect(data("dog.jpg"), "image/jpeg")
        .await
        .json()
        .await
        .expect("detect json");
    let scale = fw / f(&reference["width"]);
    let boxes = live["lastBoxes"].as_array().expect("lastBoxes");
    let mut matched = Vec::new();
    for label in ["dog", "bicycle"] {
        let r = reference["detections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["label"] == label)
            .unwrap_or_else(|| panic!("the gateway finds no {label} in dog.jpg: {reference}"));
        let want: [f32; 4] = std::array::from_fn(|i| (f(&r["box"][i]) * scale) as f32);
        let best = boxes
            .iter()
            .filter(|b| b["label"] == label)
            .map(|b| iou(&std::array::from_fn(|i| f(&b["box"][i]) as f32), &want))
            .fold(0.0f32, f32::max);
        if best >= 0.5 {
            matched.push(label);
        }
        eprintln!("{label}: best IoU {best:.2} against {want:?}");
    }
    assert!(
        !matched.is_empty(),
        "neither the dog nor the bicycle was drawn where the gateway finds it: {boxes:?}"
    );

    // ---- usage page == /v1/usage, and == what the session billed ----
    let usage = &result["usage"];
    assert_eq!(usage["page"]["frames"], usage["api"]["frames"], "{usage}");
    assert_eq!(usage["page"]["pixels"], usage["api"]["pixels"], "{usage}");
    assert_eq!(
        usage["page"]["frames"], live["usageFrames"],
        "the usage page should show exactly the live session's billed frames: {usage}"
    );
    assert_eq!(usage["page"]["pixels"], live["usagePixels"], "{usage}");
    assert_eq!(
        usage["page"]["framesText"]
            .as_str()
            .unwrap()
            .replace(',', ""),
        usage["page"]["frames"].to_string(),
        "the number on the page"
    );
    let bars: u64 = usage["page"]["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        Some(bars),
        usage["page"]["frames"].as_u64(),
        "the chart's bars add up"
    );
    // And the gateway, asked here: both sessions plus the page's and our
    // one-shot detects. The page's window ends at the hour after the first
    // session; the second session may run past that hour, so the window
    // asked for here ends at the hour after now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (from, to) = (
        usage["page"]["from"].as_u64().unwrap(),
        (now / 3600 + 1) * 3600,
    );
    let want = live["usageFrames"].as_u64().unwrap() + also["usageFrames"].as_u64().unwrap() + 2;
    let mut got = usage_frames(&gw, from, to).await;
    for _ in 0..40 {
        if got.0 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        got = usage_frames(&gw, from, to).await;
    }
    assert_eq!(got.0, want, "/v1/usage after the run");

    // ---- one-shot detect by file ----
    let labels: Vec<&str> = result["detect"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"dog") && labels.contains(&"bicycle"),
        "detect page labels {labels:?}"
    );

    // ---- keys and plan: a clear message exactly when the endpoints are absent ----
    let client = reqwest::Client::new();
    for (path, key) in [("/v1/keys", "keys"), ("/v1/me", "plan")] {
        let status = client
            .get(gw.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            result[key]["unsupported"].as_bool(),
            Some(status == reqwest::StatusCode::NOT_FOUND),
            "{path} answered {status}; page: {}",
            result[key]
        );
    }
    if result["keys"]["unsupported"] == false {
        let created = &result["keys"]["created"];
        assert!(created["keyLength"].as_u64().unwrap_or(0) > 0, "{created}");
        assert_eq!(created["listed"], true, "{created}");
        assert_eq!(result["keys"]["revoked"], true, "{}", result["keys"]);
    }

    // ---- artefacts ----
    for shot in ["live.png", "usage.png", "detect.png"] {
        assert!(
            is_png(&out.join(shot)),
            "no screenshot {shot} in {}",
            out.display()
        );
    }
    if std::env::var("FRAMEGATE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let img = repo_root().join("docs/img");
        std::fs::create_dir_all(&img).unwrap();
        for shot in ["live", "usage", "detect"] {
            std::fs::copy(
                out.join(format!("{shot}.png")),
                img.join(format!("console-{shot}.png")),
            )
            .expect("copy screenshot");
        }
        eprintln!("screenshots copied to docs/img/console-*.png");
    }
    for (name, run) in [("WebTransport", live), ("WebSocket", also)] {
        let lat = &run["latencyMs"];
        eprintln!(
            "console e2e over {name}: {} frames at {} fps ({}x{} JPEG), browser latency capture→answer p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms (n = {}), of which gateway p50 {:.0} ms; answers/s {:.2}",
            run["answered"],
            result["fps"],
            fw,
            fh,
            f(&lat["p50"]),
            f(&lat["p95"]),
            f(&lat["p99"]),
            lat["count"],
            f(&run["gatewayMsP50"]),
            f(&run["fps"])
        );
    }
}

/// When the gateway refuses frames with a wait (`retry_after_ms`: here a
/// plan of 1 frame a second, burst 1, against a camera at 8 fps), the live
/// demo sends nothing until the wait has passed, instead of sending frames
/// that would be refused too; the page says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_waits_when_the_gateway_asks() {
    let _one_browser = ONE_BROWSER.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("framegate.toml");
    std::fs::write(&cfg, "[plans.default]\nframes_per_sec = 1.0\nburst = 1\n")
        .expect("write config");
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap(), "--quic-listen", "off"]).await;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-e2e-wait");
    let result = run_console_e2e(
        &gw,
        &out,
        &[
            ("FRAMEGATE_E2E_FPS", "8"),
            ("FRAMEGATE_E2E_SECONDS", "10"),
            ("FRAMEGATE_E2E_TRANSPORT", "websocket"),
            ("FRAMEGATE_E2E_ONLY_LIVE", "1"),
        ],
    )
    .await;
    let live = &result["live"];
    let n = |k: &str| live[k].as_u64().unwrap_or_else(|| panic!("{k} in {live}"));
    let (sent, answered, dropped, held) = (n("sent"), n("answered"), n("dropped"), n("held"));
    eprintln!(
        "console at 8 fps against 1 frame/s: sent {sent}, answered {answered}, dropped {dropped}, held {held} ticks ({:.1} s), resumed {}, message line {}",
        f(&live["heldMs"]) / 1000.0,
        live["resumed"],
        live["shown"]["messageSeen"]
    );
    // Without the wait the page would send at 8 fps and see about seven
    // refusals a second; holding, it sends about one frame a second plus
    // one refused frame per wait.
    assert!(held > 0, "the page never held a tick: {live}");
    assert!(answered >= 5, "{live}");
    // About one refused frame per answered one (the tick after an answer
    // goes out before the refusal's wait is known); twice that allows for
    // slow refusals on a busy machine. Without the hold: about seven.
    assert!(
        dropped <= 2 * answered + 4,
        "the page kept sending frames the gateway refused: {live}"
    );
    // The page says why while it waits, and takes the notice down once
    // the gateway answers a frame sent after the wait: about one resume per
    // answered frame (the first answer comes before any wait), each seen by
    // a MutationObserver on the message line as the notice going up and the
    // line being emptied.
    let resumed = n("resumed");
    assert!(
        resumed * 2 >= answered && resumed < answered,
        "answered {answered}, resumed {resumed}: the busy notice was not taken down when answers came back: {live}"
    );
    let seen = &live["shown"]["messageSeen"];
    let (busy, cleared) = (f(&seen["busy"]), f(&seen["cleared"]));
    assert!(busy >= 1.0, "the busy notice never showed: {live}");
    assert!(
        cleared >= 1.0,
        "the page never took the busy notice down: {live}"
    );
    let message = live["shown"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("The gateway is busy (rate-limited)") || message.trim().is_empty(),
        "{live}"
    );
    assert!(
        live["shown"]["held"].as_str().unwrap_or("0") != "0",
        "{live}"
    );
}

/// The console served over `https://` streams over WebSocket: Chromium
/// loads the page over HTTP/2 and then opens the WebSocket on that
/// connection with an extended CONNECT (RFC 8441), as the gateway
/// advertises it. Before, the gateway advertised it but refused the CONNECT
/// (405), and the page's WebSocket failed on every HTTPS gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_over_https_streams_over_a_websocket_on_http2() {
    let _one_browser = ONE_BROWSER.lock().await;
    let gw = Gateway::start(&["--quic-listen", "off", "--https-listen", "127.0.0.1:0"]).await;
    let https = format!("https://{}", gw.https_addr());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-e2e-https");
    let result = run_console_e2e(
        &gw,
        &out,
        &[
            ("FRAMEGATE_URL", https.as_str()),
            ("FRAMEGATE_E2E_IGNORE_CERT", "1"),
            ("FRAMEGATE_E2E_SECONDS", "4"),
            ("FRAMEGATE_E2E_TRANSPORT", "websocket"),
            ("FRAMEGATE_E2E_ONLY_LIVE", "1"),
        ],
    )
    .await;
    assert_eq!(result["pageProtocol"], "h2", "{result}");
    let live = &result["live"];
    assert!(live["answered"].as_u64().unwrap_or(0) >= 3, "{live}");
    let metrics = gw.metrics().await;
    let over_h2 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("framegate_ws_upgrades_total{http=\"2\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(over_h2 >= 1, "no WebSocket over HTTP/2: {metrics}");
}

/// A key without the `usage` scope (a camera's `stream,detect` key) signs
/// in: `/v1/me` refuses it (403), the console falls back to `/v1/models`
/// and the live demo runs (before, the sign-in said "The gateway refused
/// this key").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_usage_scope_signs_in_and_streams() {
    use sha2::{Digest, Sha256};
    let _one_browser = ONE_BROWSER.lock().await;
    let key = "fg_camera_stream_detect_only_0123456789abcdef";
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("framegate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[auth.keys]]\ntenant = \"cams\"\nscopes = [\"stream\", \"detect\"]\nsha256 = \"{}\"\n",
            hex::encode(Sha256::digest(key.as_bytes()))
        ),
    )
    .expect("write config");
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap(), "--quic-listen", "off"]).await;
    let me = reqwest::Client::new()
        .get(gw.url("/v1/me"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET /v1/me");
    assert_eq!(
        me.status(),
        403,
        "the key is expected to lack the usage scope"
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-e2e-no-usage");
    let result = run_console_e2e(
        &gw,
        &out,
        &[
            ("FRAMEGATE_KEY", key),
            ("FRAMEGATE_E2E_SECONDS", "4"),
            ("FRAMEGATE_E2E_TRANSPORT", "websocket"),
            ("FRAMEGATE_E2E_ONLY_LIVE", "1"),
        ],
    )
    .await;
    let answered = result["live"]["answered"].as_u64().unwrap_or(0);
    assert!(answered >= 1, "no frame answered after sign-in: {result}");
}
