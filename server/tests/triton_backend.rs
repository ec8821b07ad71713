//! `backend = "triton"` against a real KServe v2 server (MLServer serving
//! the bundled ONNX model): same detections as the local ONNX backend,
//! endpoint selection and retries when servers die and come back, and clear
//! start-up errors.

#[path = "support/mlserver.rs"]
mod mlserver;
mod support;

use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use framegate::backend::onnx::{init_runtime, OnnxThreads};
use framegate::backend::spec::LoadedModel;
use framegate::backend::triton::pool::TritonPool;
use framegate::backend::triton::TritonBackend;
use framegate::backend::Backend;
use framegate::config::{PipelineConfig, TritonConfig};
use framegate::gateway::{onnx_factory, triton_factory};
use framegate::pipeline::decode::{probe, FrameLimits};
use framegate::pipeline::{BackendFactory, FrameResult, ModelPipeline, Readiness};
use mlserver::{config_file, free_port, nanodet_onnx, path_str, Forwarder, MlServer};
use support::PHOTOS;
use support::{data, iou, repo_root};

/// One MLServer for the whole file (it takes seconds to start): NanoDet-g,
/// and a YOLO test model to stand for "the wrong model".
fn server() -> &'static MlServer {
    static SERVER: OnceLock<MlServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        MlServer::start(&[
            ("nanodet-g", nanodet_onnx()),
            (
                "yolo-test",
                repo_root().join("server/tests/data/yolo-test.onnx"),
            ),
        ])
    })
}

/// The tests share one single-process MLServer, whose Python codec takes
/// a while with megabyte tensors: one test at a time keeps their timings
/// (readiness deadlines, health checks) far from its load.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn triton_config(endpoints: Vec<String>) -> TritonConfig {
    TritonConfig {
        endpoints,
        startup_timeout_ms: 10_000,
        // A busy test machine must not make a live endpoint look down.
        connect_timeout_ms: 5_000,
        ..TritonConfig::default()
    }
}

fn run_photos(factory: BackendFactory) -> Vec<FrameResult> {
    let config = PipelineConfig {
        max_batch: Some(4),
        workers: Some(1),
        // The frames submitted together leave in batches of up to 4.
        max_delay_us: 100_000,
        // The frames are submitted in one burst on purpose, more than the
        // latency budget would queue: this test is about batching.
        max_queue_wait_ms: 0,
        ..PipelineConfig::default()
    };
    let pipeline = ModelPipeline::start(LoadedModel::bundled().unwrap(), &config, factory);
    assert_eq!(
        pipeline.wait_ready(Duration::from_secs(60)),
        Readiness::Ready
    );
    let limits = FrameLimits {
        max_pixels: 40_000_000,
        max_side: 16_384,
    };
    let tenant = pipeline.tenant("test", 1);
    let receivers: Vec<_> = PHOTOS
        .iter()
        .map(|p| {
            let frame = probe(None, 0, 0, data(p).into(), &limits).unwrap();
            pipeline.submit(&tenant, frame, Instant::now()).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let mut out = Vec::new();
        for r in receivers {
            out.push(r.await.unwrap().unwrap());
        }
        out
    });
    pipeline.shutdown();
    results
}

#[test]
fn detections_through_triton_equal_the_local_onnx_backend() {
    let _one_at_a_time = serial();
    init_runtime(None).expect("ONNX Runtime (run scripts/install-onnxruntime.sh)");
    let local = run_photos(onnx_factory(OnnxThreads::new(1)));
    let pool = TritonPool::connect(&triton_config(vec![server().grpc_url()])).unwrap();
    let config = TritonConfig::default();
    let remote = run_photos(triton_factory(pool, &config, 4));
    assert!(
        remote.iter().any(|r| r.batch_size > 1),
        "no batch of several frames went over gRPC"
    );
    let mut compared = 0;
    for (i, (l, r)) in local.iter().zip(&remote).enumerate() {
        assert_eq!(
            l.detections.len(),
            r.detections.len(),
            "{}: local {:?} vs triton {:?}",
            PHOTOS[i],
            l.detections,
            r.detections
        );
        for (a, b) in l.detections.iter().zip(&r.detections) {
            assert_eq!(a.class_id, b.class_id, "{}", PHOTOS[i]);
            assert!(
                (a.score - b.score).abs() < 1e-3,
                "{}: score {} vs {}",
                PHOTOS[i],
                a.score,
                b.score
            );
            let (ba, bb) = ([a.x1, a.y1, a.x2, a.y2], [b.x1, b.y1, b.x2, b.y2]);
            assert!(iou(&ba, &bb) >= 0.99, "{}: {ba:?} vs {bb:?}", PHOTOS[i]);
            compared += 1;
        }
    }
    assert!(compared >= 10, "only {compared} detections compared");
}

