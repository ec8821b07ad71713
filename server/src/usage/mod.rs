//! The usage store: where flushed usage lives, and the billing reporter's
//! progress next to it.
//!
//! Two implementations with one contract:
//!
//! * [`embedded::EmbeddedStore`] — the default, a single `redb` file in the
//!   data folder; one gateway.
//! * [`redis::RedisStore`] — Redis, for several gateways sharing usage. Keys
//!   carry the tenant as a hash tag (`fg:{tenant}:…`), so everything one
//!   tenant's script touches sits in one cluster slot.
//!
//! The contract:
//!
//! * [`UsageStore::apply`] is idempotent per flush id and tenant: a batch
//!   applied twice (a retry after a timeout that hid a success) counts once.
//!   Applied ids are remembered for [`APPLIED_ID_TTL_SECS`].
//! * Billing progress per (tenant, meter, window) is a pair `reported` /
//!   `pending_to`, changed only by compare-and-set, so a reporter killed
//!   mid-run resumes exactly where it stopped (see `billing`).

pub mod embedded;
pub mod http;
pub mod redis;

use serde::Serialize;

use crate::metering::UsageDelta;

/// How long a store remembers an applied flush id (7 days). A write-ahead
/// file replayed later than that could count twice; the flusher replays at
/// start-up, so this only matters for a gateway left down for a week.
pub const APPLIED_ID_TTL_SECS: u64 = 7 * 86_400;

/// A flush: deltas with an id that makes applying it idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushBatch {
    /// Unique per flush (gateway id and sequence number).
    pub id: String,
    /// The deltas, at most one per (series, window).
    pub deltas: Vec<UsageDelta>,
}

/// One bucket of a usage report: a model's usage over `bucket_secs`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Bucket start, unix seconds.
    pub start: u64,
    /// Model.
    pub model: String,
    /// Frames delivered.
    pub frames: u64,
    /// Pixels of those frames.
    pub pixels: u64,
}

/// Rows folded into buckets of `secs` per model, one row at a time.
#[derive(Debug)]
pub struct Buckets {
    secs: u64,
    sums: std::collections::BTreeMap<(u64, String), (u64, u64)>,
}

impl Buckets {
    /// No rows yet; buckets of `secs` seconds (0 is taken as 1).
    pub fn new(secs: u64) -> Self {
        Self {
            secs: secs.max(1),
            sums: Default::default(),
        }
    }

    /// Adds one row.
    pub fn add(&mut self, r: UsageRow) {
        let start = r.window_start - r.window_start % self.secs;
        let e = self.sums.entry((start, r.model)).or_default();
        e.0 += r.frames;
        e.1 += r.pixels;
    }

    /// The buckets with usage, by start then model.
    pub fn finish(self) -> Vec<Bucket> {
        self.sums
            .into_iter()
            .map(|((start, model), (frames, pixels))| Bucket {
                start,
                model,
                frames,
                pixels,
            })
            .collect()
    }
}

/// One stored (window, model, key) row of a tenant's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// Window start, unix seconds.
    pub window_start: u64,
    /// Model.
    pub model: String,
    /// API key id.
    pub key_id: String,
    /// Frames.
    pub frames: u64,
    /// Pixels.
    pub pixels: u64,
}

/// Billing progress of one (tenant, meter, window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BillingState {
    /// Frames already delivered to the billing provider.
    pub reported: u64,
    /// A send in progress: the window's total it reports up to. The event
    /// covers `reported..pending_to`; it is sent again, unchanged, until
    /// delivered.
    pub pending_to: Option<u64>,
}

impl BillingState {
    fn encode(&self) -> String {
        format!("{}:{}", self.reported, self.pending_to.unwrap_or(0))
    }

