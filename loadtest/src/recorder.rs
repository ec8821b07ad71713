//! What a run measured: send→answer latency in an hdrhistogram (µs, 3
//! significant digits), server stage timings, counts by outcome, and
//! one-second windows for the plots. Events before the warm-up ends are not
//! recorded. Optionally every measured frame as a CSV row (`--frame-log`):
//! the percentiles say how many frames were slow, the rows say which.

use std::collections::BTreeMap;
use std::io::Write;
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
    /// Sessions that got the gateway's `going-away` notice (and stopped
    /// sending; the answers owed still count).
    pub going_away: u64,
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
            going_away: 0,
            sessions_opened: 0,
            latency: histogram(),
            stages: STAGES.iter().map(|_| histogram()).collect(),
            windows: Vec::new(),
        }
    }
}

/// The header of the frame log (`--frame-log`): one row per measured
/// frame, in the order answers arrived. `sent_ms` counts from the end of
/// warm-up; `outcome` is `detections`, `dropped:REASON`, `error:CODE` or
/// `lost` (no answer before the drain deadline; no latency); the server's
/// stage timings (µs) are empty when the answer carried none.
pub const FRAME_LOG_HEADER: &str = "session,seq,sent_ms,latency_ms,outcome,queue_us,decode_us,preprocess_us,infer_us,postprocess_us,total_us";

/// Where frame rows go, and the first write error (reported at the end).
struct FrameLog {
    out: Box<dyn Write + Send>,
    error: Option<std::io::Error>,
}

