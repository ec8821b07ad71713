//! Unit and model-based tests of the session state machine, no sockets: a
//! simulated client and a simulated pipeline drive it through random
//! interleavings of frames, completions, acks, lost connections and resumes.

use std::collections::{BTreeMap, VecDeque};

use framegate_protocol::{DropReason, ErrorCode, OverloadPolicy, ServerMessage};

use super::*;

fn cfg(window: u32, policy: OverloadPolicy) -> CoreConfig {
    CoreConfig {
        window,
        policy,
        max_in_pipeline: 2,
        resume_buffer: 64,
        grace_us: 1_000_000,
    }
}

fn det(w: u32, h: u32) -> Outcome {
    Outcome::Detections(Detections {
        width: w,
        height: h,
        ..Default::default()
    })
}

fn drain(core: &mut SessionCore<u64>) -> Vec<ServerMessage> {
    std::iter::from_fn(|| {
        core.poll_transmit()
            .map(|t| Arc::unwrap_or_clone(t.message))
    })
    .collect()
}

fn answered(msgs: &[ServerMessage]) -> Vec<u64> {
    msgs.iter()
        .flat_map(|m| m.answered_seqs().to_vec())
        .collect()
}

#[test]
fn block_refuses_frames_beyond_the_window_in_order() {
    let mut c = SessionCore::new(cfg(2, OverloadPolicy::Block), 0);
    c.attach(0).unwrap();
    for seq in 1..=3 {
        c.on_frame(0, seq, 0, Ok(seq), false).unwrap();
    }
    // The refusal of 3 waits behind the answers of 1 and 2.
    assert!(drain(&mut c).is_empty());
    let d1 = c.poll_dispatch(0).unwrap();
    let d2 = c.poll_dispatch(0).unwrap();
    assert!(c.poll_dispatch(0).is_none());
    c.on_outcome(10, d2.seq, det(4, 4));
    assert!(drain(&mut c).is_empty(), "2 must wait for 1");
    c.on_outcome(10, d1.seq, det(4, 4));
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![1, 2, 3]);
    assert!(
        matches!(&msgs[2], ServerMessage::Error(e) if e.code == ErrorCode::NoCredit && e.seq == Some(3))
    );
    assert_eq!(c.usage().frames, 2);
    assert_eq!(c.usage().pixels, 32);
}

#[test]
fn drop_oldest_supersedes_the_oldest_waiting_frame() {
    let mut c = SessionCore::new(
        CoreConfig {
            max_in_pipeline: 1,
            ..cfg(3, OverloadPolicy::DropOldest)
        },
        0,
    );
    c.attach(0).unwrap();
    c.on_frame(0, 1, 0, Ok(1), false).unwrap();
    let d1 = c.poll_dispatch(0).unwrap();
    c.on_frame(0, 2, 0, Ok(2), false).unwrap();
    c.on_frame(0, 3, 0, Ok(3), false).unwrap();
    c.on_frame(0, 4, 0, Ok(4), false).unwrap(); // supersedes 2
    c.on_frame(0, 5, 0, Ok(5), false).unwrap(); // supersedes 3
    assert_eq!(c.holding_credit(), 3);
    c.on_outcome(1, d1.seq, det(1, 1));
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![1, 2, 3]);
    assert!(
        matches!(&msgs[1], ServerMessage::Dropped(d) if d.reason == DropReason::Superseded && d.seqs == [2, 3]),
        "{msgs:?}"
    );
    assert_eq!(c.poll_dispatch(1).unwrap().seq, 4);
}

#[test]
fn latest_only_keeps_only_the_newest_waiting_frame() {
    let mut c = SessionCore::new(
        CoreConfig {
            max_in_pipeline: 1,
            ..cfg(8, OverloadPolicy::LatestOnly)
        },
        0,
    );
    c.attach(0).unwrap();
    for seq in 1..=5 {
        c.on_frame(0, seq, 0, Ok(seq), false).unwrap();
        if seq == 1 {
            c.poll_dispatch(0).unwrap();
        }
    }
    c.on_outcome(1, 1, det(1, 1));
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![1, 2, 3, 4]);
    assert_eq!(c.poll_dispatch(1).unwrap().seq, 5);
}

