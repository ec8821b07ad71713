//! The flusher: moves drained usage from the accumulator to the store,
//! through the write-ahead file, exactly once.
//!
//! State, per tick (every `flush_interval`):
//!
//! ```text
//! accumulator ──drain──► open batch (merged, new id, never sent) ──append+fsync──► usage.wal
//!                            │ seal when nothing older is waiting
//!                            ▼
//!                      sealed queue (ids fixed, contents frozen) ──apply(id)──► store ──► ack in wal
//! ```
//!
//! A sealed batch is never changed once it may have been sent, so a retry
//! carries the same id and content, and the store's applied-id check makes
//! it count once. While the store is unreachable the open batch keeps
//! merging (memory bounded by distinct (series, window) pairs) and the
//! write-ahead file keeps every delta, so a restart replays them.
//!
//! SIGKILL bound: what was recorded in the accumulator but not yet drained
//! into the write-ahead file is lost — at most one `flush_interval` of
//! delivered frames (plus a drain whose `fsync` had not returned). A store
//! call can take up to `store_timeout_ms` (and a tick makes several), so
//! while one is waited for the flusher keeps draining into the write-ahead
//! file every `flush_interval` ([`Flusher::drain_while_waiting`]): a slow
//! or silent store holds up the store, not the bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::wal::{Wal, WalError};
use super::{merge_deltas, period_of, Budgets, UsageAccumulator, UsageDelta};
use crate::usage::{FlushBatch, StoreError, UsageStore};

/// Counters for the metrics issue; every field is monotonic or a gauge.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Batches applied to the store.
    pub batches_applied: AtomicU64,
    /// Frames applied to the store.
    pub frames_applied: AtomicU64,
    /// Failed apply attempts (store unreachable or erroring).
    pub failures: AtomicU64,
    /// Batches waiting for the store (gauge).
    pub pending_batches: AtomicU64,
    /// Frames waiting for the store (gauge).
    pub pending_frames: AtomicU64,
    /// Unix milliseconds of the last tick that left nothing pending.
    pub last_caught_up_ms: AtomicU64,
    /// Bytes in the write-ahead file (gauge).
    pub wal_bytes: AtomicU64,
}

/// The flusher's state; driven by [`Flusher::tick`].
#[derive(Debug)]
pub struct Flusher {
    acc: Arc<UsageAccumulator>,
    store: UsageStore,
    budgets: Arc<Budgets>,
    wal: Wal,
    wal_max_bytes: u64,
    id_prefix: String,
    seq: u64,
    open: Option<FlushBatch>,
    sealed: VecDeque<FlushBatch>,
    applied_since_refresh: BTreeMap<String, u64>,
    /// Frames of refused parts of batches replayed from an earlier run,
    /// per tenant, merged into this run's open batch (see
    /// [`Self::count_applied`]).
    foreign: BTreeMap<String, u64>,
    /// An append to the write-ahead file failed: what is pending is
    /// rewritten to it whole until that succeeds.
    wal_behind: bool,
    /// How the latest tick's store calls went (see
    /// [`Self::held_by_refusals`]).
    last_tick: TickStore,
    timeout: Duration,
    /// While a store call is waited for, drain into the write-ahead file
    /// this often (`None`: only once per tick).
    drain_every: Option<Duration>,
    stats: Arc<FlushStats>,
}

/// How one tick's store calls went.
#[derive(Debug, Default)]
struct TickStore {
    /// Tenants whose usage the store refused.
    refused: std::collections::BTreeSet<String>,
    /// A call failed or timed out (the store may be unreachable).
    failed: bool,
}

/// What a final flush ([`Flusher::flush_all`]) left in the write-ahead file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushLeft {
    /// Frames not in the store.
    pub frames: u64,
    /// When the store refused them: the tenants whose keys it cannot count
    /// into (empty when it was unreachable or the deadline passed).
    pub refused: Vec<String>,
}

/// A flusher failure that stops the gateway (the write-ahead file failed).
pub type FlushError = WalError;

