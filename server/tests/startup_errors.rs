//! Start-up failures are one clear message and a non-zero exit.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `framegate serve` and returns its exit code and stderr. A gateway
/// that starts instead of refusing is killed after 30 s and reported as
/// exit code -1, so a lost refusal fails the test instead of hanging it.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framegate"));
    // Free ports only: these gateways run side by side, and one that gets
    // as far as its listeners must not collide with another on QUIC's 8443.
    cmd.arg("serve")
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--quic-listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() >= end {
            child.kill().unwrap();
            child.wait().unwrap();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(stderr.path()).unwrap())
}

#[test]
fn missing_onnx_runtime_says_how_to_install_it() {
    let home = tempfile::tempdir().unwrap();
    let (code, err) = serve(
        &[],
        &[
            ("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"),
            ("HOME", home.path().to_str().unwrap()),
            ("XDG_CACHE_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("ONNX Runtime 1.31.1 library not found"),
        "{err}"
    );
    assert!(err.contains("scripts/install-onnxruntime.sh"), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

#[test]
fn cuda_preprocessing_without_a_gpu_names_what_is_missing() {
    if let Ok(n) = framegate_cuda::cuda_available() {
        println!("{n} CUDA device(s) here: the refusal is not exercised (tests/cuda_preprocess.rs runs the GPU path)");
        return;
    }
    // Its own data folder: the gateway opens its key store before it waits
    // for the model.
    let data = tempfile::tempdir().unwrap();
    let (code, err) = serve(
        &[
            "--preprocess",
            "cuda",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pipeline.preprocess = \"cuda\""), "{err}");
    // What is missing: the driver, NVRTC, or a device.
    assert!(
        err.contains("no CUDA driver found")
            || err.contains("NVRTC")
            || err.contains("no CUDA device"),
        "{err}"
    );
    assert!(err.contains("--preprocess cpu"), "{err}");
    let last = err
        .lines()
        .rfind(|l| l.starts_with("Error:"))
        .unwrap_or_default();
    assert!(
        last.contains("pipeline.preprocess") && !last.contains("not ready:"),
        "{err}"
    );
}

#[test]
fn corrupt_model_file_is_refused_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let root = support::repo_root().join("models/nanodet-g");
    let mut onnx = std::fs::read(root.join("nanodet-g-416.onnx")).unwrap();
    let n = onnx.len();
    onnx[n / 2] ^= 0x55;
    std::fs::write(dir.path().join("nanodet-g-416.onnx"), onnx).unwrap();
    std::fs::copy(root.join("labels.txt"), dir.path().join("labels.txt")).unwrap();
    std::fs::copy(root.join("model.toml"), dir.path().join("model.toml")).unwrap();
    let spec = dir.path().join("model.toml");
    let (code, err) = serve(&["--model", spec.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("sha256") && err.contains("corrupt"), "{err}");
}

#[test]
fn invalid_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(
        &cfg,
        "[pipeline]\nmax_batch = 0\nworkers = 0\nsolo_backlog = 0\n[session]\ncredits = 0\n",
    )
    .unwrap();
    let (code, err) = serve(&["--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    for field in [
        "pipeline.max_batch",
        "pipeline.workers",
        "pipeline.solo_backlog",
        "session.credits",
    ] {
        assert!(err.contains(field), "{field} not reported: {err}");
    }
}
