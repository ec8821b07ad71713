//! A short bounded closed loop of the load harness (`framegate-load`'s
//! driver) against a test server, for the harness's transport tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use framegate_loadtest::driver::{self, Load, RunPlan};
use framegate_loadtest::frames::FrameSet;
use framegate_loadtest::recorder::{Recorder, Totals};
use framegate_loadtest::transport::Transport;

/// Runs `sessions` sessions × `in_flight` frames for one second of small
/// synthetic frames, then drains; asserts the run stayed bounded.
pub async fn closed_loop<T: Transport + 'static>(
    transport: T,
    sessions: usize,
    in_flight: u32,
) -> Totals {
    let plan = RunPlan {
        sessions,
        load: Load::Closed { in_flight },
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(10),
        connect_parallelism: 4,
        ignore_credits: false,
        refusal_backoff: Duration::ZERO,
    };
    let frames = Arc::new(FrameSet::synthetic(160, 120, 80, 3).unwrap());
    let start = Instant::now() + Duration::from_millis(300);
    let rec = Arc::new(Recorder::new(start));
    let t0 = Instant::now();
    driver::run(&plan, Arc::new(transport), frames, rec.clone(), start).await;
    assert!(t0.elapsed() < Duration::from_secs(15), "bounded run");
    rec.finish()
}
