//! The session state machine: credits, sequence numbers, overload policy,
//! deadlines, in-order answers and resume bookkeeping — with no I/O and no
//! clock of its own.
//!
//! A transport-independent runner ([`super::runner`]) feeds events in and
//! acts on what comes out:
//!
//! ```text
//!  on_frame ──► entries (seq order) ──poll_dispatch──► pipeline
//!                 │  Waiting ─► Computing ─on_outcome─► Ready
//!                 │  Waiting ─(policy / deadline)─────► Ready(Dropped)
//!                 ▼
//!  poll_transmit: the Ready prefix, in seq order ──► connection
//!                 │  (Detections are billed here, once)
//!                 ▼
//!  unacked answers (bounded) ──on_ack──► freed; re-sent after attach()
//! ```
//!
//! Rules (docs/protocol.md, "Sessions"):
//!
//! * every frame gets exactly one answer, and answers leave in seq order;
//! * a frame *holds a credit* while it is waiting or being computed; the
//!   credit comes back when its answer is decided. Under `block`, a frame
//!   arriving while `window` frames hold credit is answered
//!   `Error{no-credit}`; under `drop-oldest` it supersedes the oldest waiting
//!   frame, under `latest-only` every waiting frame (latest-only always does,
//!   credit or not); when nothing is waiting it is `Dropped{no-credit}`;
//! * at most `max_in_pipeline` frames of a session are in the shared pipeline
//!   at once; the others wait here, where they can still be dropped;
//! * a frame whose deadline cannot be met (now + the session's recent service
//!   time is past it) is `Dropped{deadline-exceeded}` instead of dispatched;
//! * a Detections answer is billed when it is first transmitted
//!   ([`Transmit::billed`]), never again when re-sent after a resume;
//! * transmitted answers are kept until acknowledged, up to `resume_buffer`
//!   messages; a resume needing an evicted answer is refused.
//!
//! Memory is bounded: entries ≤ [`SessionCore::max_entries`] (the runner
//! stops reading the connection at that point, so the transport's flow
//! control pushes back), frames holding payloads ≤ `window`, unacked answers
//! ≤ `resume_buffer`.

use std::collections::VecDeque;
use std::sync::Arc;

use framegate_protocol::{
    Detections, DropReason, Dropped, ErrorMessage, OverloadPolicy, ServerMessage, Usage,
};

use crate::error::GatewayError;

/// Settings of one session's state machine.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Credits granted in Welcome: frames that may hold a credit at once.
    pub window: u32,
    /// The client's overload policy.
    pub policy: OverloadPolicy,
    /// Frames of this session in the shared pipeline at once.
    pub max_in_pipeline: u32,
    /// Transmitted answers kept for a resume until acknowledged.
    pub resume_buffer: usize,
    /// How long a detached session waits for a resume, in microseconds.
    pub grace_us: u64,
}

/// How a frame's computation ended, as the pipeline reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Computed: the Detections (its `usage` is filled in at transmit time).
    Detections(Detections),
    /// Not computed; answered with Dropped (with a retry hint in ms, if any).
    Dropped(DropReason, String, Option<u32>),
    /// Failed; answered with an Error about the frame.
    Failed(GatewayError),
}

#[derive(Debug)]
enum Slot<F> {
    Waiting { frame: F, deadline_us: u64 },
    Computing { since_us: u64 },
    Ready(Ready),
}

#[derive(Debug)]
enum Ready {
    Detections(Detections, u64),
    Dropped(DropReason, String, Option<u32>),
    Error(ErrorMessage),
}

#[derive(Debug)]
struct Entry<F> {
    seq: u64,
    slot: Slot<F>,
}

#[derive(Debug)]
struct Sent {
    /// Highest seq the message answers.
    max_seq: u64,
    /// Seqs it answers.
    answers: u32,
    /// Shared with the writer: kept for a re-send without a copy.
    message: Arc<ServerMessage>,
}

