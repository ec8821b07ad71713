//! Session state: credits, sequence numbers and usage, without I/O.
//!
//! A transport feeds events in (`on_frame`, `on_answered`) and acts on what
//! comes back; nothing here touches a socket or a clock, so the rules are
//! tested directly. Rules:
//!
//! * a session holds `credits` credits; each admitted frame takes one, each
//!   answer (Detections, Dropped or Error about that frame) returns it;
//! * a frame beyond the credits is refused (`no-credit`) and not queued;
//! * sequence numbers must increase within a session;
//! * only delivered Detections count as usage.

use framegate_protocol::Usage;

use crate::error::GatewayError;

/// Per-session bookkeeping.
#[derive(Debug, Clone)]
pub struct SessionState {
    credits: u32,
    in_flight: u32,
    last_seq: Option<u64>,
    usage: Usage,
}

impl SessionState {
    /// A new session with `credits` credits.
    pub fn new(credits: u32) -> Self {
        Self {
            credits,
            in_flight: 0,
            last_seq: None,
            usage: Usage::default(),
        }
    }

    /// Credits granted.
    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Frames admitted and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Usage delivered so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// A frame arrived. `Ok` admits it (taking a credit); `Err` refuses it
    /// and no credit is taken.
    pub fn on_frame(&mut self, seq: u64) -> Result<(), GatewayError> {
        if let Some(last) = self.last_seq {
            if seq <= last {
                return Err(GatewayError::BadRequest(format!(
                    "sequence number {seq} is not above the previous {last}"
                )));
            }
        }
        self.last_seq = Some(seq);
        if self.in_flight >= self.credits {
            return Err(GatewayError::NoCredit {
                in_flight: self.in_flight,
                credits: self.credits,
            });
        }
        self.in_flight += 1;
        Ok(())
    }

    /// An admitted frame was answered; `delivered_pixels` is `Some` when the
    /// answer was Detections (billable). Returns the usage including it.
    pub fn on_answered(&mut self, delivered_pixels: Option<u64>) -> Usage {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(p) = delivered_pixels {
            self.usage.frames += 1;
            self.usage.pixels += p;
        }
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_bound_frames_in_flight() {
        let mut s = SessionState::new(2);
        s.on_frame(1).unwrap();
        s.on_frame(2).unwrap();
        assert!(matches!(s.on_frame(3), Err(GatewayError::NoCredit { .. })));
        s.on_answered(Some(10));
        s.on_frame(4).unwrap();
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let mut s = SessionState::new(8);
        s.on_frame(5).unwrap();
        assert!(s.on_frame(5).is_err());
        assert!(s.on_frame(4).is_err());
        s.on_frame(6).unwrap();
    }

    #[test]
    fn only_detections_count_as_usage() {
        let mut s = SessionState::new(8);
        s.on_frame(1).unwrap();
        s.on_frame(2).unwrap();
        s.on_answered(None);
        let u = s.on_answered(Some(100));
        assert_eq!((u.frames, u.pixels), (1, 100));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn model_check_in_flight_never_exceeds_credits() {
        // Random interleavings of frames and answers against a simple model.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for credits in 1..6 {
            let mut s = SessionState::new(credits);
            let (mut model_in_flight, mut model_frames, mut seq) = (0u32, 0u64, 0u64);
            for _ in 0..2000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng % 3 != 0 {
                    seq += 1;
                    let admitted = s.on_frame(seq).is_ok();
                    assert_eq!(admitted, model_in_flight < credits);
                    if admitted {
                        model_in_flight += 1;
                    }
                } else if model_in_flight > 0 {
                    let delivered = rng % 2 == 0;
                    s.on_answered(delivered.then_some(1));
                    model_in_flight -= 1;
                    model_frames += u64::from(delivered);
                }
                assert_eq!(s.in_flight(), model_in_flight);
                assert!(s.in_flight() <= credits);
                assert_eq!(s.usage().frames, model_frames);
            }
        }
    }
}
