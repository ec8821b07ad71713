//! The load drivers. Every run is bounded: sending stops at the end of the
//! duration, then the run waits at most `drain` for outstanding answers and
//! counts the rest as lost.
//!
//! - **Open loop**: each of N sessions has a frame due every 1/F s (phases
//!   spread evenly across sessions), whatever the server does. A frame that
//!   is due while the session has no credit left is not sent and counts as
//!   dropped (`no-credit`): the offered rate stays fixed, and what the
//!   server could not absorb shows up as drops instead of as a slower
//!   client. Latency is send→answer. With `ignore_credits` due frames are
//!   sent anyway and the server's overload answers are counted instead.
//! - **Closed loop**: each of N sessions keeps `in_flight` frames
//!   outstanding and sends the next as soon as one is answered: this finds
//!   the saturation throughput.
//! - **Idle**: N sessions are opened (handshake done) and held for the
//!   duration without sending, to measure what idle sessions cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::frames::FrameSet;
use crate::recorder::Recorder;
use crate::transport::{AnswerKind, OutFrame, SessionEvent, SharedTransport};

/// What load to apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `fps` frames per second per session, on a fixed schedule.
    Open {
        /// Frames per second per session.
        fps: f64,
    },
    /// `in_flight` outstanding frames per session.
    Closed {
        /// Outstanding frames per session.
        in_flight: u32,
    },
    /// Sessions held open, nothing sent.
    Idle,
}

/// A run's shape.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Sessions.
    pub sessions: usize,
    /// The load per session.
    pub load: Load,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Warm-up before measuring (same load, not recorded).
    pub warmup: Duration,
    /// Longest wait for outstanding answers after sending stops.
    pub drain: Duration,
    /// Sessions opened at once (handshakes in parallel).
    pub connect_parallelism: usize,
    /// Open loop: send due frames even without credit (the server then
    /// answers them per its overload policy) — for overload tests.
    pub ignore_credits: bool,
    /// Closed loop: after a refusal (a `Dropped` answer: overloaded,
    /// queue-full, HTTP 429) a session waits this long before it sends
    /// again, as a well-behaved client backs off; zero resends at once (a
    /// retry storm, whose refusals then take CPU from the server).
    pub refusal_backoff: Duration,
}