#[test]
fn a_frame_with_nothing_to_replace_is_dropped_for_no_credit() {
    let mut c = SessionCore::new(
        CoreConfig {
            max_in_pipeline: 1,
            ..cfg(1, OverloadPolicy::DropOldest)
        },
        0,
    );
    c.attach(0).unwrap();
    c.on_frame(0, 1, 0, Ok(1), false).unwrap();
    c.poll_dispatch(0).unwrap();
    c.on_frame(0, 2, 0, Ok(2), false).unwrap();
    c.on_outcome(1, 1, det(1, 1));
    let msgs = drain(&mut c);
    assert!(
        matches!(&msgs[1], ServerMessage::Dropped(d) if d.reason == DropReason::NoCredit && d.seqs == [2])
    );
}

#[test]
fn deadlines_that_cannot_be_met_are_dropped_before_dispatch() {
    let mut c = SessionCore::new(
        CoreConfig {
            max_in_pipeline: 1,
            ..cfg(8, OverloadPolicy::Block)
        },
        0,
    );
    c.attach(0).unwrap();
    c.on_frame(0, 1, 0, Ok(1), false).unwrap();
    c.poll_dispatch(0).unwrap();
    c.on_outcome(50_000, 1, det(1, 1)); // service time: 50 ms
    c.on_frame(50_000, 2, 90_000, Ok(2), false).unwrap(); // 40 ms left: too late
    c.on_frame(50_000, 3, 200_000, Ok(3), false).unwrap(); // 150 ms left: fine
    assert_eq!(c.poll_dispatch(50_000).unwrap().seq, 3);
    let msgs = drain(&mut c);
    assert!(
        matches!(&msgs[1], ServerMessage::Dropped(d) if d.reason == DropReason::DeadlineExceeded && d.seqs == [2])
    );
    assert_eq!(c.usage().frames, 1, "dropped frames are never billed");
}

#[test]
fn refused_frames_keep_their_turn_and_leave_waiting_frames_alone() {
    // latest-only would supersede waiting frames on a new frame; a refusal
    // (going away) must not: admitted frames are still answered.
    let mut c = SessionCore::new(cfg(2, OverloadPolicy::LatestOnly), 0);
    c.attach(0).unwrap();
    c.on_frame(0, 1, 0, Ok(1), false).unwrap();
    c.on_frame(0, 2, 0, Ok(2), false).unwrap(); // supersedes 1
    c.refuse(0, 3, GatewayError::GoingAway, false).unwrap();
    assert!(c.refuse(0, 3, GatewayError::GoingAway, false).is_err());
    assert_eq!(c.holding_credit(), 1);
    let d = c.poll_dispatch(0).unwrap();
    assert_eq!(d.seq, 2);
    assert_eq!(answered(&drain(&mut c)), vec![1], "3 waits behind 2");
    c.on_outcome(10, 2, det(2, 2));
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![2, 3]);
    assert!(matches!(
        &msgs[1],
        ServerMessage::Error(e) if e.code == ErrorCode::GoingAway && e.seq == Some(3) && e.retryable
    ));
    assert!(c.is_drained());
    assert_eq!(c.usage().frames, 1, "a refusal is not billed");
}

#[test]
fn refusals_answered_together_carry_the_longest_retry_hint() {
    let mut c = SessionCore::new(cfg(4, OverloadPolicy::LatestOnly), 0);
    c.attach(0).unwrap();
    for (seq, after) in [(1, Some(5)), (2, Some(40)), (3, None), (4, Some(7))] {
        c.on_frame_refused(seq, false, DropReason::RateLimited, "over".into(), after)
            .unwrap();
    }
    let msgs = drain(&mut c);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        matches!(&msgs[0], ServerMessage::Dropped(x) if x.seqs == [1, 2, 3, 4] && x.retry_after_ms == Some(40)),
        "{msgs:?}"
    );
    // Without any hint, none is made up.
    c.on_frame_refused(5, false, DropReason::RateLimited, "over".into(), None)
        .unwrap();
    let msgs = drain(&mut c);
    assert!(
        matches!(&msgs[0], ServerMessage::Dropped(x) if x.retry_after_ms.is_none()),
        "{msgs:?}"
    );
}

