//! Metering: counting every delivered answer, exactly once, into the usage
//! store.
//!
//! * [`accumulator`] — the lock-free in-process counters the transports
//!   record into once an answer is delivered (streams: the Detections is
//!   first handed to the session's connection; HTTP: the 200 answer is
//!   handed to the connection).
//! * [`budget`] — tenant caps, reserved at admission.
//! * [`wal`] — the write-ahead file that carries usage across crashes and
//!   store outages.
//! * [`flusher`] — drains the accumulator every `flush_interval` and applies
//!   batches to the store idempotently.
//!
//! [`Metering`] ties them together for the gateway; `docs/billing.md` states
//! the guarantees.

pub mod accumulator;
pub mod budget;
pub mod flusher;
pub mod wal;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex as AsyncMutex};

pub use accumulator::{merge_deltas, MeterHandle, SeriesKey, UsageAccumulator, UsageDelta};
pub use budget::{period_of, Budgets, Reservation};
pub use flusher::{FlushLeft, FlushStats, Flusher};

use crate::config::Config;
use crate::usage::{embedded::EmbeddedStore, redis::RedisStore, StoreError, UsageStore};

/// A metering set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write-ahead file could not be opened.
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the configured store (embedded file or Redis).
pub fn open_store(config: &Config) -> Result<UsageStore, StoreError> {
    let m = &config.metering;
    Ok(match m.store.as_str() {
        "redis" => UsageStore::Redis(RedisStore::connect(
            &m.redis_url,
            Duration::from_millis(m.store_timeout_ms),
        )?),
        _ => UsageStore::Embedded(EmbeddedStore::open(
            &config.storage.data_dir.join("usage.redb"),
        )?),
    })
}

/// The gateway's metering: accumulator, budgets, store and flusher.
#[derive(Debug)]
pub struct Metering {
    /// Where transports record delivered answers.
    pub accumulator: Arc<UsageAccumulator>,
    /// Tenant caps.
    pub budgets: Arc<Budgets>,
    /// The usage store.
    pub store: UsageStore,
    /// Flusher counters.
    pub stats: Arc<FlushStats>,
    flush_interval: Duration,
    store_timeout: Duration,
    flusher: AsyncMutex<Option<Flusher>>,
    task: AsyncMutex<Option<(tokio::task::JoinHandle<Flusher>, watch::Sender<bool>)>>,
}

impl Metering {
    /// Opens the store and the write-ahead file (replaying what it holds at
    /// the first flush). Must run inside a Tokio runtime.
    pub fn open(config: &Config) -> Result<Self, MeteringError> {
        let m = &config.metering;
        let store = open_store(config)?;
        let (wal, replayed) = wal::Wal::open(&config.storage.data_dir.join("usage.wal"))?;
        let accumulator = Arc::new(UsageAccumulator::new(m.window_secs));
        let budgets = Arc::new(Budgets::new(&m.budgets));
        let stats = Arc::new(FlushStats::default());
        let gateway_id = m
            .gateway_id
            .clone()
            .unwrap_or_else(|| format!("gw{}", std::process::id()));
        // On Redis the flusher has a connection of its own: its pipelines
        // (a large batch after an outage takes seconds of Redis time) would
        // otherwise hold up, on the one multiplexed connection, the reads
        // of /v1/usage, self-service budgets and the reporter's lease.
        let flusher_store = match store {
            UsageStore::Redis(_) => open_store(config)?,
            UsageStore::Embedded(_) => store.clone(),
        };
        let mut flusher = Flusher::new(
            accumulator.clone(),
            flusher_store,
            budgets.clone(),
            wal,
            replayed,
            &gateway_id,
            m.wal_max_bytes,
            Duration::from_millis(m.store_timeout_ms),
            stats.clone(),
        );
        flusher.drain_while_waiting(Duration::from_millis(m.flush_interval_ms));
        Ok(Self {
            accumulator,
            budgets,
            store,
            stats,
            flush_interval: Duration::from_millis(m.flush_interval_ms),
            store_timeout: Duration::from_millis(m.store_timeout_ms),
            flusher: AsyncMutex::new(Some(flusher)),
            task: AsyncMutex::new(None),
        })
    }

