//! The latency budget of one model's pipeline: a frame that cannot start
//! within `pipeline.max_queue_wait_ms` is refused at once instead of queued.
//!
//! Sans-IO like [`super::fair`]: durations go in, frame counts come out.
//!
//! **The estimate.** A frame with `a` frames queued ahead of it is expected
//! to wait `a · s / N` before a worker picks it up, where `N` is the number
//! of inference workers and `s` the measured service time per frame: the
//! larger of an exponentially weighted mean (weight ¼ for the newest) of
//! `batch time / frames in the batch` over recent batches and the newest
//! batch's time divided by a full batch's frame count ([`ServiceTime`],
//! recorded by the workers as each batch that ran completes; decode,
//! preprocess, inference and postprocess included; a failed batch is not
//! recorded). The mean alone would take several batches to follow a
//! machine that slows down, and admit frames on the old speed meanwhile;
//! with the newest batch in the estimate, one slow full batch shortens the
//! queue at once, and the mean brings it back as batches speed up again.
//! The newest batch counts as if it were full, so a batch of one frame,
//! which on a GPU takes about as long as a full one, does not pass for a
//! slow machine (a partial batch on a slower machine then goes unseen until
//! a full one, which is what overload brings). A batch already running when
//! the frame arrives is not counted: it adds at most one batch's service
//! time.
//!
//! **The rule.** With budget `B` the queue may hold `D = ⌊B · N / s⌋ + 1`
//! frames ([`WaitBudget::frames`]; `B` below the floor's time `F · s` counts
//! as `F · s`, see the end): the last one has `D − 1` ahead and an
//! expected wait of at most `B`. `D` replaces `pipeline.queue_capacity` in
//! fair admission whenever it is smaller (see [`super::fair`], scaled so that
//! capacity plus headroom never exceeds `D`), so tenants keep their weighted
//! shares of a queue whose every frame is expected to start within `B`.
//! A frame that already waited `w` in its session before reaching the
//! pipeline (a stream's frames wait for the session's earlier ones) is held
//! to `B − w`: the budget counts from the moment the gateway took the frame,
//! so how many frames a session or a tenant keeps in flight does not move
//! the bound. A frame that finds the queue empty is always admitted: it
//! starts with the next free worker. Until the first batch has been timed,
//! the queue holds `F` frames per worker.
//!
//! **The bound.** An admitted frame starts within `B` of the gateway taking
//! it, plus the rest of the batch running when it was queued (at most one
//! batch), as long as the service time does not jump between two batches;
//! it is answered one batch after that. (The one exception is the frame
//! admitted to an empty queue after waiting out its budget in its session:
//! that happens only when nothing else waits, and it starts within one
//! batch of being queued.) A refused frame is answered at once: HTTP 429 with `Retry-After`, a
//! stream's `Dropped{overloaded}`.
//!
//! Size `B` to at least `F · s`, where `F = max(max_batch, 8)`
//! ([`QUEUE_FLOOR_PER_WORKER`]). A shorter budget acts as `F · s`: the queue
//! then still takes `F` frames per worker, so batches stay full and one
//! session streaming at the default credit of 8 is not refused because the
//! model or the machine is slow, and admitted frames wait up to `F · s`
//! instead of `B`. (With batches of 2, a budget of 2 · s would leave a
//! slow model a queue of a few frames.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Measured service time per frame (see the module docs). Lock-free; the
/// workers record, the submit path reads.
#[derive(Debug, Default)]
pub struct ServiceTime {
    /// Weighted mean, nanoseconds per frame; 0 until the first batch is
    /// recorded.
    per_frame_ns: AtomicU64,
    /// The newest batch's time divided by a full batch's frames, in
    /// nanoseconds; 0 until then.
    latest_ns: AtomicU64,
}