#[test]
fn a_rate_limited_frame_is_dropped_in_order_and_holds_nothing() {
    let mut c = SessionCore::new(cfg(2, OverloadPolicy::LatestOnly), 0);
    c.attach(0).unwrap();
    c.on_frame(0, 1, 0, Ok(1), false).unwrap();
    c.on_frame_refused(2, false, DropReason::RateLimited, "over".into(), Some(5))
        .unwrap();
    // No credit taken and the waiting frame 1 is not superseded.
    assert_eq!(c.holding_credit(), 1);
    let d = c.poll_dispatch(0).unwrap();
    assert!(drain(&mut c).is_empty(), "the drop waits behind 1's answer");
    c.on_outcome(10, d.seq, det(2, 2));
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![1, 2]);
    assert!(matches!(&msgs[1], ServerMessage::Dropped(x)
        if x.reason == DropReason::RateLimited && x.retry_after_ms == Some(5)));
    assert_eq!(c.usage().frames, 1, "only the computed frame is billed");
    // Sequence rules hold for refused frames too.
    assert!(c
        .on_frame_refused(2, false, DropReason::RateLimited, "over".into(), Some(5))
        .is_err());
    assert!(matches!(
        c.on_frame_refused(1, true, DropReason::RateLimited, "over".into(), Some(5)),
        Ok(false)
    ));
}

#[test]
fn sequence_numbers_must_increase_except_late_datagrams() {
    let mut c = SessionCore::new(cfg(8, OverloadPolicy::DropOldest), 0);
    c.attach(0).unwrap();
    c.on_frame(0, 5, 0, Ok(5), true).unwrap();
    assert!(matches!(c.on_frame(0, 4, 0, Ok(4), true), Ok(false)));
    assert!(c.on_frame(0, 5, 0, Ok(5), false).is_err());
}

#[test]
fn resume_resends_unacked_answers_and_bills_once() {
    let mut c = SessionCore::new(cfg(4, OverloadPolicy::Block), 0);
    let a = c.attach(0).unwrap();
    assert_eq!(a.credits, 4);
    for seq in 1..=3 {
        c.on_frame(0, seq, 0, Ok(seq), false).unwrap();
    }
    for _ in 0..2 {
        let d = c.poll_dispatch(0).unwrap();
        c.on_outcome(0, d.seq, det(2, 2));
    }
    assert_eq!(answered(&drain(&mut c)), vec![1, 2]);
    c.detach(100);
    assert_eq!(c.expires_at(), Some(1_000_100));
    let d = c.poll_dispatch(0).unwrap();
    c.on_outcome(0, d.seq, det(2, 2));
    assert!(drain(&mut c).is_empty(), "nothing is sent while detached");
    // The client got the answer of 1 only.
    let a = c.attach(1).unwrap();
    assert_eq!(a.received_seq, 3);
    assert_eq!(a.credits, 4 - 2, "answers of 2 (re-sent) and 3 are owed");
    let msgs = drain(&mut c);
    assert_eq!(answered(&msgs), vec![2, 3]);
    assert_eq!(c.usage().frames, 3);
    let ServerMessage::Detections(d3) = &msgs[1] else {
        panic!()
    };
    assert_eq!(d3.usage.frames, 3);
    // Resuming again from 3 re-sends nothing.
    c.detach(200);
    c.attach(3).unwrap();
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.usage().frames, 3);
    assert!(c.is_drained());
}