    fn decode(s: &str) -> Self {
        let mut it = s.split(':').map(|p| p.parse::<u64>().unwrap_or(0));
        let reported = it.next().unwrap_or(0);
        let to = it.next().unwrap_or(0);
        Self {
            reported,
            pending_to: (to > reported).then_some(to),
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying later can help.
    #[error("usage store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something unexpected.
    #[error("usage store error: {0}")]
    Failed(String),
    /// The store refused some tenants' parts of a flush (each with its
    /// error: a key of the wrong type, say) and applied every other part.
    #[error("usage store refused the usage of {}", describe_refusals(.0))]
    Refused(Vec<(String, String)>),
}

fn describe_refusals(refused: &[(String, String)]) -> String {
    const SHOWN: usize = 3;
    let mut s = refused
        .iter()
        .take(SHOWN)
        .map(|(tenant, e)| format!("tenant {tenant:?} ({e})"))
        .collect::<Vec<_>>()
        .join(", ");
    if refused.len() > SHOWN {
        s.push_str(&format!(" and {} more tenants", refused.len() - SHOWN));
    }
    s
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The configured store.
#[derive(Debug, Clone)]
pub enum UsageStore {
    /// A redb file.
    Embedded(embedded::EmbeddedStore),
    /// A Redis server or cluster.
    Redis(redis::RedisStore),
}

macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            UsageStore::Embedded(s) => s.$m($($a),*).await,
            UsageStore::Redis(s) => s.$m($($a),*).await,
        }
    };
}

impl UsageStore {
    /// Applies a flush once; a batch whose id was already applied changes
    /// nothing. [`StoreError::Refused`]: every part but the tenants named
    /// was applied (a retry of the whole batch applies only theirs).
    pub async fn apply(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        dispatch!(self.apply(batch))
    }

    /// Frames stored for `tenant` in billing period `period` (`YYYYMM`).
    pub async fn period_total(&self, tenant: &str, period: u32) -> Result<u64, StoreError> {
        dispatch!(self.period_total(tenant, period))
    }

    /// [`UsageStore::period_total`] of each of `tenants`, in order, in one
    /// store call.
    pub async fn period_totals(
        &self,
        tenants: &[String],
        period: u32,
    ) -> Result<Vec<u64>, StoreError> {
        dispatch!(self.period_totals(tenants, period))
    }

    /// The usage of `tenant` with `from <= window_start < to` in buckets of
    /// `bucket_secs` per model, folded as the rows are read: a query over a
    /// year of one-minute windows holds the buckets (at most a bucket per
    /// hour and model), not every row at once.
    pub async fn buckets(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        bucket_secs: u64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let fold = Buckets::new(bucket_secs);
        let fold = dispatch!(self.fold_rows(tenant, from, to, fold, Buckets::add))?;
        Ok(fold.finish())
    }

    /// Rows of `tenant` with `from <= window_start < to`.
    pub async fn rows(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        dispatch!(self.fold_rows(tenant, from, to, Vec::new(), Vec::push))
    }

    /// Windows of `tenant` with usage not yet fully reported, starting before `before`.
    pub async fn unbilled(&self, tenant: &str, before: u64) -> Result<Vec<u64>, StoreError> {
        dispatch!(self.unbilled(tenant, before))
    }

    /// Frames of `tenant` in the window starting at `window`, over every model and key.
    pub async fn window_frames(&self, tenant: &str, window: u64) -> Result<u64, StoreError> {
        Ok(self
            .rows(tenant, window, window + 1)
            .await?
            .iter()
            .map(|r| r.frames)
            .sum())
    }

    /// Billing progress of (tenant, meter, window).
    pub async fn billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
    ) -> Result<BillingState, StoreError> {
        dispatch!(self.billing_state(tenant, meter, window))
    }

    /// Sets the state to `next` if it is still `expected`; false otherwise.
    /// When `next` has no pending send and covers the whole window, the
    /// window leaves the unbilled set.
    pub async fn swap_billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
        expected: BillingState,
        next: BillingState,
    ) -> Result<bool, StoreError> {
        dispatch!(self.swap_billing_state(tenant, meter, window, expected, next))
    }

    /// Takes or renews the reporter lease for `holder`; true while held.
    pub async fn lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        match self {
            // One process owns the embedded file: it is always the reporter.
            UsageStore::Embedded(_) => Ok(true),
            UsageStore::Redis(s) => s.lease(holder, ttl_ms).await,
        }
    }

    /// Gives the lease up if `holder` has it.
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        match self {
            UsageStore::Embedded(_) => Ok(()),
            UsageStore::Redis(s) => s.release_lease(holder).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_state_round_trips() {
        for s in [
            BillingState::default(),
            BillingState {
                reported: 5,
                pending_to: Some(9),
            },
            BillingState {
                reported: 7,
                pending_to: None,
            },
        ] {
            assert_eq!(BillingState::decode(&s.encode()), s);
        }
    }
}
