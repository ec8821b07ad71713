//! Which endpoint gets the next call: the health-based selection, as a plain
//! struct driven by reports (no sockets, no clock), so it is tested alone.
//!
//! Each endpoint is `Ready` or `Down`. Health checks and failed calls report
//! into it; a call picks a ready endpoint it has not tried yet, in turn
//! (round robin over the ready ones, so calls spread evenly over the fleet). When no
//! ready endpoint is left, a `Down` one is tried rather than failing at
//! once: its state may be older than its recovery. A `Misfit` endpoint
//! (serving another model under the name) is never tried.

/// The state of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointState {
    /// Passed its last readiness check and has not failed a call since.
    Ready,
    /// Failed its last readiness check or a call with `UNAVAILABLE`.
    Down {
        /// Why, for logs and start-up errors.
        reason: String,
    },
    /// Ready, but its model's metadata does not fit `model.toml`: calls to
    /// it would fail or be misread, so none goes there until a check finds
    /// the right model.
    Misfit {
        /// The differences.
        reason: String,
    },
}

/// Health of every configured endpoint.
#[derive(Debug, Clone)]
pub struct EndpointHealth {
    states: Vec<EndpointState>,
    /// Per endpoint: failures reported so far (checks and calls), so that
    /// a check's pass can tell whether a failure came in while it ran.
    failures: Vec<u64>,
}

impl EndpointHealth {
    /// `n` endpoints, all down until a check says otherwise.
    pub fn new(n: usize) -> Self {
        Self {
            states: vec![
                EndpointState::Down {
                    reason: "not checked yet".into(),
                };
                n
            ],
            failures: vec![0; n],
        }
    }

    /// Failures reported for `endpoint` so far.
    pub fn failures(&self, endpoint: usize) -> u64 {
        self.failures[endpoint]
    }

    /// Records a readiness check or call result. Returns true when the
    /// state changed (worth a log line).
    pub fn report(&mut self, endpoint: usize, outcome: Result<(), String>) -> bool {
        self.set(
            endpoint,
            match outcome {
                Ok(()) => EndpointState::Ready,
                Err(reason) => EndpointState::Down { reason },
            },
        )
    }

    /// Records that `endpoint` serves a model that does not fit. Returns
    /// true when the state changed.
    pub fn report_misfit(&mut self, endpoint: usize, reason: String) -> bool {
        self.set(endpoint, EndpointState::Misfit { reason })
    }

    fn set(&mut self, endpoint: usize, new: EndpointState) -> bool {
        if new != EndpointState::Ready {
            self.failures[endpoint] += 1;
        }
        let slot = &mut self.states[endpoint];
        let changed = std::mem::discriminant(&*slot) != std::mem::discriminant(&new);
        *slot = new;
        changed
    }

    /// The state of `endpoint`.
    pub fn state(&self, endpoint: usize) -> &EndpointState {
        &self.states[endpoint]
    }

    /// Whether any endpoint is ready.
    pub fn any_ready(&self) -> bool {
        self.states.contains(&EndpointState::Ready)
    }

    /// The endpoint for the next attempt of a call: among the ready
    /// endpoints not in `tried`, the one whose turn it is (`turn` modulo
    /// their count); when none is left, likewise among the others; `None`
    /// once every endpoint was tried.
    pub fn pick(&self, turn: usize, tried: &[usize]) -> Option<usize> {
        let untried = |ready: bool| -> Vec<usize> {
            (0..self.states.len())
                .filter(|i| !tried.contains(i))
                .filter(|i| !matches!(self.states[*i], EndpointState::Misfit { .. }))
                .filter(|i| (self.states[*i] == EndpointState::Ready) == ready)
                .collect()
        };
        [untried(true), untried(false)]
            .into_iter()
            .find(|c| !c.is_empty())
            .map(|c| c[turn % c.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), String> {
        Err("connection refused".into())
    }

    #[test]
    fn ready_endpoints_take_turns_and_down_ones_are_skipped() {
        let mut h = EndpointHealth::new(3);
        h.report(0, Ok(()));
        h.report(1, down());
        h.report(2, Ok(()));
        let picks: Vec<_> = (0..6).map(|t| h.pick(t, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn a_down_endpoint_is_used_again_once_it_recovers() {
        let mut h = EndpointHealth::new(2);
        h.report(0, down());
        h.report(1, Ok(()));
        assert_eq!(h.pick(0, &[]), Some(1));
        assert!(h.report(0, Ok(())), "recovery is a change");
        assert!(!h.report(0, Ok(())), "staying ready is not");
        assert_eq!(h.pick(0, &[]), Some(0));
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_tried_yet_then_gives_up() {
        let mut h = EndpointHealth::new(3);
        for i in 0..3 {
            h.report(i, Ok(()));
        }
        assert_eq!(h.pick(1, &[1]), Some(2));
        assert_eq!(h.pick(1, &[1, 2]), Some(0));
        assert_eq!(h.pick(1, &[0, 1, 2]), None);
    }

    #[test]
    fn failures_are_counted_so_a_check_can_tell_it_was_overtaken() {
        let mut h = EndpointHealth::new(2);
        assert_eq!((h.failures(0), h.failures(1)), (0, 0));
        h.report(0, Ok(()));
        h.report(0, down());
        h.report_misfit(0, "another model".into());
        h.report(0, Ok(()));
        assert_eq!((h.failures(0), h.failures(1)), (2, 0));
    }

    #[test]
    fn a_misfit_endpoint_is_never_tried() {
        let mut h = EndpointHealth::new(3);
        h.report(0, down());
        assert!(h.report_misfit(1, "another model".into()));
        assert!(!h.report_misfit(1, "still another model".into()));
        h.report(2, Ok(()));
        assert_eq!(h.pick(0, &[]), Some(2));
        // Nothing ready: the down one, never the misfit.
        assert_eq!(h.pick(0, &[2]), Some(0));
        assert_eq!(h.pick(1, &[0, 2]), None);
        // The right model is back: a change, and it takes turns again.
        assert!(h.report(1, Ok(())));
        assert_eq!(h.pick(1, &[2]), Some(1));
    }

    #[test]
    fn with_nothing_ready_a_down_endpoint_is_still_tried() {
        let mut h = EndpointHealth::new(2);
        h.report(0, down());
        h.report(1, down());
        assert!(!h.any_ready());
        assert_eq!(h.pick(1, &[]), Some(1));
        assert_eq!(h.pick(1, &[1]), Some(0));
        // A ready endpoint always wins over an untried down one.
        h.report(0, Ok(()));
        assert_eq!(h.pick(1, &[]), Some(0));
    }
}