/// Runs the plan. `start` is when sending begins (sessions are opened
/// before it); the recorder must measure from `start + warmup`.
pub async fn run(
    plan: &RunPlan,
    transport: SharedTransport,
    frames: Arc<FrameSet>,
    recorder: Arc<Recorder>,
    start: Instant,
) {
    let end = start + plan.warmup + plan.duration;
    let gate = Arc::new(Semaphore::new(plan.connect_parallelism.max(1)));
    let mut tasks = Vec::with_capacity(plan.sessions);
    for id in 0..plan.sessions {
        let transport = transport.clone();
        let frames = frames.clone();
        let recorder = recorder.clone();
        let gate = gate.clone();
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = gate.acquire().await;
                transport.open(id).await
            };
            let handle = match opened {
                Ok(h) => h,
                Err(e) => {
                    recorder.connect_error(&first_line(&e.to_string()));
                    return;
                }
            };
            recorder.session_opened();
            let phase = match plan.load {
                Load::Open { fps } => {
                    Duration::from_secs_f64(id as f64 / plan.sessions as f64 / fps.max(1e-9))
                }
                _ => Duration::ZERO,
            };
            session(id, handle, &plan, &frames, &recorder, start, phase, end).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn session(
    id: usize,
    mut h: crate::transport::SessionHandle,
    plan: &RunPlan,
    frames: &FrameSet,
    recorder: &Recorder,
    start: Instant,
    phase: Duration,
    end: Instant,
) {
    let mut credits = h.credits as usize;
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut seq: u64 = 0;
    let drain_end = end + plan.drain;
    let end_tok = tokio::time::Instant::from_std(end);
    let drain_tok = tokio::time::Instant::from_std(drain_end);

    // `due`: when the frame counts as sent. Open loop: its scheduled time,
    // so a client that fell behind (a stalled runtime, a paused machine)
    // charges the wait to the frames that waited instead of hiding it
    // (coordinated omission); closed loop: now.
    let send = |seq: u64, due: Instant, in_flight: &mut HashMap<u64, Instant>| {
        let frame = OutFrame {
            seq,
            image: frames.pick(id, seq).clone(),
        };
        match h.frames.try_send(frame) {
            Ok(()) => {
                in_flight.insert(seq, due);
                recorder.sent(due);
                true
            }
            Err(_) => false,
        }
    };

    match plan.load {
        Load::Idle => {
            tokio::select! {
                _ = tokio::time::sleep_until(end_tok) => {}
                ev = wait_closed(&mut h.events, recorder) => recorder.closed_early(&first_line(&ev)),
            }
            return;
        }
        Load::Closed { in_flight: n } => {
            let first = tokio::time::Instant::from_std(start);
            tokio::time::sleep_until(first).await;
            for _ in 0..(n as usize).min(credits) {
                seq += 1;
                send(seq, Instant::now(), &mut in_flight);
            }
        }
        Load::Open { .. } => {}
    }

    let mut ticker = match plan.load {
        Load::Open { fps } => {
            let period = Duration::from_secs_f64(1.0 / fps.max(1e-9));
            let mut t =
                tokio::time::interval_at(tokio::time::Instant::from_std(start + phase), period);
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            Some(t)
        }
        _ => None,
    };
    let closed_n = match plan.load {
        Load::Closed { in_flight } => in_flight as usize,
        _ => 0,
    };
    let mut sending = true;
    // Closed loop: no sends before this instant (backing off a refusal).
    let mut backoff_until: Option<tokio::time::Instant> = None;
    let refill = |seq: &mut u64, in_flight: &mut HashMap<u64, Instant>, credits: usize| {
        while in_flight.len() < closed_n.min(credits) {
            *seq += 1;
            if !send(*seq, Instant::now(), in_flight) {
                break;
            }
        }
    };
    loop {
        if !sending && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = async { tokio::time::sleep_until(backoff_until.expect("backing off")).await }, if sending && backoff_until.is_some() => {
                backoff_until = None;
                if Instant::now() >= end {
                    sending = false;
                } else {
                    refill(&mut seq, &mut in_flight, credits);
                }
            }
            due = async { ticker.as_mut().expect("open loop").tick().await }, if sending && ticker.is_some() => {
                let due = due.into_std();
                if due >= end {
                    sending = false;
                    continue;
                }
                seq += 1;
                let no_credit = !plan.ignore_credits && in_flight.len() >= credits;
                if no_credit || !send(seq, due, &mut in_flight) {
                    recorder.no_credit(due);
                }
            }
            _ = tokio::time::sleep_until(end_tok), if sending => {
                sending = false;
            }
            _ = tokio::time::sleep_until(drain_tok) => break,
            ev = h.events.recv() => match ev {
                Some(SessionEvent::Answer { seq: s, kind, at }) => {
                    let refused = matches!(kind, AnswerKind::Dropped(_));
                    match in_flight.remove(&s) {
                        Some(sent_at) => recorder.answer((id, s), sent_at, at, &kind),
                        None => recorder.unmatched(),
                    }
                    if closed_n > 0 && sending {
                        if Instant::now() >= end {
                            sending = false;
                        } else if refused && !plan.refusal_backoff.is_zero() {
                            backoff_until.get_or_insert_with(|| {
                                tokio::time::Instant::now() + plan.refusal_backoff
                            });
                        } else if backoff_until.is_none() {
                            refill(&mut seq, &mut in_flight, credits);
                        }
                    }
                }
                Some(SessionEvent::Credit(c)) => credits += c as usize,
                // The gateway drains: it still answers what it admitted and
                // then closes; frames sent now would be refused. Answers
                // keep coming; only frames unanswered at the close are lost
                // (a gateway that never closes is waited for until the
                // run's end plus the drain time, as any session is).
                Some(SessionEvent::GoingAway(_)) => {
                    recorder.going_away();
                    sending = false;
                    backoff_until = None;
                }
                Some(SessionEvent::Closed(reason)) => {
                    if sending || !in_flight.is_empty() {
                        recorder.closed_early(&first_line(&reason));
                    }
                    break;
                }
                None => break,
            },
        }
    }
    let mut lost: Vec<(u64, Instant)> = in_flight.into_iter().collect();
    lost.sort_unstable();
    recorder.lost(id, &lost);
    drop(h.frames);
}

