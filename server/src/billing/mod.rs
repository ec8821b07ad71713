//! Billing: closed usage windows become Stripe Billing meter events.
//!
//! One [`MeterReporter`] per cluster holds a lease in the store (Redis; the
//! embedded store has one node, which always reports). Each pass, for every
//! configured tenant and each closed window with usage not yet reported:
//!
//! 1. read the window's progress `reported` / `pending_to`;
//! 2. if nothing is pending and the store holds more than `reported`, record
//!    `pending_to = total` (compare-and-set) **before** sending;
//! 3. send one event for `pending_to − reported` frames with the identifier
//!    `fg-<hash(tenant, meter, window, reported)>`; a duplicate-identifier
//!    answer means an earlier attempt got through and counts as delivered;
//! 4. set `reported = pending_to` (compare-and-set); the window leaves the
//!    unbilled set once `reported` equals its total.
//!
//! A reporter killed anywhere resumes at step 3 with the same identifier and
//! value, so Stripe sees each frame once. Usage that arrives for a window
//! after it was reported (a gateway replaying after an outage) becomes a
//! further event with its own identifier. Events too old for Stripe are
//! logged at error level, counted, and left pending (visible in `preview`).

pub mod stripe;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use self::stripe::{Delivery, MeterEvent, SendError, StripeSender, MAX_EVENT_AGE_SECS};
use crate::config::{BillingConfig, BillingCustomer};
use crate::usage::{BillingState, StoreError, UsageStore};

/// Counters for the metrics issue.
#[derive(Debug, Default)]
pub struct ReportStats {
    /// Passes run while holding the lease.
    pub passes: AtomicU64,
    /// Events Stripe accepted.
    pub events_accepted: AtomicU64,
    /// Events Stripe already had (counted as delivered).
    pub events_duplicate: AtomicU64,
    /// Frames delivered to Stripe.
    pub frames_reported: AtomicU64,
    /// Send attempts beyond the first.
    pub retries: AtomicU64,
    /// Sends that failed (will be retried next pass).
    pub failures: AtomicU64,
    /// Windows too old for Stripe (reported loudly, not sent).
    pub too_old: AtomicU64,
    /// Unix seconds of the oldest closed window still unreported (0: none).
    pub oldest_unreported_window: AtomicU64,
}

/// A reporting failure.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stripe could not be reached or refused.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No Stripe key was found.
    #[error("no Stripe API key: set {0} or billing.api_key_file")]
    NoKey(String),
    /// The window is older than Stripe accepts; it stays pending, to be
    /// billed by hand.
    #[error("window {0} is older than Stripe accepts")]
    TooOld(u64),
}

impl ReportError {
    /// Whether the customer's next windows would fail the same way, so its
    /// pass ends here: the store or Stripe is unavailable, or Stripe refuses
    /// the event (a wrong key, an unknown customer or meter: the same for
    /// every window, so one request per pass, not one per window). Only a
    /// window too old for Stripe leaves the newer ones to go on.
    fn stops_the_pass(&self) -> bool {
        !matches!(self, ReportError::TooOld(_))
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    /// Whether this reporter held the lease (false: another one reports).
    pub leader: bool,
    /// Events delivered (accepted or duplicate).
    pub events: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Windows left for a later pass (failures, too old).
    pub deferred: u64,
}

/// One line of `framegate billing preview`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreviewLine {
    /// Tenant.
    pub tenant: String,
    /// Stripe customer.
    pub customer: String,
    /// Meter event name.
    pub meter: String,
    /// Window start, unix seconds.
    pub window_start: u64,
    /// Frames stored for the window.
    pub stored: u64,
    /// Frames already delivered to Stripe.
    pub reported: u64,
    /// Frames the next pass would send.
    pub to_send: u64,
    /// Whether the window is closed (past its grace period).
    pub closed: bool,
    /// Whether it is too old for Stripe.
    pub too_old: bool,
}

