//! `pipeline.spin_after_run = false`: a session with more than one intra-op
//! thread (the solo session) stops its pool threads as each run returns.
//! By default ONNX Runtime keeps them spin-waiting for 40-47 ms of CPU
//! after every run, which at 15 lone frames/s was 0.6 of a core
//! (docs/benchmarks.md, "ONNX Runtime's spin after a run"). Its own binary,
//! so no other test's threads share the process.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use framegate::backend::onnx::{init_runtime, OnnxBackend, OnnxThreads};
use framegate::backend::spec::LoadedModel;
use framegate::backend::Backend;

/// CPU time of the whole process (every thread), from the kernel.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The most CPU the process spends in a 150 ms gap after a run, over three
/// runs of a two-thread session (the solo session's shape; a widened one,
/// as the pipeline makes it, when `widen`).
fn cpu_after_runs(spin_after_run: bool, widen: bool) -> Duration {
    // The CPU clock covers the whole process: one measurement at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    init_runtime(None).expect("ONNX Runtime (run scripts/install-onnxruntime.sh)");
    let model = LoadedModel::bundled().unwrap();
    let spec = &model.spec.input;
    let input = vec![0.5f32; 3 * spec.width as usize * spec.height as usize];
    let threads = OnnxThreads {
        threads: if widen { 1 } else { 2 },
        spin_after_run,
    };
    let worker = OnnxBackend::with_threads(&model, threads).unwrap();
    let mut backend: Box<dyn Backend> = if widen {
        worker
            .solo(&model, 2)
            .expect("ONNX sessions widen")
            .unwrap()
    } else {
        Box::new(worker)
    };
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        backend.infer(&input, 1, &mut |_| Ok(())).unwrap();
        let before = process_cpu();
        std::thread::sleep(Duration::from_millis(150));
        let spent = process_cpu() - before;
        eprintln!("spin_after_run={spin_after_run} widen={widen}: {spent:?} of CPU in a 150 ms gap after a run");
        worst = worst.max(spent);
    }
    worst
}

#[test]
fn without_spin_after_run_a_two_thread_session_is_idle_between_runs() {
    // A blocked pool costs microseconds (55-72 µs measured; the default
    // spin-wait 40-47 ms per gap). The solo session, made from a worker's
    // session, keeps the setting.
    for widen in [false, true] {
        let worst = cpu_after_runs(false, widen);
        assert!(
            worst < Duration::from_millis(15),
            "the session's threads kept running after the run (widen={widen}): \
             {worst:?} of CPU in a 150 ms gap"
        );
    }
}

#[test]
fn by_default_the_pool_spins_after_a_run() {
    // What the setting is for: ONNX Runtime's default, kept by
    // `spin_after_run = true`, spends CPU after a run: 40-47 ms of a 150 ms
    // gap on an idle machine. A low bound, as a thread that spins gets less
    // CPU on a machine busy with other work.
    let worst = cpu_after_runs(true, false);
    assert!(
        worst > Duration::from_millis(5),
        "no spinning after a run with spin_after_run = true: {worst:?}"
    );
}