/// Waits for an idle session's end (counting a `going-away` notice on the
/// way); the reason.
async fn wait_closed(
    events: &mut tokio::sync::mpsc::Receiver<SessionEvent>,
    recorder: &Recorder,
) -> String {
    loop {
        match events.recv().await {
            Some(SessionEvent::Closed(r)) => return r,
            Some(SessionEvent::GoingAway(_)) => recorder.going_away(),
            Some(_) => continue,
            None => return "session ended".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::*;
    use crate::transport::{AnswerKind, BoxFuture, SessionHandle, Transport};

    /// An in-memory gateway that drains: it holds the first `hold` frames,
    /// sends the `going-away` notice, answers `answer` of them, then closes
    /// (as the gateway does on SIGTERM: all of them; past its shutdown
    /// deadline: fewer).
    struct GoesAway {
        hold: usize,
        answer: usize,
    }

    impl Transport for GoesAway {
        fn name(&self) -> &'static str {
            "mock-going-away"
        }

        fn open(&self, _id: usize) -> BoxFuture<'_, anyhow::Result<SessionHandle>> {
            let (ftx, mut frx) = mpsc::channel::<crate::transport::OutFrame>(64);
            let (etx, erx) = mpsc::channel(64);
            let (hold, answered) = (self.hold, self.answer);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while held.len() < hold {
                    match frx.recv().await {
                        Some(f) => held.push(f.seq),
                        None => return,
                    }
                }
                let notice = SessionEvent::GoingAway("going-away: gateway shutting down".into());
                let mut events = vec![notice];
                events.extend(
                    held.into_iter()
                        .take(answered)
                        .map(|seq| SessionEvent::Answer {
                            seq,
                            kind: AnswerKind::Detections {
                                boxes: 1,
                                timings: None,
                            },
                            at: Instant::now(),
                        }),
                );
                events.push(SessionEvent::Closed("closed by server: 1001".into()));
                for ev in events {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if etx.send(ev).await.is_err() {
                        return;
                    }
                }
            });
            Box::pin(async move {
                Ok(SessionHandle {
                    frames: ftx,
                    events: erx,
                    credits: 4,
                })
            })
        }
    }

    #[tokio::test]
    async fn a_draining_gateways_answers_after_its_notice_are_counted_not_lost() {
        // Before, the notice ended the session at once: the three frames
        // the gateway went on to answer were counted lost and the session
        // closed early.
        let drains = |answer| GoesAway { hold: 3, answer };
        let t = run_mock_on(drains(3), Load::Closed { in_flight: 3 }, 1, Duration::ZERO).await;
        assert_eq!((t.sent, t.answered, t.lost), (3, 3, 0));
        assert_eq!(t.going_away, 1);
        assert!(t.closed_early.is_empty(), "{:?}", t.closed_early);
        // A gateway that closes with a frame unanswered: that one is lost
        // and the session ended early, with the close's reason.
        let t = run_mock_on(drains(2), Load::Closed { in_flight: 3 }, 1, Duration::ZERO).await;
        assert_eq!((t.sent, t.answered, t.lost), (3, 2, 1));
        assert_eq!(t.going_away, 1);
        assert_eq!(
            t.closed_early.get("closed by server: 1001"),
            Some(&1),
            "{:?}",
            t.closed_early
        );
        // An idle session's notice is counted too; its close before the
        // end of the run is an early one.
        let idle = GoesAway { hold: 0, answer: 0 };
        let t = run_mock_on(idle, Load::Idle, 1, Duration::ZERO).await;
        assert_eq!((t.sent, t.going_away), (0, 1));
        assert_eq!(t.closed_early.get("closed by server: 1001"), Some(&1));
    }

    /// An in-memory server: answers every frame at once. Also shows that a
    /// transport is all a new wire protocol (QUIC) needs.
    struct AnswerAtOnce;

    impl Transport for AnswerAtOnce {
        fn name(&self) -> &'static str {
            "mock"
        }

        fn open(&self, _id: usize) -> BoxFuture<'_, anyhow::Result<SessionHandle>> {
            let (ftx, mut frx) = mpsc::channel::<crate::transport::OutFrame>(64);
            let (etx, erx) = mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(f) = frx.recv().await {
                    let kind = if f.seq % 10 == 0 {
                        AnswerKind::Dropped("queue-full".into())
                    } else {
                        AnswerKind::Detections {
                            boxes: 1,
                            timings: None,
                        }
                    };
                    let ev = SessionEvent::Answer {
                        seq: f.seq,
                        kind,
                        at: Instant::now(),
                    };
                    if etx.send(ev).await.is_err() {
                        break;
                    }
                }
            });
            Box::pin(async move {
                Ok(SessionHandle {
                    frames: ftx,
                    events: erx,
                    credits: 4,
                })
            })
        }
    }

    async fn run_mock(load: Load, sessions: usize) -> crate::recorder::Totals {
        run_mock_backoff(load, sessions, Duration::ZERO).await
    }

    async fn run_mock_backoff(
        load: Load,
        sessions: usize,
        refusal_backoff: Duration,
    ) -> crate::recorder::Totals {
        run_mock_on(AnswerAtOnce, load, sessions, refusal_backoff).await
    }

    async fn run_mock_on(
        transport: impl Transport + 'static,
        load: Load,
        sessions: usize,
        refusal_backoff: Duration,
    ) -> crate::recorder::Totals {
        let plan = RunPlan {
            sessions,
            load,
            duration: Duration::from_millis(500),
            warmup: Duration::ZERO,
            drain: Duration::from_secs(5),
            connect_parallelism: 4,
            ignore_credits: false,
            refusal_backoff,
        };
        let frames = Arc::new(FrameSet::synthetic(8, 8, 50, 2).unwrap());
        let start = Instant::now() + Duration::from_millis(20);
        let rec = Arc::new(Recorder::new(start));
        run(&plan, Arc::new(transport), frames, rec.clone(), start).await;
        rec.finish()
    }

    #[tokio::test]
    async fn open_loop_is_bounded_and_every_sent_frame_is_accounted_for() {
        let t = run_mock(Load::Open { fps: 50.0 }, 2).await;
        assert_eq!(t.sessions_opened, 2);
        assert!(t.sent > 0);
        // Never more than the schedule: 2 sessions × 50 fps × 0.5 s (+ the
        // first tick of each session).
        assert!(t.sent <= 52, "sent {}", t.sent);
        let dropped: u64 = t.dropped.values().sum();
        assert_eq!(t.answered + dropped + t.lost, t.sent);
        assert_eq!((t.lost, t.unmatched), (0, 0));
    }

    #[tokio::test]
    async fn closed_loop_keeps_frames_in_flight_until_the_end() {
        let t = run_mock(Load::Closed { in_flight: 3 }, 2).await;
        assert!(t.sent >= 6, "sent {}", t.sent);
        let dropped: u64 = t.dropped.values().sum();
        assert_eq!(t.answered + dropped, t.sent);
        assert!(t.dropped["queue-full"] > 0);
        assert_eq!(t.lost, 0);
    }

    #[tokio::test]
    async fn closed_loop_backs_off_after_a_refusal() {
        // The mock refuses every 10th frame and answers at once: without a
        // backoff a session resends as fast as the loop turns; with 100 ms
        // it pauses after each refusal, so in 0.5 s it sends at most about
        // (0.5 s / 100 ms + 1) × 10 frames.
        let storm = run_mock(Load::Closed { in_flight: 3 }, 2).await;
        let polite =
            run_mock_backoff(Load::Closed { in_flight: 3 }, 2, Duration::from_millis(100)).await;
        assert!(polite.sent > 0);
        assert!(polite.sent <= 2 * 6 * 10 + 6, "sent {}", polite.sent);
        assert!(
            storm.sent > 5 * polite.sent,
            "{} vs {}",
            storm.sent,
            polite.sent
        );
        let dropped: u64 = polite.dropped.values().sum();
        assert_eq!(polite.answered + dropped, polite.sent);
        assert_eq!(polite.lost, 0);
    }

    #[tokio::test]
    async fn open_loop_latency_counts_from_when_a_frame_was_due() {
        // The client's own runtime stalls for 300 ms (a blocked thread, a
        // paused machine) while frames fall due at 100 per second: the
        // frames sent late must carry the wait, though the server (the
        // mock) answers at once.
        let stall = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::thread::sleep(Duration::from_millis(300));
        });
        let t = run_mock(Load::Open { fps: 100.0 }, 1).await;
        stall.await.unwrap();
        let max_ms = t.latency.max() as f64 / 1000.0;
        assert!(
            max_ms >= 200.0,
            "a frame due during the stall was timed from its late send: max {max_ms:.1} ms"
        );
    }

    #[tokio::test]
    async fn idle_sessions_send_nothing() {
        let t = run_mock(Load::Idle, 3).await;
        assert_eq!((t.sessions_opened, t.sent), (3, 0));
    }
}
