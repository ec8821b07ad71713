//! Tenant budget caps: frames per billing period (a calendar month, UTC).
//!
//! The choice is **reserve at admission**: a frame of a capped tenant takes a
//! reservation before it is queued; delivery turns the reservation into
//! usage, a drop or failure gives it back. A frame (or a new session) is
//! refused with `BudgetExhausted` when
//!
//! ```text
//! store total for the period + delivered here and not yet in the store + reserved ≥ cap
//! ```
//!
//! so frames in flight can never push usage past the cap on one gateway,
//! however many arrive at once. The store total is refreshed after every
//! flush, which is how gateways sharing a Redis see each other's usage; what
//! another gateway delivered since its last flush is not seen, so across N
//! gateways the overshoot is bounded by what the others deliver in one
//! `flush_interval` plus their in-flight frames (documented in
//! `docs/billing.md`). Sans-IO: plain state behind one small mutex per
//! capped tenant; uncapped tenants never touch it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::GatewayError;

/// The billing period of a unix time: `YYYYMM` of its UTC calendar month.
pub fn period_of(unix_secs: u64) -> u32 {
    // Civil-from-days (Howard Hinnant's algorithm), no time zone database needed.
    let days = (unix_secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as u32) * 100 + m as u32
}

#[derive(Debug, Default)]
struct TenantState {
    period: u32,
    store_total: u64,
    unflushed: u64,
    reserved: u64,
}

/// One capped tenant's budget.
#[derive(Debug)]
pub struct TenantBudget {
    tenant: String,
    cap: AtomicU64,
    state: Mutex<TenantState>,
}

/// A reservation for one frame; give it back with [`Reservation::release`]
/// or turn it into usage with [`Reservation::deliver`]. Dropping it releases.
#[derive(Debug)]
pub struct Reservation {
    budget: Option<Arc<TenantBudget>>,
}

impl Reservation {
    /// A reservation for an uncapped tenant: nothing to account.
    pub fn unlimited() -> Self {
        Self { budget: None }
    }

    /// The frame was delivered: it now counts as usage.
    pub fn deliver(mut self) {
        if let Some(b) = self.budget.take() {
            let mut s = b.lock();
            s.reserved = s.reserved.saturating_sub(1);
            s.unflushed += 1;
        }
    }

    /// The frame was dropped or failed: the reservation goes back.
    pub fn release(mut self) {
        self.give_back();
    }