/// Reads the Stripe key: the file if configured, else the environment
/// variable. The key is returned, never logged.
pub fn api_key(config: &BillingConfig) -> Result<String, ReportError> {
    if let Some(f) = &config.api_key_file {
        return std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|_| ReportError::NoKey(format!("a readable {}", f.display())));
    }
    std::env::var(&config.api_key_env)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ReportError::NoKey(config.api_key_env.clone()))
}

/// The meter event identifier for (tenant, meter, window, first frame).
pub fn identifier(tenant: &str, meter: &str, window: u64, from: u64) -> String {
    let mut h = Sha256::new();
    for part in [tenant, meter] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(window.to_le_bytes());
    h.update(from.to_le_bytes());
    format!("fg-{window}-{from}-{}", &hex::encode(h.finalize())[..24])
}

/// The reporter.
#[derive(Debug)]
pub struct MeterReporter {
    store: UsageStore,
    sender: StripeSender,
    customers: Vec<BillingCustomer>,
    window_secs: u64,
    grace_secs: u64,
    holder: String,
    lease_ttl_ms: u64,
    /// Counters.
    pub stats: Arc<ReportStats>,
}

impl MeterReporter {
    /// A reporter over `store`, sending with `sender`; `holder` names it in the lease.
    pub fn new(
        store: UsageStore,
        sender: StripeSender,
        config: &BillingConfig,
        window_secs: u64,
        holder: String,
    ) -> Self {
        Self {
            store,
            sender,
            customers: config.customers.clone(),
            window_secs,
            grace_secs: config.grace_secs,
            holder,
            lease_ttl_ms: config.lease_ttl_ms,
            stats: Arc::new(ReportStats::default()),
        }
    }

    fn closed_before(&self, now: u64) -> u64 {
        // Windows starting before this have ended at least `grace` ago.
        (now + 1).saturating_sub(self.window_secs + self.grace_secs)
    }