#[test]
fn resume_is_refused_when_answers_were_evicted_or_never_sent() {
    let mut c = SessionCore::new(
        CoreConfig {
            resume_buffer: 2,
            ..cfg(8, OverloadPolicy::Block)
        },
        0,
    );
    c.attach(0).unwrap();
    for seq in 1..=4 {
        c.on_frame(
            0,
            seq,
            0,
            Err(GatewayError::InvalidImage("x".into())),
            false,
        )
        .unwrap();
    }
    assert_eq!(answered(&drain(&mut c)), vec![1, 2, 3, 4]);
    c.detach(0);
    assert!(matches!(
        c.attach(1),
        Err(ResumeRefused::Evicted { kept_from: 3, .. })
    ));
    assert!(matches!(c.attach(9), Err(ResumeRefused::Ahead { .. })));
    assert_eq!(
        answered(&{
            c.attach(2).unwrap();
            drain(&mut c)
        }),
        vec![3, 4]
    );
}

/// xorshift64*, so the model tests are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A simulated client and pipeline around one core. Messages in flight on
/// the connection are lost when it breaks.
struct Sim {
    core: SessionCore<u64>,
    now: u64,
    policy: OverloadPolicy,
    window: u32,
    to_server: VecDeque<u64>,
    to_client: VecDeque<ServerMessage>,
    computing: Vec<u64>,
    connected: bool,
    // client side
    next_seq: u64,
    credits: i64,
    sent: Vec<u64>,
    unanswered: Vec<u64>,
    answers: BTreeMap<u64, &'static str>,
    last_received: u64,
    detections_received: u64,
    billed: u64,
}

impl Sim {
    fn new(policy: OverloadPolicy, window: u32, resume_buffer: usize) -> Self {
        let mut core = SessionCore::new(
            CoreConfig {
                resume_buffer,
                ..cfg(window, policy)
            },
            0,
        );
        let a = core.attach(0).unwrap();
        Sim {
            core,
            now: 0,
            policy,
            window,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            computing: Vec::new(),
            connected: true,
            next_seq: 1,
            credits: i64::from(a.credits),
            sent: Vec::new(),
            unanswered: Vec::new(),
            answers: BTreeMap::new(),
            last_received: 0,
            detections_received: 0,
            billed: 0,
        }
    }

    fn pump(&mut self) {
        while let Some(d) = self.core.poll_dispatch(self.now) {
            self.computing.push(d.seq);
        }
        while let Some(t) = self.core.poll_transmit() {
            self.billed += u64::from(t.billed.is_some());
            self.to_client.push_back(Arc::unwrap_or_clone(t.message));
        }
        assert!(self.core.holding_credit() <= self.window);
        assert!(self.core.in_pipeline() <= 2);
        assert!(self.core.pending() <= self.core.max_entries());
        assert_eq!(self.core.usage().frames, self.billed);
    }

    fn client_send(&mut self) {
        if self.policy == OverloadPolicy::Block && self.credits <= 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1 + u64::from(seq.is_multiple_of(7)); // gaps are allowed
        self.credits -= 1;
        self.sent.push(seq);
        self.unanswered.push(seq);
        self.to_server.push_back(seq);
    }

    fn server_read(&mut self) {
        if !self.connected || !self.core.can_accept() {
            return;
        }
        if let Some(seq) = self.to_server.pop_front() {
            let deadline = if seq % 5 == 0 { self.now + 3 } else { 0 };
            let frame = if seq % 11 == 0 {
                Err(GatewayError::InvalidImage("bad".into()))
            } else {
                Ok(seq)
            };
            assert!(matches!(
                self.core.on_frame(self.now, seq, deadline, frame, false),
                Ok(true)
            ));
        }
    }

    fn complete(&mut self, rng: &mut Rng) {
        if self.computing.is_empty() {
            return;
        }
        let i = rng.below(self.computing.len() as u64) as usize;
        let seq = self.computing.swap_remove(i);
        let outcome = match rng.below(10) {
            0 => Outcome::Failed(GatewayError::Backend("boom".into())),
            1 => Outcome::Dropped(DropReason::QueueFull, "full".into(), Some(1000)),
            _ => det(3, 2),
        };
        self.core.on_outcome(self.now, seq, outcome);
    }