/// Shared by every session task of a run.
pub struct Recorder {
    measure_from: Instant,
    inner: Mutex<Totals>,
    frame_log: Option<Mutex<FrameLog>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("measure_from", &self.measure_from)
            .field("frame_log", &self.frame_log.is_some())
            .finish_non_exhaustive()
    }
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Recorder {
    /// Records events from `measure_from` on (the end of warm-up).
    pub fn new(measure_from: Instant) -> Self {
        Self {
            measure_from,
            inner: Mutex::new(Totals::default()),
            frame_log: None,
        }
    }

    /// Also writes every measured frame to `out` as a CSV row
    /// ([`FRAME_LOG_HEADER`]); [`Recorder::finish_frame_log`] flushes it.
    pub fn with_frame_log(mut self, out: Box<dyn Write + Send>) -> Self {
        let mut log = FrameLog { out, error: None };
        if let Err(e) = writeln!(log.out, "{FRAME_LOG_HEADER}") {
            log.error = Some(e);
        }
        self.frame_log = Some(Mutex::new(log));
        self
    }

    /// Flushes the frame log; the first error any write met.
    pub fn finish_frame_log(&self) -> std::io::Result<()> {
        let Some(log) = &self.frame_log else {
            return Ok(());
        };
        let mut log = log.lock().expect("frame log lock");
        if let Some(e) = log.error.take() {
            return Err(e);
        }
        log.out.flush()
    }

    fn log_frame(
        &self,
        frame: (usize, u64),
        sent_at: Instant,
        latency_us: Option<u64>,
        outcome: &str,
        timings: Option<&StageTimings>,
    ) {
        let Some(log) = &self.frame_log else { return };
        let sent_ms = sent_at
            .saturating_duration_since(self.measure_from)
            .as_secs_f64()
            * 1e3;
        let latency = latency_us.map_or(String::new(), |l| format!("{:.3}", l as f64 / 1e3));
        let stages = timings.map_or(",,,,,".to_string(), |t| {
            format!(
                "{},{},{},{},{},{}",
                t.queue_us, t.decode_us, t.preprocess_us, t.infer_us, t.postprocess_us, t.total_us
            )
        });
        // Reasons and codes are mostly short tokens, but an HTTP error can
        // carry an OS message: nothing in it may split the row or a field.
        let outcome = outcome.replace([',', '\n', '\r', '"'], " ");
        let (session, seq) = frame;
        // Formatted before the lock: the lock only covers the copy into the
        // buffer (and, every so often, its write).
        let row = format!("{session},{seq},{sent_ms:.3},{latency},{outcome},{stages}\n");
        let mut log = log.lock().expect("frame log lock");
        if log.error.is_none() {
            if let Err(e) = log.out.write_all(row.as_bytes()) {
                log.error = Some(e);
            }
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

    /// Frame `seq` of session `session`, sent at `sent_at`, was answered.
    pub fn answer(
        &self,
        (session, seq): (usize, u64),
        sent_at: Instant,
        at: Instant,
        kind: &AnswerKind,
    ) {
        if sent_at < self.measure_from {
            return;
        }
        let Some(s) = self.second(at) else { return };
        let lat = us(at.saturating_duration_since(sent_at));
        // The histograms stop at MAX_US: a longer wait is counted at the
        // cap (the frame log keeps the real value), never left out.
        let capped = lat.min(MAX_US);
        if self.frame_log.is_some() {
            let (outcome, timings) = match kind {
                AnswerKind::Detections { timings, .. } => {
                    ("detections".to_string(), timings.as_ref())
                }
                AnswerKind::Dropped(r) => (format!("dropped:{r}"), None),
                AnswerKind::Error(e) => (format!("error:{e}"), None),
            };
            self.log_frame((session, seq), sent_at, Some(lat), &outcome, timings);
        }
        self.with(|t| match kind {
            AnswerKind::Detections { timings, .. } => {
                t.answered += 1;
                let _ = t.latency.record(capped);
                if let Some(st) = timings {
                    record_stages(&mut t.stages, st);
                }
                let w = Self::window(t, s);
                w.answered += 1;
                let _ = w.latency.record(capped);
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

    /// Frames of session `session` sent at or after warm-up that never got
    /// an answer: (seq, sent at).
    pub fn lost(&self, session: usize, frames: &[(u64, Instant)]) {
        let mut n = 0;
        for &(seq, sent_at) in frames.iter().filter(|(_, s)| *s >= self.measure_from) {
            n += 1;
            self.log_frame((session, seq), sent_at, None, "lost", None);
        }
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

    /// A session got the gateway's `going-away` notice.
    pub fn going_away(&self) {
        self.with(|t| t.going_away += 1);
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
        r.answer((0, 1), t0, t0 + Duration::from_millis(1500), &det);
        // Measured.
        let s = t0 + Duration::from_millis(1100);
        r.sent(s);
        r.answer((0, 2), s, s + Duration::from_millis(20), &det);
        r.answer((0, 3), s, s + Duration::from_millis(1000), &det);
        r.answer((0, 4), s, s, &AnswerKind::Dropped("queue-full".into()));
        r.no_credit(s);
        r.answer((0, 5), s, s, &AnswerKind::Error("http-500".into()));
        r.lost(0, &[(1, t0), (6, s)]);
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

    #[test]
    fn a_latency_past_the_histogram_is_counted_at_its_cap_and_logged_as_it_was() {
        let t0 = Instant::now();
        let buf = Shared::default();
        let r = Recorder::new(t0).with_frame_log(Box::new(buf.clone()));
        let det = AnswerKind::Detections {
            boxes: 0,
            timings: None,
        };
        r.sent(t0);
        r.answer((0, 1), t0, t0 + Duration::from_secs(700), &det);
        r.finish_frame_log().unwrap();
        let t = r.finish();
        assert_eq!((t.answered, t.latency.len()), (1, 1));
        assert!(
            t.latency.max() >= MAX_US * 999 / 1000,
            "{}",
            t.latency.max()
        );
        let w = t.windows.iter().map(|w| w.latency.len()).sum::<u64>();
        assert_eq!(w, 1);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("0,1,0.000,700000.000,detections"),
            "{text}"
        );
    }

    /// A `Write` into a buffer the test keeps.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_frame_log_has_a_row_per_measured_frame() {
        let t0 = Instant::now();
        let buf = Shared::default();
        let r = Recorder::new(t0 + Duration::from_secs(1)).with_frame_log(Box::new(buf.clone()));
        let det = AnswerKind::Detections {
            boxes: 2,
            timings: Some(StageTimings {
                queue_us: 5,
                decode_us: 2100,
                preprocess_us: 600,
                infer_us: 23_000,
                postprocess_us: 180,
                total_us: 25_900,
            }),
        };
        // During warm-up: no row.
        r.answer((3, 1), t0, t0 + Duration::from_millis(30), &det);
        let s = t0 + Duration::from_millis(1250);
        r.answer((3, 2), s, s + Duration::from_micros(26_450), &det);
        r.answer(
            (1, 7),
            s,
            s + Duration::from_millis(2),
            &AnswerKind::Dropped("queue-full".into()),
        );
        r.answer(
            (1, 8),
            s,
            s + Duration::from_millis(1),
            &AnswerKind::Error("request: \"a,b\"\r\nc".into()),
        );
        r.lost(2, &[(4, t0), (9, s)]);
        r.finish_frame_log().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(
            rows,
            [
                FRAME_LOG_HEADER,
                "3,2,250.000,26.450,detections,5,2100,600,23000,180,25900",
                "1,7,250.000,2.000,dropped:queue-full,,,,,,",
                "1,8,250.000,1.000,error:request:  a b   c,,,,,,",
                "2,9,250.000,,lost,,,,,,",
            ]
        );
        let columns = FRAME_LOG_HEADER.split(',').count();
        assert!(
            rows.iter().all(|r| r.split(',').count() == columns),
            "{rows:?}"
        );
    }
}