impl Flusher {
    /// A flusher over `wal`, first replaying `replayed` (the file's
    /// unacknowledged batches).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        acc: Arc<UsageAccumulator>,
        store: UsageStore,
        budgets: Arc<Budgets>,
        wal: Wal,
        replayed: Vec<FlushBatch>,
        gateway_id: &str,
        wal_max_bytes: u64,
        timeout: Duration,
        stats: Arc<FlushStats>,
    ) -> Self {
        // Flush ids must never repeat within the store's memory of applied
        // ids (a repeat is dropped as a replay), across every gateway and
        // restart: the default gateway id is `gw{pid}`, the same in every
        // container, so uniqueness rests on this nonce: 128 random bits.
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        if !replayed.is_empty() {
            let frames: u64 = replayed
                .iter()
                .flat_map(|b| &b.deltas)
                .map(|d| d.frames)
                .sum();
            tracing::info!(
                batches = replayed.len(),
                frames,
                "replaying usage from the write-ahead file"
            );
        }
        Self {
            acc,
            store,
            budgets,
            wal,
            wal_max_bytes,
            id_prefix: format!("{gateway_id}-{}", hex::encode(nonce)),
            seq: 0,
            open: None,
            sealed: replayed.into(),
            applied_since_refresh: BTreeMap::new(),
            foreign: BTreeMap::new(),
            wal_behind: false,
            last_tick: TickStore::default(),
            timeout,
            drain_every: None,
            stats,
        }
    }

    /// Keeps draining the accumulator into the write-ahead file every
    /// `every` (the flush interval) while a store call is waited for.
    pub fn drain_while_waiting(&mut self, every: Duration) {
        self.drain_every = Some(every);
    }

    /// Frames waiting for the store (sealed and open).
    pub fn pending_frames(&self) -> u64 {
        self.sealed
            .iter()
            .chain(self.open.iter())
            .flat_map(|b| &b.deltas)
            .map(|d| d.frames)
            .sum()
    }

    /// What waits for the store, oldest first.
    fn pending_batches(&self) -> Vec<FlushBatch> {
        self.sealed
            .iter()
            .chain(self.open.iter())
            .cloned()
            .collect()
    }

    /// Whether anything waits for the store.
    pub fn is_idle(&self) -> bool {
        self.open.is_none() && self.sealed.is_empty()
    }

    /// One flush at unix time `now` (seconds): drain, write ahead, apply
    /// what waits, refresh budgets. Only a write-ahead failure is an error;
    /// store failures are counted and retried next tick.
    pub async fn tick(&mut self, now: u64) -> Result<(), FlushError> {
        // A write-ahead failure is reported at the end; the store still gets
        // the usage.
        let mut wal_error = None;
        // The next drain while a store call is waited for: one timer for
        // the whole tick, however many calls it makes.
        let mut drain_at = tokio::time::Instant::now() + self.drain_every.unwrap_or_default();
        if let Err(e) = self.write_ahead(now) {
            wal_error.get_or_insert(e);
        }
        // The open batch is sealed at most once a tick: what later drains
        // put in it is in the write-ahead file and waits for the next tick
        // (else a slow store and steady traffic would keep one tick going,
        // and budgets, compaction and the stats with it).
        let mut sealed_open = false;
        self.last_tick = TickStore::default();
        loop {
            if self.sealed.is_empty() {
                if sealed_open {
                    break;
                }
                match self.open.take() {
                    Some(b) => {
                        self.sealed.push_back(b);
                        sealed_open = true;
                    }
                    None => break,
                }
            }
            // The batch stays in the queue (and in what a rewrite of the
            // write-ahead file writes) until its outcome is known.
            let batch = self.sealed.front().expect("non-empty").clone();
            let store = self.store.clone();
            let apply = async move { store.apply(&batch).await };
            let result = self.waiting(apply, &mut drain_at, &mut wal_error).await;
            match result {
                Ok(Ok(())) => {
                    let batch = self.sealed.pop_front().expect("non-empty");
                    if let Err(e) = self.wal.ack(&batch.id) {
                        wal_error.get_or_insert(e);
                    }
                    self.count_applied(&batch.id, &batch.deltas);
                    self.stats.batches_applied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(StoreError::Refused(refused))) => {
                    self.last_tick
                        .refused
                        .extend(refused.iter().map(|(t, _)| t.clone()));
                    if let Err(e) = self.on_refused(refused) {
                        wal_error.get_or_insert(e);
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.last_tick.failed = true;
                    self.on_failure(&e.to_string());
                    break;
                }
                Err(_) => {
                    self.last_tick.failed = true;
                    self.on_failure("timed out");
                    break;
                }
            }
        }
        if self.is_idle() {
            if self.wal.bytes() > 0 || self.wal_behind {
                match self.wal.rewrite(&[]) {
                    Ok(()) => self.wal_behind = false,
                    Err(e) => {
                        // The file may be left half-replaced: the next
                        // drain rewrites what is pending whole.
                        self.wal_behind = true;
                        wal_error.get_or_insert(e);
                    }
                }
            }
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.stats.last_caught_up_ms.store(ms, Ordering::Relaxed);
        } else if self.wal.bytes() > self.wal_max_bytes {
            if let Err(e) = self.wal.rewrite(&self.pending_batches()) {
                // As above: appends could go to a file that is no longer
                // the one a restart reads; rewrite whole next time.
                self.wal_behind = true;
                wal_error.get_or_insert(e);
            }
        }
        self.refresh_budgets(now, &mut drain_at, &mut wal_error)
            .await;
        self.stats.pending_batches.store(
            self.sealed.len() as u64 + u64::from(self.open.is_some()),
            Ordering::Relaxed,
        );
        self.stats
            .pending_frames
            .store(self.pending_frames(), Ordering::Relaxed);
        self.stats
            .wal_bytes
            .store(self.wal.bytes(), Ordering::Relaxed);
        wal_error.map_or(Ok(()), Err)
    }

    /// Usage of flush `id` that reached the store: the stats, and what the
    /// budgets counted as delivered here and not yet in the store (this
    /// process's batches of capped tenants; a batch replayed from the
    /// write-ahead file was delivered by an earlier run, its frames reach
    /// the budget through the store total alone).
    fn count_applied(&mut self, id: &str, deltas: &[UsageDelta]) {
        if id.starts_with(&self.id_prefix) {
            for d in deltas {
                // Refused frames of an earlier run merged into this one's.
                let mut frames = d.frames;
                if let Some(f) = self.foreign.get_mut(&d.tenant) {
                    let theirs = (*f).min(frames);
                    frames -= theirs;
                    *f -= theirs;
                    if *f == 0 {
                        self.foreign.remove(&d.tenant);
                    }
                }
                if self.budgets.is_capped(&d.tenant) {
                    *self
                        .applied_since_refresh
                        .entry(d.tenant.clone())
                        .or_default() += frames;
                }
            }
        }
        let frames: u64 = deltas.iter().map(|d| d.frames).sum();
        self.stats
            .frames_applied
            .fetch_add(frames, Ordering::Relaxed);
    }

    /// The store applied the front batch but for the parts of the
    /// `refused` tenants, of which it wrote nothing. The rest counts as
    /// applied; the refused parts move into the open batch (a new id, sent
    /// with the next flush: they hold up nobody else's usage, and take no
    /// store call of their own however long the key stays broken). The move
    /// is written ahead first, in one step (the file then holds them under
    /// the new id only, never under both ids: a replay of both would count
    /// them twice). If that write fails, the batch stays first in the queue
    /// with its refused parts only, under its own id.
    fn on_refused(&mut self, refused: Vec<(String, String)>) -> Result<(), FlushError> {
        let front = self.sealed.front().expect("non-empty");
        let id = front.id.clone();
        let (kept, applied): (Vec<_>, Vec<_>) = front
            .deltas
            .iter()
            .cloned()
            .partition(|d| refused.iter().any(|(t, _)| *t == d.tenant));
        self.count_applied(&id, &applied);
        let n = self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(30) {
            tracing::warn!(
                error = %StoreError::Refused(refused),
                "the usage store refused some tenants' usage (a key it cannot count into); \
                 it waits, written ahead, and goes with every flush until the key is mended; \
                 other tenants' usage goes on"
            );
        }
        let mut open = match self.open.clone() {
            Some(open) => open,
            None => self.open_batch().clone(),
        };
        merge_deltas(&mut open.deltas, kept.iter().cloned());
        let pending: Vec<FlushBatch> = self
            .sealed
            .iter()
            .skip(1)
            .cloned()
            .chain(std::iter::once(open.clone()))
            .collect();
        if let Err(e) = self.wal.rewrite(&pending) {
            self.sealed.front_mut().expect("non-empty").deltas = kept;
            self.wal_behind = true;
            return Err(e);
        }
        self.sealed.pop_front();
        self.open = Some(open);
        // Frames an earlier run delivered: when the open batch (this run's
        // id) is applied they must not count as delivered by this run.
        if !id.starts_with(&self.id_prefix) {
            for d in &kept {
                *self.foreign.entry(d.tenant.clone()).or_default() += d.frames;
            }
        }
        Ok(())
    }

    /// The open batch (merging, never sent), opened with a new id if none.
    fn open_batch(&mut self) -> &mut FlushBatch {
        self.open.get_or_insert_with(|| {
            self.seq += 1;
            FlushBatch {
                id: format!("{}-{}", self.id_prefix, self.seq),
                deltas: Vec::new(),
            }
        })
    }

    /// Drains the accumulator into the open batch and appends it to the
    /// write-ahead file (rewriting what is pending after a failed append).
    fn write_ahead(&mut self, now: u64) -> Result<(), FlushError> {
        let mut wal_error = None;
        let deltas = self.acc.drain(now);
        if !deltas.is_empty() {
            let open = self.open_batch();
            // Into memory first: if the write-ahead file fails the usage
            // still reaches the store; only crash safety is lost (logged).
            let id = open.id.clone();
            merge_deltas(&mut open.deltas, deltas.iter().cloned());
            if !self.wal_behind {
                if let Err(e) = self.wal.append(&id, &deltas) {
                    self.wal_behind = true;
                    wal_error.get_or_insert(e);
                }
            }
        }
        if self.wal_behind {
            // These deltas (and any earlier append that failed) are only in
            // memory: write everything pending again, so a crash loses none.
            match self.wal.rewrite(&self.pending_batches()) {
                Ok(()) => self.wal_behind = false,
                Err(e) => {
                    wal_error.get_or_insert(e);
                }
            }
        }
        wal_error.map_or(Ok(()), Err)
    }

    /// Awaits `call` (a store call, which must not borrow the flusher) for
    /// at most the store timeout; meanwhile, with
    /// [`Self::drain_while_waiting`] set, drains into the write-ahead file
    /// whenever `drain_at` passes (then every interval), dated by the
    /// clock, as a tick's own drain would be.
    async fn waiting<T>(
        &mut self,
        call: impl std::future::Future<Output = T>,
        drain_at: &mut tokio::time::Instant,
        wal_error: &mut Option<FlushError>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        let call = tokio::time::timeout(self.timeout, call);
        let Some(every) = self.drain_every else {
            return call.await;
        };
        let mut call = std::pin::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => return r,
                () = tokio::time::sleep_until(*drain_at) => {
                    if let Err(e) = self.write_ahead(super::unix_now()) {
                        wal_error.get_or_insert(e);
                    }
                    *drain_at = tokio::time::Instant::now() + every;
                }
            }
        }
    }

    fn on_failure(&self, why: &str) {
        let n = self.stats.failures.fetch_add(1, Ordering::Relaxed);
        // Loud on the first failure, then every 30th (about every 30 s).
        if n.is_multiple_of(30) {
            tracing::warn!(
                error = why,
                pending_frames = self.pending_frames(),
                "usage store unavailable; usage waits in memory and in the write-ahead file"
            );
        }
    }

    async fn refresh_budgets(
        &mut self,
        now: u64,
        drain_at: &mut tokio::time::Instant,
        wal_error: &mut Option<FlushError>,
    ) {
        let period = period_of(now);
        let tenants = self.budgets.tenants();
        if tenants.is_empty() {
            return;
        }
        // One store call for every capped tenant (one round trip on
        // Redis): one call each made a tick with thousands of capped
        // tenants take thousands of round trips, and as many store
        // timeouts while the store did not answer.
        let (store, t) = (self.store.clone(), tenants.clone());
        let totals = async move { store.period_totals(&t, period).await };
        if let Ok(Ok(totals)) = self.waiting(totals, drain_at, wal_error).await {
            debug_assert_eq!(totals.len(), tenants.len(), "a total per tenant");
            for (tenant, total) in tenants.iter().zip(totals) {
                let applied = self.applied_since_refresh.remove(tenant).unwrap_or(0);
                self.budgets.on_store_total(tenant, period, total, applied);
            }
        }
    }

    /// What is left is usage the store refused outright (a key it cannot
    /// count into, see [`StoreError::Refused`]) and no more waiting would
    /// change that: the latest tick reached the store, and every tenant
    /// still pending is one it refused then. The refused tenants, or `None`.
    pub fn held_by_refusals(&self) -> Option<Vec<String>> {
        // Written ahead whole, and nothing else to drain: else a retry
        // still has work (a rewrite of the file, a drain into it).
        if self.is_idle()
            || self.last_tick.failed
            || !self.sealed.is_empty()
            || self.wal_behind
            || self.acc.undrained_frames() > 0
        {
            return None;
        }
        let pending: std::collections::BTreeSet<&String> = self
            .open
            .iter()
            .flat_map(|b| &b.deltas)
            .map(|d| &d.tenant)
            .collect();
        pending
            .iter()
            .all(|t| self.last_tick.refused.contains(*t))
            .then(|| pending.into_iter().cloned().collect())
    }

    /// Ticks until nothing is pending or `deadline` passes; returns what is
    /// still waiting (kept in the write-ahead file for the next start). It
    /// does not wait for a key to be mended: once only usage the store
    /// refused is left, it stops.
    pub async fn flush_all(&mut self, now: impl Fn() -> u64, deadline: Duration) -> FlushLeft {
        let end = tokio::time::Instant::now() + deadline;
        let mut refused = Vec::new();
        loop {
            if let Err(e) = self.tick(now()).await {
                tracing::error!(error = %e, "metering write-ahead file failed during the final flush");
            }
            if let Some(tenants) = self.held_by_refusals() {
                refused = tenants;
                break;
            }
            if self.is_idle() || tokio::time::Instant::now() >= end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        FlushLeft {
            frames: self.pending_frames() + self.acc.undrained_frames(),
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::UsageDelta;
    use crate::usage::embedded::EmbeddedStore;
    use crate::usage::redis::RedisStore;

    #[tokio::test]
    async fn replayed_usage_does_not_cancel_this_runs_unflushed_frames() {
        // A capped tenant: 1,000 frames of an earlier run wait in the
        // write-ahead file; this run has delivered 3 more that are not in
        // the store yet. Applying the replay must leave those 3 counted.
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("usage.wal")).unwrap();
        let store = UsageStore::Embedded(EmbeddedStore::open(&dir.path().join("u.redb")).unwrap());
        let budgets = Arc::new(Budgets::new(&BTreeMap::from([("t".to_string(), 10_000)])));
        let now = crate::metering::unix_now();
        let replayed = vec![FlushBatch {
            id: "gw1-earlier-run-7".into(),
            deltas: vec![UsageDelta {
                tenant: "t".into(),
                key_id: "k".into(),
                model: "m".into(),
                window_start: now - now % 60,
                frames: 1_000,
                pixels: 1_000,
            }],
        }];
        for _ in 0..3 {
            budgets.reserve("t").unwrap().deliver();
        }
        let mut flusher = Flusher::new(
            Arc::new(UsageAccumulator::new(60)),
            store,
            budgets.clone(),
            wal,
            replayed,
            "gw1",
            1 << 20,
            Duration::from_secs(5),
            Arc::new(FlushStats::default()),
        );
        flusher.tick(now).await.unwrap();
        assert!(flusher.is_idle());
        assert_eq!(budgets.used("t"), Some((1_003, 10_000)));
    }

    /// A flusher of `acc` into the Redis at `url` (no budgets), with
    /// `store_timeout` for the store's commands and the flusher's calls.
    fn redis_flusher(
        acc: &Arc<UsageAccumulator>,
        url: &str,
        store_timeout: Duration,
        wal: Wal,
        replayed: Vec<FlushBatch>,
    ) -> Flusher {
        let store = UsageStore::Redis(RedisStore::connect(url, store_timeout).unwrap());
        Flusher::new(
            acc.clone(),
            store,
            Arc::new(Budgets::new(&Default::default())),
            wal,
            replayed,
            "gw-test",
            1 << 20,
            store_timeout,
            Arc::new(FlushStats::default()),
        )
    }

    /// The frames the write-ahead file at `path` holds, and its batches.
    fn frames_written_ahead(path: &std::path::Path) -> (u64, Vec<FlushBatch>) {
        let (_wal, replayed) = Wal::open(path).unwrap();
        let frames = replayed
            .iter()
            .flat_map(|b| &b.deltas)
            .map(|d| d.frames)
            .sum();
        (frames, replayed)
    }

    #[tokio::test]
    async fn usage_whose_append_failed_is_written_ahead_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.wal");
        let (mut wal, replayed) = Wal::open(&path).unwrap();
        wal.fail_writes_for_test();
        let acc = Arc::new(UsageAccumulator::new(60));
        // Nothing listens on port 9: the store stays unavailable, so the
        // usage waits in memory and in the write-ahead file.
        let mut flusher = redis_flusher(
            &acc,
            "redis://127.0.0.1:9/",
            Duration::from_millis(300),
            wal,
            replayed,
        );
        acc.handle("acme", "k1", "m").record(100);
        acc.handle("acme", "k1", "m").record(100);
        // The append fails; the rewrite of what is pending (a new file)
        // puts the two frames in the file all the same.
        flusher.tick(1_000).await.unwrap_err();
        assert_eq!(flusher.pending_frames(), 2);
        drop(flusher); // a crash: nothing reached the store
        let (frames, replayed) = frames_written_ahead(&path);
        assert_eq!(frames, 2, "{replayed:?}");
    }

    /// A store that accepts connections and never answers (a partition
    /// that drops packets) holds each call for the store timeout; usage
    /// recorded meanwhile still reaches the write-ahead file within a flush
    /// interval, so a SIGKILL loses no more than that (before, it waited
    /// for the whole tick: every store call's timeout in turn).
    #[tokio::test]
    async fn a_silent_store_does_not_hold_up_the_write_ahead_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.wal");
        let (wal, replayed) = Wal::open(&path).unwrap();
        // Accepts, reads nothing, answers nothing.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let acc = Arc::new(UsageAccumulator::new(60));
        let mut flusher = redis_flusher(
            &acc,
            &format!("redis://{addr}/"),
            Duration::from_secs(4),
            wal,
            replayed,
        );
        flusher.drain_while_waiting(Duration::from_millis(100));
        acc.handle("acme", "k1", "m").record(100);
        let now = crate::metering::unix_now();
        let tick = tokio::spawn(async move {
            let _ = flusher.tick(now).await;
            flusher
        });
        // The tick is waiting for the store: frames delivered now are
        // drained into the write-ahead file all the same.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!tick.is_finished(), "the silent store answered");
        for _ in 0..3 {
            acc.handle("acme", "k1", "m").record(100);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while acc.undrained_frames() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage waited in memory while the store was silent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!tick.is_finished(), "the silent store answered");
        // A crash now: the write-ahead file holds every frame.
        let flusher = tick.await.unwrap();
        assert_eq!(flusher.pending_frames(), 4);
        drop(flusher);
        let (frames, replayed) = frames_written_ahead(&path);
        assert_eq!(frames, 4, "{replayed:?}");
    }
}
