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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::frames::FrameSet;
use crate::recorder::Recorder;
use crate::transport::{OutFrame, SessionEvent, SharedTransport};

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
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(plan.sessions);
    for id in 0..plan.sessions {
        let transport = transport.clone();
        let frames = frames.clone();
        let recorder = recorder.clone();
        let gate = gate.clone();
        let plan = plan.clone();
        let stop = stop.clone();
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
            session(
                id, handle, &plan, &frames, &recorder, start, phase, end, &stop,
            )
            .await;
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
    stop: &AtomicBool,
) {
    let mut credits = h.credits as usize;
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut seq: u64 = 0;
    let drain_end = end + plan.drain;
    let end_tok = tokio::time::Instant::from_std(end);
    let drain_tok = tokio::time::Instant::from_std(drain_end);

    let send = |seq: u64, in_flight: &mut HashMap<u64, Instant>| {
        let now = Instant::now();
        let frame = OutFrame {
            seq,
            image: frames.pick(id, seq).clone(),
        };
        match h.frames.try_send(frame) {
            Ok(()) => {
                in_flight.insert(seq, now);
                recorder.sent(now);
                true
            }
            Err(_) => false,
        }
    };

    match plan.load {
        Load::Idle => {
            tokio::select! {
                _ = tokio::time::sleep_until(end_tok) => {}
                ev = wait_closed(&mut h.events) => recorder.closed_early(&first_line(&ev)),
            }
            return;
        }
        Load::Closed { in_flight: n } => {
            let first = tokio::time::Instant::from_std(start);
            tokio::time::sleep_until(first).await;
            for _ in 0..(n as usize).min(credits) {
                seq += 1;
                send(seq, &mut in_flight);
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
    loop {
        if !sending && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = async { ticker.as_mut().expect("open loop").tick().await }, if sending && ticker.is_some() => {
                let now = Instant::now();
                if now >= end {
                    sending = false;
                    continue;
                }
                seq += 1;
                let no_credit = !plan.ignore_credits && in_flight.len() >= credits;
                if no_credit || !send(seq, &mut in_flight) {
                    recorder.no_credit(now);
                }
            }
            _ = tokio::time::sleep_until(end_tok), if sending => {
                sending = false;
            }
            _ = tokio::time::sleep_until(drain_tok) => break,
            ev = h.events.recv() => match ev {
                Some(SessionEvent::Answer { seq: s, kind, at }) => {
                    if let Some(sent_at) = in_flight.remove(&s) {
                        recorder.answer(sent_at, at, &kind);
                    }
                    if closed_n > 0 && sending && !stop.load(Ordering::Relaxed) {
                        if Instant::now() >= end {
                            sending = false;
                        } else {
                            while in_flight.len() < closed_n.min(credits) {
                                seq += 1;
                                if !send(seq, &mut in_flight) {
                                    break;
                                }
                            }
                        }
                    }
                }
                Some(SessionEvent::Credit(c)) => credits += c as usize,
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
    let lost: Vec<Instant> = in_flight.values().copied().collect();
    recorder.lost(&lost);
    drop(h.frames);
}

async fn wait_closed(events: &mut tokio::sync::mpsc::Receiver<SessionEvent>) -> String {
    loop {
        match events.recv().await {
            Some(SessionEvent::Closed(r)) => return r,
            Some(_) => continue,
            None => return "session ended".into(),
        }
    }
}