    fn client_recv(&mut self) {
        let Some(msg) = self.to_client.pop_front() else {
            return;
        };
        let kind = msg.kind();
        if let ServerMessage::Detections(d) = &msg {
            self.detections_received += 1;
            assert_eq!(d.usage.frames, self.detections_received, "usage is exact");
        }
        if self.policy == OverloadPolicy::Block {
            assert!(
                !matches!(&msg, ServerMessage::Error(e) if e.code == ErrorCode::NoCredit),
                "a client honouring credits is never refused"
            );
            assert!(
                !matches!(&msg, ServerMessage::Dropped(d) if d.reason != DropReason::DeadlineExceeded && d.reason != DropReason::QueueFull),
                "no policy drops under block: {msg:?}"
            );
        }
        for &seq in msg.answered_seqs() {
            assert!(seq > self.last_received, "answers arrive in order, once");
            assert!(
                self.answers.insert(seq, kind).is_none(),
                "seq {seq} answered twice"
            );
            self.last_received = seq;
            self.credits += 1;
            self.unanswered.retain(|&s| s != seq);
        }
    }

    fn break_connection(&mut self) {
        self.connected = false;
        self.core.detach(self.now);
        self.to_client.clear(); // lost with the socket
        self.to_server.clear();
    }

    fn resume(&mut self) {
        let a = self.core.attach(self.last_received).expect("resume");
        self.connected = true;
        // Re-send the frames the gateway never received.
        let lost: Vec<u64> = self
            .unanswered
            .iter()
            .copied()
            .filter(|&s| s > a.received_seq)
            .collect();
        if self.policy == OverloadPolicy::Block {
            // The spec's credit formula agrees with received_seq.
            assert_eq!(
                lost.len() as i64,
                self.unanswered.len() as i64 - (i64::from(self.window) - i64::from(a.credits))
            );
        }
        self.credits = i64::from(a.credits) - lost.len() as i64;
        self.to_server.clear(); // queued while down: among `lost`
        self.to_server.extend(lost);
    }

    fn ack(&mut self) {
        if self.connected {
            self.core.on_ack(self.last_received);
        }
    }
}

fn run_model(policy: OverloadPolicy, seed: u64) {
    let mut rng = Rng(seed);
    let window = 1 + rng.below(6) as u32;
    let mut sim = Sim::new(policy, window, 1024);
    for _ in 0..3000 {
        sim.now += rng.below(3);
        match rng.below(100) {
            0..=29 => sim.client_send(),
            30..=49 => sim.server_read(),
            50..=69 => sim.complete(&mut rng),
            70..=89 if sim.connected => sim.client_recv(),
            90..=94 => sim.ack(),
            95..=96 if sim.connected => sim.break_connection(),
            _ if !sim.connected => sim.resume(),
            _ => {}
        }
        if sim.connected {
            sim.pump();
        } else {
            // While detached nothing goes out, but work goes on.
            while let Some(d) = sim.core.poll_dispatch(sim.now) {
                sim.computing.push(d.seq);
            }
            assert!(sim.core.poll_transmit().is_none());
        }
    }
    // Finish: reconnect, deliver everything.
    if !sim.connected {
        sim.resume();
    }
    for _ in 0..100_000 {
        sim.server_read();
        sim.complete(&mut rng);
        sim.pump();
        sim.client_recv();
        if sim.to_server.is_empty()
            && sim.computing.is_empty()
            && sim.to_client.is_empty()
            && sim.core.is_drained()
        {
            break;
        }
    }
    let answered: Vec<u64> = sim.answers.keys().copied().collect();
    assert_eq!(answered, sim.sent, "every frame has exactly one answer");
    assert_eq!(sim.core.usage().frames, sim.detections_received);
    assert_eq!(
        sim.answers.values().filter(|k| **k == "detections").count() as u64,
        sim.billed,
        "billed == Detections delivered"
    );
}

#[test]
fn model_block() {
    for seed in 1..40 {
        run_model(OverloadPolicy::Block, seed * 7919);
    }
}

#[test]
fn model_drop_oldest() {
    for seed in 1..40 {
        run_model(OverloadPolicy::DropOldest, seed * 104_729);
    }
}

#[test]
fn model_latest_only() {
    for seed in 1..40 {
        run_model(OverloadPolicy::LatestOnly, seed * 1_299_709);
    }
}
