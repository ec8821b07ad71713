//! The embedded usage store: one `redb` file (`usage.redb` in the data
//! folder). Every operation is one redb transaction on a blocking thread, so
//! a flush is applied all-or-nothing together with its applied-id marker.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BillingState, FlushBatch, StoreError, UsageRow, APPLIED_ID_TTL_SECS};

/// (tenant, window_start, model, key_id) → (frames, pixels)
const USAGE: TableDefinition<(&str, u64, &str, &str), (u64, u64)> = TableDefinition::new("usage");
/// (tenant, period YYYYMM) → frames
const PERIOD: TableDefinition<(&str, u32), u64> = TableDefinition::new("period");
/// flush id → applied at (unix seconds)
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("applied");
/// (applied at, flush id) → (), to expire applied ids in order
const APPLIED_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("applied_by_time");
/// (tenant, window_start) → () for windows not yet fully reported
const UNBILLED: TableDefinition<(&str, u64), ()> = TableDefinition::new("unbilled");
/// (tenant, meter, window_start) → "reported:pending_to"
const BILLING: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("billing");

/// The redb-backed store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = Database::create(path).map_err(|e| {
            let hint = if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
                " (a running gateway holds it: stop it first, or share usage through \
                 `metering.store = \"redis\"`)"
            } else {
                ""
            };
            StoreError::Failed(format!("cannot open {}: {e}{hint}", path.display()))
        })?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(USAGE).map_err(err)?;
            txn.open_table(PERIOD).map_err(err)?;
            txn.open_table(APPLIED).map_err(err)?;
            txn.open_table(APPLIED_BY_TIME).map_err(err)?;
            txn.open_table(UNBILLED).map_err(err)?;
            txn.open_table(BILLING).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(err)?
    }

    pub(super) async fn apply(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        let batch = batch.clone();
        self.blocking(move |db| {
            let now = now_secs();
            let txn = db.begin_write().map_err(err)?;
            {
                let mut applied = txn.open_table(APPLIED).map_err(err)?;
                if applied.get(batch.id.as_str()).map_err(err)?.is_some() {
                    return Ok(());
                }
                applied.insert(batch.id.as_str(), now).map_err(err)?;
                let mut by_time = txn.open_table(APPLIED_BY_TIME).map_err(err)?;
                by_time.insert((now, batch.id.as_str()), ()).map_err(err)?;
                // Forget ids older than the TTL.
                let cutoff = now.saturating_sub(APPLIED_ID_TTL_SECS);
                let old: Vec<(u64, String)> = by_time
                    .range((0u64, "")..(cutoff, ""))
                    .map_err(err)?
                    .filter_map(Result::ok)
                    .map(|(k, _)| {
                        let (t, id) = k.value();
                        (t, id.to_string())
                    })
                    .collect();
                for (t, id) in old {
                    by_time.remove((t, id.as_str())).map_err(err)?;
                    applied.remove(id.as_str()).map_err(err)?;
                }
                let mut usage = txn.open_table(USAGE).map_err(err)?;
                let mut period = txn.open_table(PERIOD).map_err(err)?;
                let mut unbilled = txn.open_table(UNBILLED).map_err(err)?;
                for d in &batch.deltas {
                    let key = (
                        d.tenant.as_str(),
                        d.window_start,
                        d.model.as_str(),
                        d.key_id.as_str(),
                    );
                    let (f, p) = usage.get(key).map_err(err)?.map_or((0, 0), |g| g.value());
                    usage
                        .insert(key, (f + d.frames, p + d.pixels))
                        .map_err(err)?;
                    let pk = (
                        d.tenant.as_str(),
                        crate::metering::period_of(d.window_start),
                    );
                    let total = period.get(pk).map_err(err)?.map_or(0, |g| g.value());
                    period.insert(pk, total + d.frames).map_err(err)?;
                    unbilled
                        .insert((d.tenant.as_str(), d.window_start), ())
                        .map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn period_total(&self, tenant: &str, p: u32) -> Result<u64, StoreError> {
        let totals = self.period_totals(&[tenant.to_string()], p).await?;
        Ok(totals.first().copied().unwrap_or(0))
    }

    pub(super) async fn period_totals(
        &self,
        tenants: &[String],
        p: u32,
    ) -> Result<Vec<u64>, StoreError> {
        let tenants = tenants.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(PERIOD).map_err(err)?;
            tenants
                .iter()
                .map(|tenant| {
                    Ok(t.get((tenant.as_str(), p))
                        .map_err(err)?
                        .map_or(0, |g| g.value()))
                })
                .collect()
        })
        .await
    }

    /// Folds the rows of `tenant` with `from <= window_start < to` into
    /// `acc` one at a time, in one read transaction.
    pub(super) async fn fold_rows<A: Send + 'static>(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        mut acc: A,
        f: fn(&mut A, UsageRow),
    ) -> Result<A, StoreError> {
        let tenant = tenant.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(USAGE).map_err(err)?;
            for item in t
                .range((tenant.as_str(), from, "", "")..(tenant.as_str(), to, "", ""))
                .map_err(err)?
            {
                let (k, v) = item.map_err(err)?;
                let (_, window_start, model, key_id) = k.value();
                let (frames, pixels) = v.value();
                f(
                    &mut acc,
                    UsageRow {
                        window_start,
                        model: model.to_string(),
                        key_id: key_id.to_string(),
                        frames,
                        pixels,
                    },
                );
            }
            Ok(acc)
        })
        .await
    }

    pub(super) async fn unbilled(&self, tenant: &str, before: u64) -> Result<Vec<u64>, StoreError> {
        let tenant = tenant.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(UNBILLED).map_err(err)?;
            let mut out = Vec::new();
            for item in t
                .range((tenant.as_str(), 0u64)..(tenant.as_str(), before))
                .map_err(err)?
            {
                out.push(item.map_err(err)?.0.value().1);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
    ) -> Result<BillingState, StoreError> {
        let (tenant, meter) = (tenant.to_string(), meter.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(BILLING).map_err(err)?;
            Ok(t.get((tenant.as_str(), meter.as_str(), window))
                .map_err(err)?
                .map_or_else(BillingState::default, |g| BillingState::decode(g.value())))
        })
        .await
    }

    pub(super) async fn swap_billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
        expected: BillingState,
        next: BillingState,
    ) -> Result<bool, StoreError> {
        let (tenant, meter) = (tenant.to_string(), meter.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(BILLING).map_err(err)?;
                let key = (tenant.as_str(), meter.as_str(), window);
                let current = t
                    .get(key)
                    .map_err(err)?
                    .map_or_else(BillingState::default, |g| BillingState::decode(g.value()));
                if current != expected {
                    return Ok(false);
                }
                t.insert(key, next.encode().as_str()).map_err(err)?;
                if next.pending_to.is_none() {
                    let usage = txn.open_table(USAGE).map_err(err)?;
                    let mut total = 0;
                    for item in usage
                        .range(
                            (tenant.as_str(), window, "", "")
                                ..(tenant.as_str(), window + 1, "", ""),
                        )
                        .map_err(err)?
                    {
                        total += item.map_err(err)?.1.value().0;
                    }
                    if total == next.reported {
                        let mut unbilled = txn.open_table(UNBILLED).map_err(err)?;
                        unbilled.remove((tenant.as_str(), window)).map_err(err)?;
                    }
                }
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::UsageStore;
    use super::*;
    use crate::metering::UsageDelta;

    fn delta(tenant: &str, window: u64, frames: u64) -> UsageDelta {
        UsageDelta {
            tenant: tenant.into(),
            key_id: "k".into(),
            model: "m".into(),
            window_start: window,
            frames,
            pixels: frames * 10,
        }
    }

    #[tokio::test]
    async fn a_retried_flush_counts_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.redb");
        let store = UsageStore::Embedded(EmbeddedStore::open(&path).unwrap());
        let batch = FlushBatch {
            id: "gw-1".into(),
            deltas: vec![delta("a", 60, 3), delta("b", 60, 1)],
        };
        store.apply(&batch).await.unwrap();
        store.apply(&batch).await.unwrap();
        store
            .apply(&FlushBatch {
                id: "gw-2".into(),
                deltas: vec![delta("a", 120, 2)],
            })
            .await
            .unwrap();
        drop(store);
        let store = UsageStore::Embedded(EmbeddedStore::open(&path).unwrap());
        let rows = store.rows("a", 0, 1000).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.frames).sum::<u64>(), 5);
        assert_eq!(rows[0].pixels, 30);
        assert_eq!(store.window_frames("a", 60).await.unwrap(), 3);
        // Folded into buckets as read: both windows in the first hour, not
        // tenant b's.
        let b = store.buckets("a", 0, 1000, 3600).await.unwrap();
        assert_eq!(
            b.iter().map(|x| (x.start, x.frames)).collect::<Vec<_>>(),
            [(0, 5)]
        );
        assert_eq!(store.unbilled("a", 1000).await.unwrap(), vec![60, 120]);
        assert_eq!(store.unbilled("a", 100).await.unwrap(), vec![60]);
        let p = crate::metering::period_of(60);
        assert_eq!(store.period_total("a", p).await.unwrap(), 5);
        // Billing CAS: pending, then committed; the window leaves unbilled.
        let s0 = store.billing_state("a", "frames", 60).await.unwrap();
        let s1 = BillingState {
            reported: 0,
            pending_to: Some(3),
        };
        assert!(store
            .swap_billing_state("a", "frames", 60, s0, s1)
            .await
            .unwrap());
        assert!(!store
            .swap_billing_state("a", "frames", 60, s0, s1)
            .await
            .unwrap());
        let s2 = BillingState {
            reported: 3,
            pending_to: None,
        };
        assert!(store
            .swap_billing_state("a", "frames", 60, s1, s2)
            .await
            .unwrap());
        assert_eq!(store.unbilled("a", 1000).await.unwrap(), vec![120]);
    }
}
