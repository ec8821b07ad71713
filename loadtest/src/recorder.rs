//! What a run measured: send→answer latency in an hdrhistogram (µs, 3
//! significant digits), server stage timings, counts by outcome, and
//! one-second windows for the plots. Events before the warm-up ends are not
//! recorded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use framegate_protocol::StageTimings;
use hdrhistogram::Histogram;

use crate::transport::AnswerKind;

/// Latencies are kept from 1 µs to 10 minutes.
const MAX_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// The stages of `StageTimings`, in order.
pub const STAGES: [&str; 6] = [
    "queue",
    "decode",
    "preprocess",
    "infer",
    "postprocess",
    "total",
];

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Window {
    /// Frames sent in this second.
    pub sent: u64,
    /// Frames answered with detections in this second.
    pub answered: u64,
    /// Frames dropped (by the server or for lack of credit).
    pub dropped: u64,
    /// Frames answered with an error.
    pub errors: u64,
    /// Latency of the frames answered in this second.
    pub latency: Histogram<u64>,
    /// Server resident memory at the end of the second, when sampled.
    pub rss_bytes: Option<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            sent: 0,
            answered: 0,
            dropped: 0,
            errors: 0,
            latency: histogram(),
            rss_bytes: None,
        }
    }
}

/// Everything counted, read at the end.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Frames sent.
    pub sent: u64,
    /// Frames answered with detections.
    pub answered: u64,
    /// Drops by reason (server reasons, and `no-credit` for frames the
    /// client could not send because the session had no credit left).
    pub dropped: BTreeMap<String, u64>,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Frames sent but never answered before the drain deadline.
    pub lost: u64,
    /// Answers whose seq was not in flight (a second answer for a frame,
    /// or a seq never sent): a server bug; 0 in a sound run.
    pub unmatched: u64,
    /// Sessions that could not be opened, by reason.
    pub connect_errors: BTreeMap<String, u64>,
    /// Sessions that ended early, by reason.
    pub closed_early: BTreeMap<String, u64>,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Send→answer latency of answered frames, µs.
    pub latency: Histogram<u64>,
    /// Server stage timings of answered frames, µs, in [`STAGES`] order.
    pub stages: Vec<Histogram<u64>>,
    /// Per-second windows from the end of warm-up.
    pub windows: Vec<Window>,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            sent: 0,
            answered: 0,
            dropped: BTreeMap::new(),
            errors: BTreeMap::new(),
            lost: 0,
            unmatched: 0,
            connect_errors: BTreeMap::new(),
            closed_early: BTreeMap::new(),
            sessions_opened: 0,
            latency: histogram(),
            stages: STAGES.iter().map(|_| histogram()).collect(),
            windows: Vec::new(),
        }
    }
}

/// Shared by every session task of a run.
#[derive(Debug)]
pub struct Recorder {
    measure_from: Instant,
    inner: Mutex<Totals>,
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

impl Recorder {
    /// Records events from `measure_from` on (the end of warm-up).
    pub fn new(measure_from: Instant) -> Self {
        Self {
            measure_from,
            inner: Mutex::new(Totals::default()),
        }
    }

    /// When measuring started.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    fn window(t: &mut Totals, second: usize) -> &mut Window {
        if t.windows.len() <= second {
            t.windows.resize_with(second + 1, Window::default);
        }
        &mut t.windows[second]
    }