    /// One reporting pass at unix time `now`.
    pub async fn run_once(&self, now: u64) -> Result<PassSummary, ReportError> {
        let mut summary = PassSummary::default();
        if !self.store.lease(&self.holder, self.lease_ttl_ms).await? {
            return Ok(summary);
        }
        summary.leader = true;
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        let before = self.closed_before(now);
        let mut oldest = 0u64;
        let mut first_error = None;
        for c in &self.customers {
            let windows = self.store.unbilled(&c.tenant, before).await?;
            for w in windows {
                // Keep the lease while working; stop if another reporter took it.
                if !self.store.lease(&self.holder, self.lease_ttl_ms).await? {
                    summary.leader = false;
                    return Ok(summary);
                }
                match self.report_window(c, w, now).await {
                    Ok(Some(frames)) => {
                        summary.events += 1;
                        summary.frames += frames;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        summary.deferred += 1;
                        if oldest == 0 || w < oldest {
                            oldest = w;
                        }
                        let stop = e.stops_the_pass();
                        if first_error.is_none() {
                            first_error = Some(e);
                        }
                        if stop {
                            // Stripe is down or refuses this customer's
                            // events: the next windows would fail too.
                            break;
                        }
                        // This window alone (too old) stays pending; the
                        // newer ones go on.
                    }
                }
            }
        }
        self.stats
            .oldest_unreported_window
            .store(oldest, Ordering::Relaxed);
        match first_error {
            Some(e) if summary.events == 0 => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "billing pass incomplete; the rest is retried next pass");
                Ok(summary)
            }
            None => Ok(summary),
        }
    }

    /// Reports one window; the frames delivered, if any.
    async fn report_window(
        &self,
        c: &BillingCustomer,
        window: u64,
        now: u64,
    ) -> Result<Option<u64>, ReportError> {
        let meter = &c.meter_event_name;
        let mut state = self.store.billing_state(&c.tenant, meter, window).await?;
        let to = match state.pending_to {
            Some(to) => to,
            None => {
                let total = self.store.window_frames(&c.tenant, window).await?;
                if total <= state.reported {
                    // Nothing new: let the window leave the unbilled set.
                    self.store
                        .swap_billing_state(&c.tenant, meter, window, state, state)
                        .await?;
                    return Ok(None);
                }
                let next = BillingState {
                    reported: state.reported,
                    pending_to: Some(total),
                };
                if !self
                    .store
                    .swap_billing_state(&c.tenant, meter, window, state, next)
                    .await?
                {
                    return Ok(None); // changed under us; next pass
                }
                state = next;
                total
            }
        };
        let from = state.reported;
        let window_end = window + self.window_secs;
        if now.saturating_sub(window) > MAX_EVENT_AGE_SECS {
            self.stats.too_old.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                tenant = %c.tenant,
                customer = %c.customer,
                window,
                frames = to - from,
                "usage window is older than Stripe accepts (35 days); NOT billed — bill it by hand (see `framegate billing preview`)"
            );
            return Err(ReportError::TooOld(window));
        }
        let event = MeterEvent {
            event_name: meter.clone(),
            customer: c.customer.clone(),
            value: to - from,
            timestamp: (window_end - 1).min(now),
            identifier: identifier(&c.tenant, meter, window, from),
        };
        let result = self.sender.send(&event).await;
        let (delivery, attempts) = match result {
            Ok(r) => r,
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if let SendError::Refused { .. } = e {
                    tracing::error!(tenant = %c.tenant, error = %e, "Stripe refused a meter event; it stays pending");
                }
                return Err(e.into());
            }
        };
        self.stats
            .retries
            .fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
        match delivery {
            Delivery::Accepted => self.stats.events_accepted.fetch_add(1, Ordering::Relaxed),
            Delivery::Duplicate => self.stats.events_duplicate.fetch_add(1, Ordering::Relaxed),
        };
        self.stats
            .frames_reported
            .fetch_add(to - from, Ordering::Relaxed);
        let done = BillingState {
            reported: to,
            pending_to: None,
        };
        self.store
            .swap_billing_state(&c.tenant, meter, window, state, done)
            .await?;
        Ok(Some(to - from))
    }

    /// Gives the lease up (at shutdown), so another gateway takes over at once.
    pub async fn release(&self) {
        let _ = self.store.release_lease(&self.holder).await;
    }

    /// Runs passes every `interval` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = self.run_once(crate::metering::unix_now()).await {
                tracing::warn!(error = %e, "billing pass failed; retrying next pass");
            }
        }
        self.release().await;
    }
}

/// What would be billed for `tenant` (every window with unreported usage).
pub async fn preview(
    store: &UsageStore,
    config: &BillingConfig,
    window_secs: u64,
    tenant: &str,
    now: u64,
) -> Result<Vec<PreviewLine>, StoreError> {
    let closed_before = (now + 1).saturating_sub(window_secs + config.grace_secs);
    let mut out = Vec::new();
    for c in config.customers.iter().filter(|c| c.tenant == tenant) {
        for w in store.unbilled(tenant, u64::MAX).await? {
            let stored = store.window_frames(tenant, w).await?;
            let s = store.billing_state(tenant, &c.meter_event_name, w).await?;
            let to = s.pending_to.unwrap_or(stored);
            out.push(PreviewLine {
                tenant: tenant.to_string(),
                customer: c.customer.clone(),
                meter: c.meter_event_name.clone(),
                window_start: w,
                stored,
                reported: s.reported,
                to_send: to.saturating_sub(s.reported),
                closed: w < closed_before,
                too_old: now.saturating_sub(w) > MAX_EVENT_AGE_SECS,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_distinct_and_short() {
        let a = identifier("acme", "frames", 60, 0);
        assert_eq!(a, identifier("acme", "frames", 60, 0));
        assert_ne!(a, identifier("acme", "frames", 60, 5));
        assert_ne!(a, identifier("acme", "frames", 120, 0));
        assert_ne!(identifier("ab", "c", 1, 0), identifier("a", "bc", 1, 0));
        assert!(
            a.len() <= 100,
            "Stripe limits identifiers to 100 characters"
        );
    }
}