/// A frame the runner must submit to the pipeline.
#[derive(Debug)]
pub struct Dispatch<F> {
    /// Its seq.
    pub seq: u64,
    /// The frame, as given to [`SessionCore::on_frame`].
    pub frame: F,
    /// Absolute deadline, µs since the Unix epoch; 0 = none.
    pub deadline_us: u64,
}

/// A message to write to the connection.
#[derive(Debug)]
pub struct Transmit {
    /// The message (the resume buffer holds it too).
    pub message: Arc<ServerMessage>,
    /// `Some(pixels)` when this transmission delivers a Detections for the
    /// first time: the one point where a frame becomes billable.
    pub billed: Option<u64>,
}

/// What [`SessionCore::attach`] tells the new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// `Welcome.credits`: the window minus every answer still owed
    /// (including those about to be re-sent).
    pub credits: u32,
    /// `Welcome.received_seq`: highest frame seq received.
    pub received_seq: u64,
    /// Answers re-sent before anything new.
    pub resent: usize,
}

/// Why a resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// Some answer above `last_received_seq` was already evicted from the
    /// resume buffer (the client did not acknowledge in time).
    #[error(
        "answers above seq {last_received} are no longer available (kept from seq {kept_from})"
    )]
    Evicted {
        /// The client's last received seq.
        last_received: u64,
        /// Lowest seq still kept.
        kept_from: u64,
    },
    /// The client claims an answer the gateway never sent.
    #[error("last_received_seq {last_received} is above the last answer sent ({sent})")]
    Ahead {
        /// The client's last received seq.
        last_received: u64,
        /// Highest seq answered so far.
        sent: u64,
    },
}

/// One session's state. `F` is the waiting frame (the runner's probed frame;
/// tests use anything).
#[derive(Debug)]
pub struct SessionCore<F> {
    cfg: CoreConfig,
    entries: VecDeque<Entry<F>>,
    holding_credit: u32,
    in_pipeline: u32,
    last_seq: Option<u64>,
    unacked: VecDeque<Sent>,
    /// Index into `unacked` of the next message to re-send.
    resend: usize,
    /// Highest seq whose answer was evicted from `unacked` unacknowledged.
    evicted_up_to: u64,
    /// Highest seq answered (transmitted) so far.
    sent_up_to: u64,
    acked_up_to: u64,
    usage: Usage,
    attached: bool,
    ever_attached: bool,
    detached_at_us: u64,
    /// Recent submit → outcome time, µs (exponentially weighted).
    service_us: u64,
}