    fn second(&self, at: Instant) -> Option<usize> {
        at.checked_duration_since(self.measure_from)
            .map(|d| d.as_secs() as usize)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Totals) -> R) -> R {
        f(&mut self.inner.lock().expect("recorder lock"))
    }

    /// A frame went out at `at`.
    pub fn sent(&self, at: Instant) {
        if let Some(s) = self.second(at) {
            self.with(|t| {
                t.sent += 1;
                Self::window(t, s).sent += 1;
            });
        }
    }

    /// A frame due at `at` was not sent: the session had no credit.
    pub fn no_credit(&self, at: Instant) {
        if let Some(s) = self.second(at) {
            self.with(|t| {
                *t.dropped.entry("no-credit".into()).or_default() += 1;
                Self::window(t, s).dropped += 1;
            });
        }
    }

    /// A frame sent at `sent_at` was answered.
    pub fn answer(&self, sent_at: Instant, at: Instant, kind: &AnswerKind) {
        if sent_at < self.measure_from {
            return;
        }
        let Some(s) = self.second(at) else { return };
        let lat = us(at.saturating_duration_since(sent_at));
        self.with(|t| match kind {
            AnswerKind::Detections { timings, .. } => {
                t.answered += 1;
                let _ = t.latency.record(lat);
                if let Some(st) = timings {
                    record_stages(&mut t.stages, st);
                }
                let w = Self::window(t, s);
                w.answered += 1;
                let _ = w.latency.record(lat);
            }
            AnswerKind::Dropped(r) => {
                *t.dropped.entry(r.clone()).or_default() += 1;
                Self::window(t, s).dropped += 1;
            }
            AnswerKind::Error(e) => {
                *t.errors.entry(e.clone()).or_default() += 1;
                Self::window(t, s).errors += 1;
            }
        });
    }

    /// Frames sent at or after warm-up that never got an answer.
    pub fn lost(&self, sent_at: &[Instant]) {
        let n = sent_at.iter().filter(|&&s| s >= self.measure_from).count() as u64;
        self.with(|t| t.lost += n);
    }

    /// An answer came for a seq that was not in flight.
    pub fn unmatched(&self) {
        self.with(|t| t.unmatched += 1);
    }

    /// A session opened.
    pub fn session_opened(&self) {
        self.with(|t| t.sessions_opened += 1);
    }

    /// A session could not be opened.
    pub fn connect_error(&self, reason: &str) {
        self.with(|t| *t.connect_errors.entry(reason.to_string()).or_default() += 1);
    }

    /// A session ended before the run did.
    pub fn closed_early(&self, reason: &str) {
        self.with(|t| *t.closed_early.entry(reason.to_string()).or_default() += 1);
    }

    /// Server RSS sampled at `at`.
    pub fn rss(&self, at: Instant, bytes: u64) {
        if let Some(s) = self.second(at) {
            self.with(|t| Self::window(t, s).rss_bytes = Some(bytes));
        }
    }

    /// Answered frames and the latency histogram so far (for the progress
    /// line).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, Histogram<u64>) {
        self.with(|t| {
            (
                t.sent,
                t.answered,
                t.dropped.values().sum(),
                t.errors.values().sum(),
                t.latency.clone(),
            )
        })
    }

    /// The totals.
    pub fn finish(&self) -> Totals {
        self.with(|t| t.clone())
    }
}

fn record_stages(h: &mut [Histogram<u64>], st: &StageTimings) {
    let v = [
        st.queue_us,
        st.decode_us,
        st.preprocess_us,
        st.infer_us,
        st.postprocess_us,
        st.total_us,
    ];
    for (h, v) in h.iter_mut().zip(v) {
        let _ = h.record(u64::from(v).clamp(1, MAX_US));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_windows() {
        let t0 = Instant::now();
        let r = Recorder::new(t0 + Duration::from_secs(1));
        let det = AnswerKind::Detections {
            boxes: 1,
            timings: Some(StageTimings {
                infer_us: 10_000,
                total_us: 12_000,
                ..Default::default()
            }),
        };
        // Before warm-up ends: ignored.
        r.sent(t0);
        r.answer(t0, t0 + Duration::from_millis(1500), &det);
        // Measured.
        let s = t0 + Duration::from_millis(1100);
        r.sent(s);
        r.answer(s, s + Duration::from_millis(20), &det);
        r.answer(s, s + Duration::from_millis(1000), &det);
        r.answer(s, s, &AnswerKind::Dropped("queue-full".into()));
        r.no_credit(s);
        r.answer(s, s, &AnswerKind::Error("http-500".into()));
        r.lost(&[t0, s]);
        let t = r.finish();
        assert_eq!((t.sent, t.answered, t.lost), (1, 2, 1));
        assert_eq!(t.dropped["queue-full"], 1);
        assert_eq!(t.dropped["no-credit"], 1);
        assert_eq!(t.errors["http-500"], 1);
        assert_eq!(t.windows.len(), 2);
        assert_eq!(t.windows[0].answered, 1);
        assert_eq!(t.windows[1].answered, 1);
        let p50 = t.latency.value_at_quantile(0.5);
        assert!((19_900..=20_100).contains(&p50), "{p50}");
        assert_eq!(t.stages[3].len(), 2);
    }
}
