//! The batcher's decision: when to hand which frames to a backend worker.
//!
//! A plain function of the state (frames waiting, age of the oldest, idle
//! workers) and the time, so it is tested without threads or clocks. The
//! rule:
//!
//! * no idle worker → wait; frames keep collecting (up to `max_batch`);
//! * every worker idle and at most `solo_backlog` frames waiting (default
//!   1: a lone frame) → run the next one solo, with every inference thread
//!   (when the pipeline has a solo session): at light load the frame's
//!   latency is what matters, and nothing else needs the cores; the others
//!   wait for it rather than run side by side at a fraction of the speed
//!   each. The next frame is the next in fair order (the oldest, with one
//!   tenant);
//! * `max_batch` frames waiting → send a full batch;
//! * every worker idle → send what is there now, spread over the idle
//!   workers: waiting for batch-mates while the backend sits idle only adds
//!   latency;
//! * some worker busy → wait for batch-mates until the oldest frame has
//!   waited `max_delay`, then send what is there.

use std::time::{Duration, Instant};

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Largest batch.
    pub max_batch: usize,
    /// Longest a frame waits for batch-mates while some worker is busy.
    pub max_delay: Duration,
    /// A solo session exists: a frame meeting idle workers (with at most
    /// `solo_backlog` waiting) runs on it.
    pub solo: bool,
    /// Most frames waiting (every worker idle) that still go to the solo
    /// session, one at a time; 1 runs only a lone frame solo.
    pub solo_backlog: usize,
}

/// What the batcher should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the first `n` waiting frames to an idle worker.
    Dispatch(usize),
    /// Run the next waiting frame (in fair order) on the solo session; it
    /// holds every worker until it is done.
    Solo,
    /// Nothing to send before this instant (or an earlier wake-up).
    WaitUntil(Instant),
    /// Nothing to do until a frame arrives or a worker frees up.
    Idle,
}