impl<F> SessionCore<F> {
    /// A new session, detached (waiting for its first connection) since
    /// `now_us`.
    pub fn new(cfg: CoreConfig, now_us: u64) -> Self {
        Self {
            cfg,
            entries: VecDeque::new(),
            holding_credit: 0,
            in_pipeline: 0,
            last_seq: None,
            unacked: VecDeque::new(),
            resend: 0,
            evicted_up_to: 0,
            sent_up_to: 0,
            acked_up_to: 0,
            usage: Usage::default(),
            attached: false,
            ever_attached: false,
            detached_at_us: now_us,
            service_us: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Most entries (frames not yet answered on the wire) the session holds;
    /// the runner stops reading frames at this point.
    pub fn max_entries(&self) -> usize {
        self.cfg.window as usize * 4 + 16
    }

    /// Whether one more frame may be read now.
    pub fn can_accept(&self) -> bool {
        self.entries.len() < self.max_entries()
    }

    /// Frames that may be read now before the session is full.
    pub fn room(&self) -> usize {
        self.max_entries().saturating_sub(self.entries.len())
    }

    /// Frames holding a credit (waiting or being computed).
    pub fn holding_credit(&self) -> u32 {
        self.holding_credit
    }

    /// Frames in the shared pipeline.
    pub fn in_pipeline(&self) -> u32 {
        self.in_pipeline
    }

    /// Frames not yet answered on the wire.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Answers transmitted and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Billed usage so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Whether a connection is attached.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Whether every frame received has been answered on the wire.
    pub fn is_drained(&self) -> bool {
        self.entries.is_empty() && self.resend >= self.unacked.len()
    }

    /// A frame arrived. `frame` is `Err` when its header was refused (the
    /// error answers it, in order). `Err` from this call is a protocol
    /// violation that ends the session; `Ok(false)` means the frame was
    /// discarded unanswered (a late datagram, see below).
    ///
    /// `datagram`: the frame came as a QUIC datagram, which may arrive out
    /// of order. One whose seq is not above every earlier seq is discarded
    /// like a lost datagram instead of ending the session.
    pub fn on_frame(
        &mut self,
        now_us: u64,
        seq: u64,
        deadline_us: u64,
        frame: Result<F, GatewayError>,
        datagram: bool,
    ) -> Result<bool, GatewayError> {
        let _ = now_us;
        if !self.take_seq(seq, datagram)? {
            return Ok(false);
        }
        if self.cfg.policy == OverloadPolicy::LatestOnly {
            self.supersede(usize::MAX);
        }
        if self.holding_credit >= self.cfg.window {
            let dropped = match self.cfg.policy {
                OverloadPolicy::Block => {
                    let e = GatewayError::NoCredit {
                        in_flight: self.holding_credit,
                        credits: self.cfg.window,
                    };
                    self.push_ready(seq, Ready::Error(e.to_message(Some(seq))));
                    return Ok(true);
                }
                OverloadPolicy::DropOldest => self.supersede(1),
                OverloadPolicy::LatestOnly => 0,
            };
            if dropped == 0 {
                self.push_ready(
                    seq,
                    Ready::Dropped(
                        DropReason::NoCredit,
                        "no credit and no waiting frame to replace".into(),
                        None,
                    ),
                );
                return Ok(true);
            }
        }
        match frame {
            Err(e) => self.push_ready(seq, Ready::Error(e.to_message(Some(seq)))),
            Ok(frame) => {
                self.holding_credit += 1;
                self.entries.push_back(Entry {
                    seq,
                    slot: Slot::Waiting { frame, deadline_us },
                });
            }
        }
        Ok(true)
    }

    /// Checks that `seq` is above the previous frame's (a stale datagram is
    /// ignored: `Ok(false)`) and records it.
    fn take_seq(&mut self, seq: u64, datagram: bool) -> Result<bool, GatewayError> {
        if let Some(last) = self.last_seq {
            if seq <= last {
                if datagram {
                    return Ok(false);
                }
                return Err(GatewayError::Protocol(format!(
                    "sequence number {seq} is not above the previous {last}"
                )));
            }
        }
        self.last_seq = Some(seq);
        Ok(true)
    }

    /// A frame refused before it could hold a credit (a rate limit): it is
    /// answered `Dropped{reason}` in its turn and touches nothing else — no
    /// credit, no waiting frame superseded. Sequence rules as
    /// [`SessionCore::on_frame`].
    pub fn on_frame_refused(
        &mut self,
        seq: u64,
        datagram: bool,
        reason: DropReason,
        message: String,
        retry_after_ms: Option<u32>,
    ) -> Result<bool, GatewayError> {
        if !self.take_seq(seq, datagram)? {
            return Ok(false);
        }
        self.push_ready(seq, Ready::Dropped(reason, message, retry_after_ms));
        Ok(true)
    }

    /// A frame arrived that the session will not take (the gateway is going
    /// away): it is answered with `error` in its turn, without holding a
    /// credit or displacing any waiting frame. Sequence rules as
    /// [`Self::on_frame`].
    pub fn refuse(
        &mut self,
        now_us: u64,
        seq: u64,
        error: GatewayError,
        datagram: bool,
    ) -> Result<bool, GatewayError> {
        let _ = now_us;
        if !self.take_seq(seq, datagram)? {
            return Ok(false);
        }
        self.push_ready(seq, Ready::Error(error.to_message(Some(seq))));
        Ok(true)
    }

    fn push_ready(&mut self, seq: u64, ready: Ready) {
        self.entries.push_back(Entry {
            seq,
            slot: Slot::Ready(ready),
        });
    }

    /// Drops up to `n` waiting frames, oldest first; returns how many.
    fn supersede(&mut self, n: usize) -> usize {
        let mut dropped = 0;
        for e in self.entries.iter_mut() {
            if dropped == n {
                break;
            }
            if matches!(e.slot, Slot::Waiting { .. }) {
                e.slot = Slot::Ready(Ready::Dropped(
                    DropReason::Superseded,
                    "replaced by a newer frame".into(),
                    None,
                ));
                dropped += 1;
            }
        }
        self.holding_credit -= dropped as u32;
        dropped
    }

    /// The next frame to submit to the pipeline, if the session may have one
    /// more there. Frames whose deadline cannot be met are dropped on the way.
    pub fn poll_dispatch(&mut self, now_us: u64) -> Option<Dispatch<F>> {
        if self.in_pipeline >= self.cfg.max_in_pipeline {
            return None;
        }
        let service = self.service_us;
        for e in self.entries.iter_mut() {
            let Slot::Waiting { deadline_us, .. } = &e.slot else {
                continue;
            };
            let deadline_us = *deadline_us;
            if deadline_us != 0 && now_us.saturating_add(service) > deadline_us {
                e.slot = Slot::Ready(Ready::Dropped(
                    DropReason::DeadlineExceeded,
                    format!(
                        "cannot be answered by its deadline (recent service time {} ms)",
                        service / 1000
                    ),
                    None,
                ));
                self.holding_credit -= 1;
                continue;
            }
            let Slot::Waiting { frame, .. } =
                std::mem::replace(&mut e.slot, Slot::Computing { since_us: now_us })
            else {
                unreachable!("checked above");
            };
            self.in_pipeline += 1;
            return Some(Dispatch {
                seq: e.seq,
                frame,
                deadline_us,
            });
        }
        None
    }

    /// The pipeline answered a dispatched frame. Unknown seqs are ignored.
    pub fn on_outcome(&mut self, now_us: u64, seq: u64, outcome: Outcome) {
        let Some(e) = self.entries.iter_mut().find(|e| e.seq == seq) else {
            return;
        };
        let Slot::Computing { since_us } = e.slot else {
            return;
        };
        let took = now_us.saturating_sub(since_us);
        // Only computed frames say how long service takes: a refusal comes
        // back at once and would drag the estimate towards zero.
        let computed = matches!(outcome, Outcome::Detections(_));
        e.slot = Slot::Ready(match outcome {
            Outcome::Detections(d) => {
                let pixels = u64::from(d.width) * u64::from(d.height);
                Ready::Detections(d, pixels)
            }
            Outcome::Dropped(reason, message, after) => Ready::Dropped(reason, message, after),
            Outcome::Failed(e) => Ready::Error(e.to_message(Some(seq))),
        });
        self.in_pipeline -= 1;
        self.holding_credit -= 1;
        if computed {
            self.service_us = if self.service_us == 0 {
                took
            } else {
                (self.service_us * 3 + took) / 4
            };
        }
    }

    /// The next message to write, when a connection is attached: re-sent
    /// answers first, then the ready answers in seq order (consecutive drops
    /// with the same reason in one Dropped).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.attached {
            return None;
        }
        if self.resend < self.unacked.len() {
            let message = self.unacked[self.resend].message.clone();
            self.resend += 1;
            return Some(Transmit {
                message,
                billed: None,
            });
        }
        if !matches!(self.entries.front()?.slot, Slot::Ready(_)) {
            return None;
        }
        let first = self.entries.pop_front().expect("checked");
        let Slot::Ready(ready) = first.slot else {
            unreachable!("checked");
        };
        let (message, billed, max_seq, answers) = match ready {
            Ready::Detections(mut d, pixels) => {
                self.usage.frames += 1;
                self.usage.pixels += pixels;
                d.seq = first.seq;
                d.usage = self.usage;
                (ServerMessage::Detections(d), Some(pixels), first.seq, 1)
            }
            Ready::Error(e) => (ServerMessage::Error(e), None, first.seq, 1),
            Ready::Dropped(reason, message, mut retry_after_ms) => {
                let mut seqs = vec![first.seq];
                while let Some(Entry {
                    slot: Slot::Ready(Ready::Dropped(r, _, after)),
                    ..
                }) = self.entries.front()
                {
                    if *r != reason {
                        break;
                    }
                    // One answer for all: the longest wait (None < Some).
                    retry_after_ms = retry_after_ms.max(*after);
                    seqs.push(self.entries.pop_front().expect("checked").seq);
                }
                let (max_seq, n) = (*seqs.last().expect("one"), seqs.len() as u32);
                (
                    ServerMessage::Dropped(Dropped {
                        seqs,
                        reason,
                        message,
                        retry_after_ms,
                    }),
                    None,
                    max_seq,
                    n,
                )
            }
        };
        let message = Arc::new(message);
        self.sent_up_to = max_seq;
        self.unacked.push_back(Sent {
            max_seq,
            answers,
            message: message.clone(),
        });
        while self.unacked.len() > self.cfg.resume_buffer {
            let old = self.unacked.pop_front().expect("non-empty");
            self.evicted_up_to = self.evicted_up_to.max(old.max_seq);
        }
        self.resend = self.unacked.len();
        Some(Transmit { message, billed })
    }