/// One batch of one (blank) frame through a backend.
fn infer_once(backend: &mut TritonBackend) -> Result<(), framegate::error::GatewayError> {
    let input = vec![0f32; 3 * 416 * 416];
    let mut outputs = 0;
    backend.infer(&input, 1, &mut |views| {
        outputs = views.len();
        Ok(())
    })?;
    assert_eq!(outputs, 6);
    Ok(())
}

/// A pool on `config` and the bundled model bound to it (max_batch 1).
fn bundled_on(config: &TritonConfig) -> (Arc<TritonPool>, TritonBackend) {
    let pool = TritonPool::connect(config).unwrap();
    let model = LoadedModel::bundled().unwrap();
    let backend = TritonBackend::new(pool.clone(), &model, None, "", 1).unwrap();
    (pool, backend)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unavailable_calls_are_retried_on_another_endpoint() {
    let _one_at_a_time = serial();
    let fwd = Forwarder::start(server().grpc);
    let direct = server().grpc_url();
    let config = TritonConfig {
        // Only failed calls can notice the outage within this test.
        health_interval_ms: 600_000,
        retries: 1,
        ..triton_config(vec![fwd.url(), direct.clone()])
    };
    let (pool, mut backend) = bundled_on(&config);
    assert_eq!(pool.ready_endpoints(), [fwd.url(), direct.clone()]);
    for _ in 0..4 {
        infer_once(&mut backend).unwrap();
    }
    assert!(
        fwd.bytes() > 1 << 20,
        "calls were not spread over both endpoints"
    );

    fwd.stop();
    for i in 0..6 {
        infer_once(&mut backend).unwrap_or_else(|e| panic!("call {i} after the outage: {e}"));
    }
    assert_eq!(
        pool.ready_endpoints(),
        [direct],
        "the failed endpoint is marked down: {}",
        pool.describe_health()
    );
}

#[test]
fn an_endpoint_failing_readiness_is_skipped_until_it_recovers() {
    let _one_at_a_time = serial();
    let fwd = Forwarder::start(server().grpc);
    let direct = server().grpc_url();
    let config = TritonConfig {
        health_interval_ms: 50,
        ..triton_config(vec![fwd.url(), direct.clone()])
    };
    let (pool, mut backend) = bundled_on(&config);

    fwd.stop();
    wait_until("the health check marks the stopped endpoint down", || {
        pool.ready_endpoints() == std::slice::from_ref(&direct)
    });
    for _ in 0..4 {
        infer_once(&mut backend).unwrap();
    }
    assert_eq!(pool.ready_endpoints(), [direct]);

    fwd.resume();
    wait_until("the endpoint is ready again", || {
        pool.ready_endpoints().len() == 2
    });
    let checks_only = fwd.bytes();
    for _ in 0..4 {
        infer_once(&mut backend).unwrap();
    }
    assert!(
        fwd.bytes() - checks_only > 1 << 20,
        "the recovered endpoint got no inference calls"
    );
}

/// An endpoint that comes up after start-up serving another model under the
/// configured name (a rollout gone wrong) stays out of rotation, with the
/// misfit as its reason, and inference keeps going to the one that fits.
/// (Before, only the endpoints ready at start-up had their metadata checked.)
#[test]
fn an_endpoint_that_comes_up_with_another_model_under_the_name_stays_out() {
    let _one_at_a_time = serial();
    let wrong = MlServer::start(&[(
        "nanodet-g",
        repo_root().join("server/tests/data/yolo-test.onnx"),
    )]);
    let fwd = Forwarder::start(wrong.grpc);
    fwd.stop();
    let good = Forwarder::start(server().grpc);
    let direct = good.url();
    let config = TritonConfig {
        health_interval_ms: 50,
        ..triton_config(vec![direct.clone(), fwd.url()])
    };
    let (pool, mut backend) = bundled_on(&config);
    assert_eq!(pool.ready_endpoints(), std::slice::from_ref(&direct));

    fwd.resume();
    let misfit = format!(
        "{}: model \"nanodet-g\" does not fit its model.toml",
        fwd.url()
    );
    wait_until("the health check judges the new endpoint's model", || {
        pool.describe_health().contains(&misfit)
    });
    // Many more checks: it stays out.
    std::thread::sleep(Duration::from_millis(500));
    let health = pool.describe_health();
    assert_eq!(pool.ready_endpoints(), [direct], "{health}");
    assert!(health.contains(&misfit), "{health}");
    assert!(health.contains("[-1, 3, 64, 64]"), "{health}");
    for _ in 0..4 {
        infer_once(&mut backend).unwrap();
    }
    // With the endpoint that fits gone, calls fail rather than go to the
    // misfit (a down endpoint is still tried when nothing is ready; a
    // misfit never is).
    good.stop();
    let before = fwd.bytes();
    for _ in 0..2 {
        assert!(infer_once(&mut backend).is_err());
    }
    assert!(
        fwd.bytes() - before < 1 << 20,
        "a batch went to the misfit endpoint"
    );
}

#[test]
fn a_dead_endpoint_of_two_loses_no_request() {
    let _one_at_a_time = serial();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(dead_endpoint_of_two());
}

async fn dead_endpoint_of_two() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_dir, cfg) = config_file(&format!(
        // The 12 requests arrive at once while the dead endpoint is being
        // found out (a batch can then take seconds): with the latency budget
        // on, some could be refused (429) by design. This test is about
        // failover losing nothing, so admission is by count only.
        "[pipeline]\nworkers = 2\nmax_batch = 4\nmax_queue_wait_ms = 0\n\
         [backend]\nkind = \"triton\"\n\
         [backend.triton]\nendpoints = [\"{dead}\", \"{}\"]\nhealth_interval_ms = 200\nconnect_timeout_ms = 5000\n",
        server().grpc_url()
    ));
    let gw = support::Gateway::start(&["--config", path_str(&cfg)]).await;
    let models: serde_json::Value = reqwest::Client::new()
        .get(gw.url("/v1/models"))
        .bearer_auth(support::KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(models.to_string().contains("\"triton\""), "{models}");
    let dog = Arc::new(data("dog.jpg"));
    let requests = (0..12).map(|_| {
        let dog = dog.clone();
        let gw = &gw;
        async move { gw.detect(dog.to_vec(), "image/jpeg").await }
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        let labels: Vec<_> = support::dets_from_json(&v)
            .into_iter()
            .map(|d| d.label)
            .collect();
        assert!(labels.iter().any(|l| l == "dog"), "{labels:?}");
    }
}

fn serve_fails(config: &str) -> String {
    let (_dir, cfg) = config_file(config);
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["serve", "--http-listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("FRAMEGATE_DEV_KEY", support::KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started anyway: {err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "listened before failing"
    );
    err
}

#[test]
fn no_reachable_endpoint_is_a_clear_startup_error() {
    let (a, b) = (free_port(), free_port());
    let started = Instant::now();
    let err = serve_fails(&format!(
        "[backend]\nkind = \"triton\"\n[backend.triton]\n\
         endpoints = [\"http://127.0.0.1:{a}\", \"http://127.0.0.1:{b}\"]\nstartup_timeout_ms = 500\n"
    ));
    assert!(
        err.contains("no Triton / KServe v2 endpoint became ready within 500 ms"),
        "{err}"
    );
    for port in [a, b] {
        assert!(err.contains(&format!("http://127.0.0.1:{port}: ")), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_server_model_that_does_not_fit_model_toml_is_a_clear_startup_error() {
    let _one_at_a_time = serial();
    let err = serve_fails(&format!(
        "[backend]\nkind = \"triton\"\n[backend.triton]\n\
         endpoints = [\"{}\"]\nmodel_name = \"yolo-test\"\n",
        server().grpc_url()
    ));
    assert!(err.contains("model \"yolo-test\" on http://"), "{err}");
    assert!(err.contains("[-1, 3, 64, 64]"), "{err}");
    assert!(err.contains("no output named \"cls_s8\""), "{err}");

    let err = serve_fails(&format!(
        "[backend]\nkind = \"triton\"\n[backend.triton]\n\
         endpoints = [\"{}\"]\nmodel_name = \"no-such-model\"\n",
        server().grpc_url()
    ));
    assert!(err.contains("\"no-such-model\""), "{err}");
}