impl BatchPolicy {
    /// Decides, given `waiting` frames (the oldest enqueued at `oldest`),
    /// `idle` of `workers` workers free, at time `now`.
    pub fn decide(
        &self,
        now: Instant,
        waiting: usize,
        oldest: Option<Instant>,
        idle: usize,
        workers: usize,
    ) -> Decision {
        if waiting == 0 || idle == 0 {
            return Decision::Idle;
        }
        if idle >= workers && self.solo && waiting <= self.solo_backlog {
            return Decision::Solo;
        }
        if waiting >= self.max_batch {
            return Decision::Dispatch(self.max_batch);
        }
        if idle >= workers {
            return Decision::Dispatch(waiting.div_ceil(idle).min(self.max_batch));
        }
        let deadline = oldest.unwrap_or(now) + self.max_delay;
        if now >= deadline {
            Decision::Dispatch(waiting)
        } else {
            Decision::WaitUntil(deadline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BatchPolicy = BatchPolicy {
        max_batch: 8,
        max_delay: Duration::from_millis(2),
        solo: false,
        solo_backlog: 1,
    };
    const SOLO: BatchPolicy = BatchPolicy { solo: true, ..P };
    const SOLO_B3: BatchPolicy = BatchPolicy {
        solo_backlog: 3,
        ..SOLO
    };

    #[test]
    fn idle_backend_gets_frames_at_once() {
        let now = Instant::now();
        assert_eq!(P.decide(now, 1, Some(now), 2, 2), Decision::Dispatch(1));
    }

    #[test]
    fn idle_workers_share_a_small_backlog() {
        let now = Instant::now();
        assert_eq!(P.decide(now, 3, Some(now), 2, 2), Decision::Dispatch(2));
        assert_eq!(P.decide(now, 2, Some(now), 2, 2), Decision::Dispatch(1));
        assert_eq!(P.decide(now, 7, Some(now), 4, 4), Decision::Dispatch(2));
    }

    #[test]
    fn a_lone_frame_runs_solo_only_when_every_worker_is_idle() {
        let now = Instant::now();
        assert_eq!(SOLO.decide(now, 1, Some(now), 2, 2), Decision::Solo);
        // One worker busy: the frame takes the other worker's own session.
        assert_ne!(SOLO.decide(now, 1, Some(now), 1, 2), Decision::Solo);
        // Two frames, solo_backlog 1: side by side on the workers' sessions.
        assert_eq!(SOLO.decide(now, 2, Some(now), 2, 2), Decision::Dispatch(1));
        // No solo session: the plain rule.
        assert_eq!(P.decide(now, 1, Some(now), 2, 2), Decision::Dispatch(1));
    }

    #[test]
    fn a_short_backlog_runs_solo_one_frame_at_a_time() {
        let now = Instant::now();
        let b3 = SOLO_B3;
        assert_eq!(b3.decide(now, 2, Some(now), 2, 2), Decision::Solo);
        assert_eq!(b3.decide(now, 3, Some(now), 2, 2), Decision::Solo);
        // A longer backlog goes to the workers side by side.
        assert_eq!(b3.decide(now, 4, Some(now), 2, 2), Decision::Dispatch(2));
        // Only with every worker idle, and only with a solo session.
        assert_ne!(b3.decide(now, 2, Some(now), 1, 2), Decision::Solo);
        let no_solo = BatchPolicy { solo: false, ..b3 };
        assert_eq!(
            no_solo.decide(now, 2, Some(now), 2, 2),
            Decision::Dispatch(1)
        );
        // The backlog setting holds with small batches too: two frames with
        // max_batch 2 run solo in turn, not as one batch on one worker.
        let small = BatchPolicy { max_batch: 2, ..b3 };
        assert_eq!(small.decide(now, 2, Some(now), 2, 2), Decision::Solo);
        assert_eq!(small.decide(now, 4, Some(now), 2, 2), Decision::Dispatch(2));
    }

    #[test]
    fn full_batch_leaves_even_when_others_are_busy() {
        let now = Instant::now();
        assert_eq!(P.decide(now, 20, Some(now), 1, 2), Decision::Dispatch(8));
    }

    #[test]
    fn partial_batch_waits_for_mates_while_a_worker_is_busy() {
        let t0 = Instant::now();
        assert_eq!(
            P.decide(t0, 3, Some(t0), 1, 2),
            Decision::WaitUntil(t0 + Duration::from_millis(2))
        );
        let later = t0 + Duration::from_millis(2);
        assert_eq!(P.decide(later, 3, Some(t0), 1, 2), Decision::Dispatch(3));
    }

    #[test]
    fn no_idle_worker_means_waiting() {
        let now = Instant::now();
        assert_eq!(P.decide(now, 8, Some(now), 0, 2), Decision::Idle);
        assert_eq!(P.decide(now, 0, None, 2, 2), Decision::Idle);
    }

    #[test]
    fn batch_never_exceeds_max_and_every_frame_eventually_leaves() {
        // Model check over a small space of states: whatever the state, a
        // dispatch is within bounds, and with an idle worker a wait ends by
        // the oldest frame's deadline.
        let t0 = Instant::now();
        for policy in [P, SOLO, SOLO_B3] {
            for waiting in 0..20 {
                for workers in 1..4 {
                    for idle in 0..=workers {
                        for age_us in [0u64, 500, 2000, 5000] {
                            let now = t0 + Duration::from_micros(age_us);
                            match policy.decide(now, waiting, Some(t0), idle, workers) {
                                Decision::Dispatch(n) => {
                                    assert!(n >= 1 && n <= waiting.min(8));
                                    assert!(idle > 0);
                                }
                                Decision::Solo => {
                                    assert!(policy.solo && idle == workers);
                                    assert!(waiting >= 1 && waiting <= policy.solo_backlog);
                                }
                                Decision::WaitUntil(t) => {
                                    assert!(t <= t0 + P.max_delay && t > now);
                                    assert!(waiting > 0 && idle > 0);
                                }
                                Decision::Idle => assert!(waiting == 0 || idle == 0),
                            }
                        }
                    }
                }
            }
        }
    }
}