    /// Applies `tenant`'s plan cap (`budget_frames`) to the budgets; a
    /// tenant capped for the first time here gets its store total now, so
    /// its first frames see the period's usage.
    pub async fn ensure_budget(&self, tenant: &str, plan_cap: Option<u64>) {
        if self.budgets.ensure(tenant, plan_cap) {
            let now = unix_now();
            let period = period_of(now);
            let fut = self.store.period_total(tenant, period);
            match tokio::time::timeout(self.store_timeout, fut).await {
                Ok(Ok(total)) => self.budgets.on_store_total(tenant, period, total, 0),
                _ => tracing::warn!(
                    tenant,
                    "usage store unavailable: the budget starts from zero until the next flush"
                ),
            }
        }
    }

    /// Runs one flush (replaying the write-ahead file), then starts the
    /// flush loop, every `flush_interval`.
    pub async fn start(&self) {
        let Some(mut flusher) = self.flusher.lock().await.take() else {
            return;
        };
        // One tick before serving: replays the write-ahead file and loads
        // the budgets' store totals, so the first frames see them.
        if let Err(e) = flusher.tick(unix_now()).await {
            tracing::error!(error = %e, "metering write-ahead file failed");
        }
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let interval = self.flush_interval;
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop_rx.changed() => return flusher,
                }
                if let Err(e) = flusher.tick(unix_now()).await {
                    // Without the write-ahead file usage could be lost on a
                    // crash; keep flushing to the store, say so loudly.
                    tracing::error!(error = %e, "metering write-ahead file failed");
                }
            }
        });
        *self.task.lock().await = Some((handle, stop_tx));
    }

    /// Stops the loop and flushes everything, waiting up to `deadline` for
    /// the store; returns the frames left in the write-ahead file (0 when
    /// all reached the store).
    pub async fn shutdown(&self, deadline: Duration) -> u64 {
        let flusher = match self.task.lock().await.take() {
            Some((handle, stop)) => {
                let _ = stop.send(true);
                handle.await.ok()
            }
            None => self.flusher.lock().await.take(),
        };
        let Some(mut flusher) = flusher else { return 0 };
        let left = flusher.flush_all(unix_now, deadline).await;
        if !left.refused.is_empty() {
            tracing::error!(
                frames = left.frames,
                tenants = ?left.refused,
                "the usage store refuses these tenants' usage (a key it cannot count into); \
                 kept in the write-ahead file, it goes with the next start's flushes once the key is mended"
            );
        } else if left.frames > 0 {
            tracing::error!(
                frames = left.frames,
                "usage store unreachable at shutdown; usage kept in the write-ahead file for the next start"
            );
        } else {
            tracing::info!("usage flushed");
        }
        left.frames
    }
}

/// Metering as one session (or one HTTP request) sees it: the series it
/// records into and its tenant's budget. A no-op without metering.
#[derive(Debug, Clone)]
pub struct SessionMeter {
    tenant: String,
    handle: Option<MeterHandle>,
    budgets: Option<Arc<Budgets>>,
}

impl SessionMeter {
    /// The meter for `principal` using `model` on `gw`.
    pub fn new(
        gw: &crate::gateway::Gateway,
        principal: &crate::auth::Principal,
        model: &str,
    ) -> Self {
        let m = gw.metering.as_ref();
        Self {
            tenant: principal.tenant.clone(),
            handle: m.map(|m| {
                m.accumulator
                    .handle(&principal.tenant, &principal.key_id, model)
            }),
            budgets: m.map(|m| m.budgets.clone()),
        }
    }

    /// Whether a new session may start (the tenant's budget is not spent).
    pub fn admit_session(&self) -> Result<(), crate::error::GatewayError> {
        self.budgets
            .as_ref()
            .map_or(Ok(()), |b| b.check(&self.tenant))
    }

    /// Reserves budget for one frame before it is queued.
    pub fn reserve(&self) -> Result<Reservation, crate::error::GatewayError> {
        self.budgets
            .as_ref()
            .map_or(Ok(Reservation::unlimited()), |b| b.reserve(&self.tenant))
    }

    /// The answer to a frame of `pixels` pixels was delivered: it counts.
    pub fn delivered(&self, reservation: Reservation, pixels: u64) {
        reservation.deliver();
        if let Some(h) = &self.handle {
            h.record(pixels);
        }
    }
}