impl ServiceTime {
    /// A batch of `frames` frames (of at most `max_batch`) took `took` on a
    /// worker.
    pub fn record(&self, frames: usize, max_batch: usize, took: Duration) {
        if frames == 0 {
            return;
        }
        let per = |n: usize| (took.as_nanos() / n as u128).clamp(1, u128::from(u64::MAX)) as u64;
        let sample = per(frames);
        let _ = self
            .per_frame_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old / 4 * 3 + sample / 4
                })
            });
        self.latest_ns
            .store(per(frames.max(max_batch)), Ordering::Release);
    }

    /// The current estimate, once a batch has been recorded: the larger of
    /// the weighted mean and the newest batch as if full (see the module
    /// docs).
    pub fn per_frame(&self) -> Option<Duration> {
        let mean = self.per_frame_ns.load(Ordering::Acquire);
        let latest = self.latest_ns.load(Ordering::Acquire);
        match mean.max(latest) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// `pipeline.max_queue_wait_ms` of one pipeline, with what turns it into
/// frame counts.
#[derive(Debug)]
pub struct WaitBudget {
    budget: Duration,
    workers: usize,
    /// Frames per worker the queue holds whatever the budget:
    /// `max(max_batch, QUEUE_FLOOR_PER_WORKER)`.
    floor: usize,
    warned: AtomicBool,
}

/// The least the queue holds per worker, in frames, when the budget is
/// shorter than that many frames' service time: the default
/// `session.credits`, so one session streaming at it is not refused on a
/// slow model or machine (see the module docs).
pub const QUEUE_FLOOR_PER_WORKER: usize = 8;

impl WaitBudget {
    /// A budget of `budget` (zero: off) for `workers` workers taking batches
    /// of up to `max_batch` frames. The queue holds at least
    /// `max(max_batch, QUEUE_FLOOR_PER_WORKER)` frames per worker (module
    /// docs).
    pub fn new(budget: Duration, workers: usize, max_batch: usize) -> Self {
        Self {
            budget,
            workers: workers.max(1),
            floor: max_batch.max(QUEUE_FLOOR_PER_WORKER),
            warned: AtomicBool::new(false),
        }
    }

    /// The budget; zero when admission by wait is off.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether admission by wait is off (`max_queue_wait_ms = 0`).
    pub fn is_off(&self) -> bool {
        self.budget.is_zero()
    }

    /// Expected wait of a frame with `ahead` frames queued before it, given
    /// the service time per frame.
    pub fn expected_wait(&self, ahead: usize, per_frame: Duration) -> Duration {
        let ns = per_frame.as_nanos() * ahead as u128 / self.workers as u128;
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    /// How many frames may be queued at once for a frame that already
    /// waited `waited` to be expected to start within the budget: it is
    /// admitted while fewer than this many are queued. `None` when the
    /// budget is off. Never 0: a frame that finds the queue empty starts
    /// with the next free worker, so it is admitted even when `waited`
    /// used the budget up (refusing it would shorten nobody's wait).
    pub fn frames(&self, waited: Duration, per_frame: Option<Duration>) -> Option<usize> {
        if self.is_off() {
            return None;
        }
        let Some(per_frame) = per_frame else {
            // Nothing timed yet: the floor (at least a full batch) per worker.
            return Some(if waited < self.budget {
                self.workers * self.floor
            } else {
                1
            });
        };
        // A budget shorter than the floor's service time acts as that time:
        // the queue then still holds a full batch per worker and batches
        // stay full (a shorter budget would shrink them, and throughput with
        // them, just when load is highest), and at least 8 frames per worker.
        let budget = self.budget.max(per_frame.saturating_mul(self.floor as u32));
        let Some(remaining) = budget.checked_sub(waited).filter(|r| !r.is_zero()) else {
            return Some(1);
        };
        let fit = remaining.as_nanos() * self.workers as u128 / per_frame.as_nanos().max(1);
        Some((fit.min(usize::MAX as u128 / 2) as usize).saturating_add(1))
    }

    /// Logs once when the floor's frames (a full batch, at least 8) take
    /// longer than the budget, which then acts as their time (module docs).
    pub fn check_batch(&self, model: &str, per_frame: Option<Duration>) {
        let Some(per_frame) = per_frame else { return };
        let floor = per_frame.saturating_mul(self.floor as u32);
        if !self.is_off() && floor > self.budget && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                model,
                floor_ms = floor.as_millis() as u64,
                budget_ms = self.budget.as_millis() as u64,
                floor_frames = self.floor,
                "the queue's floor of frames per worker (max_batch, at least 8) takes longer \
                 than pipeline.max_queue_wait_ms: the budget acts as that time so that batches \
                 stay full; raise it (or lower max_batch, where it is above 8)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn service_time_is_a_weighted_mean_per_frame_or_the_newest_batch() {
        let s = ServiceTime::default();
        assert_eq!(s.per_frame(), None);
        s.record(0, 8, 100 * MS);
        assert_eq!(s.per_frame(), None, "an empty batch tells nothing");
        s.record(8, 8, 80 * MS);
        assert_eq!(s.per_frame(), Some(10 * MS));
        // A slower full batch counts in full at once: the mean (12.5 ms)
        // would admit frames on the old speed for several batches.
        s.record(8, 8, 160 * MS); // 20 ms per frame
        assert_eq!(s.per_frame(), Some(20 * MS));
        // A faster one brings the estimate down by the mean's weight only.
        s.record(8, 8, 80 * MS); // 10 ms per frame; mean 12.5 → 11.875 ms
        assert_eq!(s.per_frame(), Some(Duration::from_micros(11_875)));
        // A partial batch counts as if full for the newest figure: one frame
        // in 40 ms (a GPU's batch of one costs about a full batch's time)
        // is 5 ms a frame there, not 40, so the mean (18.9 ms, which counts
        // it per frame as before) stands.
        s.record(1, 8, 40 * MS);
        assert_eq!(s.per_frame(), Some(Duration::from_nanos(18_906_250)));
        // The mean follows batches of two at 20 ms a frame.
        for _ in 0..40 {
            s.record(2, 8, 40 * MS);
        }
        let now = s.per_frame().unwrap();
        assert!(now > 19 * MS && now <= 20 * MS, "{now:?}");
        for _ in 0..40 {
            s.record(8, 8, 40 * MS);
        }
        let now = s.per_frame().unwrap();
        assert!(now >= 5 * MS && now < 6 * MS, "{now:?}");
    }

    #[test]
    fn the_budget_becomes_a_frame_count() {
        // 2 workers, 10 ms per frame: 5 ms of queue per frame ahead.
        let b = WaitBudget::new(250 * MS, 2, 8);
        let s = Some(10 * MS);
        assert_eq!(b.frames(Duration::ZERO, s), Some(51));
        assert_eq!(b.expected_wait(50, 10 * MS), 250 * MS);
        // Time already spent waiting in a session counts.
        assert_eq!(b.frames(200 * MS, s), Some(11));
        // Used up: only an empty queue takes it.
        assert_eq!(b.frames(250 * MS, s), Some(1));
        assert_eq!(b.frames(Duration::from_secs(9), s), Some(1));
        // A budget shorter than a batch still queues one full batch per
        // worker (here 8, the floor) for a fresh frame, so batches stay full.
        let slow = Some(Duration::from_secs(1));
        assert_eq!(b.frames(Duration::ZERO, slow), Some(17));
        assert_eq!(b.frames(4 * Duration::from_secs(1), slow), Some(9));
        assert_eq!(b.frames(8 * Duration::from_secs(1), slow), Some(1));
        // Before anything was timed: one batch per worker.
        assert_eq!(b.frames(Duration::ZERO, None), Some(16));
        assert_eq!(b.frames(300 * MS, None), Some(1));
    }

    #[test]
    fn small_batches_keep_a_floor_of_eight_frames_per_worker() {
        // Batches of 2 (`max_batch = 2`): the queue still holds 8 frames per
        // worker when the budget is shorter than their time.
        let b = WaitBudget::new(250 * MS, 2, 2);
        let slow = Some(Duration::from_secs(1));
        assert_eq!(b.frames(Duration::ZERO, slow), Some(17));
        assert_eq!(b.frames(Duration::ZERO, None), Some(16));
        // Where the budget allows more, the budget decides, as for any batch.
        assert_eq!(b.frames(Duration::ZERO, Some(10 * MS)), Some(51));
        // A batch above the floor is the floor.
        assert_eq!(
            WaitBudget::new(250 * MS, 2, 16).frames(Duration::ZERO, slow),
            Some(33)
        );
        // The floor is one session's default credits.
        assert_eq!(
            QUEUE_FLOOR_PER_WORKER,
            crate::config::SessionConfig::default().credits as usize
        );
    }

    #[test]
    fn a_zero_budget_is_off() {
        let b = WaitBudget::new(Duration::ZERO, 2, 8);
        assert!(b.is_off());
        assert_eq!(b.frames(Duration::from_secs(9), Some(MS)), None);
    }
}