    /// The client acknowledged every answer up to `seq`.
    pub fn on_ack(&mut self, seq: u64) {
        self.acked_up_to = self.acked_up_to.max(seq.min(self.sent_up_to));
        while self
            .unacked
            .front()
            .is_some_and(|s| s.max_seq <= self.acked_up_to)
        {
            self.unacked.pop_front();
            self.resend = self.resend.saturating_sub(1);
        }
    }

    /// A connection (the first, or a resuming one) attaches. `last_received`
    /// is `Hello.last_received_seq` (0 for a new session).
    pub fn attach(&mut self, last_received: u64) -> Result<Attached, ResumeRefused> {
        if self.ever_attached {
            if last_received > self.sent_up_to {
                return Err(ResumeRefused::Ahead {
                    last_received,
                    sent: self.sent_up_to,
                });
            }
            if last_received.max(self.acked_up_to) < self.evicted_up_to {
                return Err(ResumeRefused::Evicted {
                    last_received,
                    kept_from: self.evicted_up_to + 1,
                });
            }
            self.on_ack(last_received);
        }
        self.ever_attached = true;
        self.attached = true;
        self.resend = 0;
        let resend_answers: u64 = self.unacked.iter().map(|s| u64::from(s.answers)).sum();
        let owed = self.entries.len() as u64 + resend_answers;
        Ok(Attached {
            credits: u64::from(self.cfg.window).saturating_sub(owed) as u32,
            received_seq: self.last_seq.unwrap_or(0),
            resent: self.unacked.len(),
        })
    }

    /// The connection went away; the session waits `grace_us` for a resume.
    pub fn detach(&mut self, now_us: u64) {
        if self.attached {
            self.attached = false;
            self.detached_at_us = now_us;
        }
    }

    /// When a detached session expires (µs since the epoch), if detached.
    pub fn expires_at(&self) -> Option<u64> {
        (!self.attached).then(|| self.detached_at_us.saturating_add(self.cfg.grace_us))
    }

    /// Drops every frame still waiting (the session is ending), e.g. with
    /// `shutting-down`. Frames being computed are left to finish.
    pub fn drop_waiting(&mut self, reason: DropReason, message: &str) {
        for e in self.entries.iter_mut() {
            if matches!(e.slot, Slot::Waiting { .. }) {
                e.slot = Slot::Ready(Ready::Dropped(reason, message.to_string(), None));
                self.holding_credit -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