    fn give_back(&mut self) {
        if let Some(b) = self.budget.take() {
            let mut s = b.lock();
            s.reserved = s.reserved.saturating_sub(1);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl TenantBudget {
    fn lock(&self) -> std::sync::MutexGuard<'_, TenantState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cap(&self) -> u64 {
        self.cap.load(Ordering::Relaxed)
    }

    fn exhausted(&self, s: &TenantState) -> GatewayError {
        GatewayError::BudgetExhausted {
            tenant: self.tenant.clone(),
            cap: self.cap(),
            used: s.store_total + s.unflushed,
        }
    }
}

/// The budgets of every capped tenant: those of `[metering].budgets`, fixed,
/// and those whose plan sets `budget_frames`, added (or changed) when one of
/// their credentials is authenticated ([`Budgets::ensure`]).
#[derive(Debug, Default)]
pub struct Budgets {
    tenants: RwLock<HashMap<String, Arc<TenantBudget>>>,
    configured: HashSet<String>,
}

fn new_budget(tenant: &str, cap: u64) -> Arc<TenantBudget> {
    Arc::new(TenantBudget {
        tenant: tenant.to_string(),
        cap: AtomicU64::new(cap),
        state: Mutex::new(TenantState::default()),
    })
}

impl Budgets {
    /// Budgets from `tenant → cap` (frames per calendar month).
    pub fn new(caps: &std::collections::BTreeMap<String, u64>) -> Self {
        Self {
            tenants: RwLock::new(
                caps.iter()
                    .map(|(t, &cap)| (t.clone(), new_budget(t, cap)))
                    .collect(),
            ),
            configured: caps.keys().cloned().collect(),
        }
    }

    fn get(&self, tenant: &str) -> Option<Arc<TenantBudget>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Makes `tenant`'s cap `plan_cap` (its plan's `budget_frames`) unless
    /// `[metering].budgets` names the tenant (that entry wins). True when the
    /// tenant's budget is new here and its store total must be loaded.
    pub fn ensure(&self, tenant: &str, plan_cap: Option<u64>) -> bool {
        if self.configured.contains(tenant) {
            return false;
        }
        match (self.get(tenant), plan_cap) {
            (Some(b), Some(cap)) => {
                b.cap.store(cap, Ordering::Relaxed);
                false
            }
            (None, None) => false,
            (Some(_), None) => {
                self.tenants
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(tenant);
                false
            }
            (None, Some(cap)) => {
                let mut map = self.tenants.write().unwrap_or_else(|e| e.into_inner());
                if map.contains_key(tenant) {
                    return false;
                }
                map.insert(tenant.to_string(), new_budget(tenant, cap));
                true
            }
        }
    }

    /// Whether `tenant` has a cap here.
    pub fn is_capped(&self, tenant: &str) -> bool {
        self.get(tenant).is_some()
    }

    /// The capped tenants.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether a new session of `tenant` may start.
    pub fn check(&self, tenant: &str) -> Result<(), GatewayError> {
        let Some(b) = self.get(tenant) else {
            return Ok(());
        };
        let s = b.lock();
        if s.store_total + s.unflushed + s.reserved >= b.cap() {
            return Err(b.exhausted(&s));
        }
        Ok(())
    }

    /// Reserves one frame for `tenant`, or refuses it.
    pub fn reserve(&self, tenant: &str) -> Result<Reservation, GatewayError> {
        let Some(b) = self.get(tenant) else {
            return Ok(Reservation::unlimited());
        };
        {
            let mut s = b.lock();
            if s.store_total + s.unflushed + s.reserved >= b.cap() {
                return Err(b.exhausted(&s));
            }
            s.reserved += 1;
        }
        Ok(Reservation { budget: Some(b) })
    }

    /// After a flush: the store now holds `store_total` frames for `tenant`
    /// in `period`, including `applied_frames` that this gateway had counted
    /// as unflushed.
    pub fn on_store_total(&self, tenant: &str, period: u32, store_total: u64, applied_frames: u64) {
        if let Some(b) = self.get(tenant) {
            let mut s = b.lock();
            if s.period != period {
                // A new month starts from the store's figure.
                s.period = period;
            }
            s.store_total = store_total;
            s.unflushed = s.unflushed.saturating_sub(applied_frames);
        }
    }

    /// Frames counted against `tenant`'s cap now (store + unflushed + reserved).
    pub fn used(&self, tenant: &str) -> Option<(u64, u64)> {
        self.get(tenant).map(|b| {
            let s = b.lock();
            (s.store_total + s.unflushed + s.reserved, b.cap())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn periods_are_utc_calendar_months() {
        assert_eq!(period_of(0), 197001);
        assert_eq!(period_of(1_709_251_199), 202402); // 2024-02-29T23:59:59Z
        assert_eq!(period_of(1_709_251_200), 202403);
        assert_eq!(period_of(1_798_761_599), 202612); // 2026-12-31T23:59:59Z
        assert_eq!(period_of(1_798_761_600), 202701);
    }

    #[test]
    fn reservations_never_exceed_the_cap() {
        let b = Budgets::new(&BTreeMap::from([("t".to_string(), 3)]));
        let r1 = b.reserve("t").unwrap();
        let r2 = b.reserve("t").unwrap();
        let r3 = b.reserve("t").unwrap();
        assert!(matches!(
            b.reserve("t"),
            Err(GatewayError::BudgetExhausted { .. })
        ));
        r1.release();
        let r4 = b.reserve("t").unwrap();
        r2.deliver();
        r3.deliver();
        r4.deliver();
        assert!(b.check("t").is_err());
        assert_eq!(b.used("t"), Some((3, 3)));
        // Flushed: the store has them; still exhausted.
        b.on_store_total("t", 202401, 3, 3);
        assert!(b.reserve("t").is_err());
        assert!(b.reserve("other").is_ok());
        // A plan's cap joins at run time; the configured one wins.
        assert!(!b.ensure("t", Some(100)));
        assert!(b.reserve("t").is_err());
        assert!(b.ensure("other", Some(1)));
        let r = b.reserve("other").unwrap();
        assert!(b.reserve("other").is_err());
        r.release();
        assert!(!b.ensure("other", None));
        assert!(b.reserve("other").is_ok() && b.used("other").is_none());
    }

    /// Model test: random reserve/deliver/release/flush never lets delivered
    /// usage pass the cap, and every refusal happens only at the cap.
    #[test]
    fn model_usage_never_passes_the_cap() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for cap in [1u64, 2, 5, 17] {
            let b = Budgets::new(&BTreeMap::from([("t".to_string(), cap)]));
            let mut open: Vec<Reservation> = Vec::new();
            let (mut delivered, mut flushed) = (0u64, 0u64);
            for _ in 0..5_000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                match rng % 4 {
                    0 | 1 => match b.reserve("t") {
                        Ok(r) => open.push(r),
                        Err(_) => assert_eq!(delivered + open.len() as u64, cap),
                    },
                    2 if !open.is_empty() => {
                        let r = open.swap_remove((rng >> 8) as usize % open.len());
                        if rng & 0x100 != 0 {
                            r.deliver();
                            delivered += 1;
                        } else {
                            r.release();
                        }
                    }
                    _ => {
                        b.on_store_total("t", 1, delivered, delivered - flushed);
                        flushed = delivered;
                    }
                }
                assert!(delivered + open.len() as u64 <= cap);
            }
        }
    }
}
