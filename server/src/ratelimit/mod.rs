//! Rate limits: how much a tenant (and a key with its own limits) may send.
//!
//! Three limits from the plan (`config::tenancy::PlanLimits`):
//!
//! * `frames_per_sec` with `burst`: every frame, streamed or one-shot, is one
//!   unit of a GCRA bucket ([`gcra`]);
//! * `detect_per_minute`: one-shot `POST /v1/detect` requests, a second GCRA
//!   bucket with a burst of a sixth of a minute's worth (so at most
//!   `n + n/6` requests in any minute);
//! * `max_sessions`: streaming sessions open at once.
//!
//! Each applies to the tenant and, when a key's effective limits differ from
//! its tenant's, to the key as well; a frame must fit in every bucket, and
//! is charged to all of them in one atomic step.
//!
//! State lives in this process ([`local`]: exact for one gateway) or in Redis
//! ([`redis`]: one limit for every gateway sharing it), chosen by
//! `[ratelimit] store`. When Redis cannot answer, `on_store_error` decides:
//! `local` (the default) falls back to this process's buckets, `allow` admits,
//! `deny` refuses; each failure counts in
//! `framegate_ratelimit_store_errors_total` and is logged at most once per
//! [`ERROR_LOG_INTERVAL`].
//!
//! Admission points: `transport::http` (detect), `session::runner` (each
//! frame, before it may reach the pipeline, and session open). A refused
//! frame never reaches inference, so it is never metered or billed.

pub mod gcra;
pub mod local;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use crate::auth::Principal;
use crate::config::{PlanLimits, RateLimitConfig};
use crate::error::GatewayError;
use crate::metrics;
use crate::session::Clock;

pub use gcra::{Decision, Rate};

/// Store failures are logged at most once per this interval (all are counted).
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often idle local buckets are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What a decision does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Enforce the limit in this process only (each gateway admits up to the
    /// limit): never unlimited, never refusing everyone.
    Local,
    /// Admit (fail open): availability over exactness.
    Allow,
    /// Refuse what is limited (fail closed): exactness over availability.
    Deny,
}

/// One caller's buckets, built once per session or request from its limits.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    tenant: String,
    frame_keys: Vec<String>,
    frame_rates: Vec<Rate>,
    /// Frame buckets followed by detect buckets: a detect request is a frame.
    detect_keys: Vec<String>,
    detect_rates: Vec<Rate>,
    sessions: Vec<(String, u32)>,
    describe_frames: String,
}

fn frame_rate(l: &PlanLimits) -> Option<Rate> {
    l.frames_per_sec
        .map(|r| Rate::per_second(r, l.effective_burst()))
}

/// The detect bucket: `n` per minute, a sixth of a minute's worth at once.
fn detect_rate(l: &PlanLimits) -> Option<Rate> {
    l.detect_per_minute
        .map(|n| Rate::per_minute(n.max(1), n.div_ceil(6).max(1)))
}

impl Subject {
    /// The buckets of `principal`, whose tenant's own limits are
    /// `tenant_limits` (its plan with the tenant's overrides; the key's
    /// effective limits are `principal.limits`).
    pub fn new(tenant_limits: &PlanLimits, principal: &Principal) -> Subject {
        let t = &principal.tenant;
        let key = &*principal.limits;
        let mut s = Subject {
            tenant: t.clone(),
            ..Default::default()
        };
        let (tf, kf) = (frame_rate(tenant_limits), frame_rate(key));
        if let Some(r) = tf {
            s.frame_keys.push(format!("fg:{{{t}}}:rl:f"));
            s.frame_rates.push(r);
        }
        if let Some(r) = kf.filter(|k| Some(*k) != tf) {
            s.frame_keys
                .push(format!("fg:{{{t}}}:rl:f:k:{}", principal.key_id));
            s.frame_rates.push(r);
        }
        s.describe_frames = match (kf.is_some() && kf != tf, tenant_limits.frames_per_sec) {
            (true, _) => format!(
                "the key's limit of {} frames/s (burst {})",
                key.frames_per_sec.unwrap_or_default(),
                key.effective_burst()
            ),
            (false, Some(r)) => format!(
                "tenant {t:?}'s limit of {r} frames/s (burst {})",
                tenant_limits.effective_burst()
            ),
            (false, None) => String::new(),
        };
        s.detect_keys = s.frame_keys.clone();
        s.detect_rates = s.frame_rates.clone();
        let (td, kd) = (detect_rate(tenant_limits), detect_rate(key));
        if let Some(r) = td {
            s.detect_keys.push(format!("fg:{{{t}}}:rl:d"));
            s.detect_rates.push(r);
        }
        if let Some(r) = kd.filter(|k| Some(*k) != td) {
            s.detect_keys
                .push(format!("fg:{{{t}}}:rl:d:k:{}", principal.key_id));
            s.detect_rates.push(r);
        }
        if let Some(m) = tenant_limits.max_sessions {
            s.sessions.push((format!("fg:{{{t}}}:rl:s"), m));
        }
        if let Some(m) = key
            .max_sessions
            .filter(|m| Some(*m) != tenant_limits.max_sessions)
        {
            s.sessions
                .push((format!("fg:{{{t}}}:rl:s:k:{}", principal.key_id), m));
        }
        s
    }

    /// Whether frames are limited at all (no limit: no decision is made).
    pub fn limits_frames(&self) -> bool {
        !self.frame_keys.is_empty()
    }

    /// The frame limit that applies, in words (for Dropped and errors).
    pub fn describe_frames(&self) -> &str {
        &self.describe_frames
    }
}

/// Decides rate limits; one per gateway.
#[derive(Debug)]
pub struct RateLimiter {
    local: LocalBucketsArc,
    sessions: Arc<local::LocalSessions>,
    redis: Option<redis::RedisLimits>,
    on_error: OnStoreError,
    clock: Arc<dyn Clock>,
    session_ttl: Duration,
    last_error_log_us: AtomicU64,
}

type LocalBucketsArc = Arc<local::LocalBuckets>;

impl RateLimiter {
    /// From `[ratelimit]`; `default_redis_url` is `metering.redis_url`.
    /// Starts a sweeper of idle buckets when called inside a Tokio runtime.
    pub fn from_config(
        cfg: &RateLimitConfig,
        default_redis_url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GatewayError> {
        let redis = if cfg.store == "redis" {
            let url = cfg.redis_url.as_deref().unwrap_or(default_redis_url);
            Some(
                redis::RedisLimits::connect(url, Duration::from_millis(cfg.timeout_ms))
                    .map_err(|e| GatewayError::Internal(e.to_string()))?,
            )
        } else {
            None
        };
        let on_error = match cfg.on_store_error.as_str() {
            "allow" => OnStoreError::Allow,
            "deny" => OnStoreError::Deny,
            _ => OnStoreError::Local,
        };
        let local = Arc::new(local::LocalBuckets::new(cfg.max_local_entries));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&local);
            let clock = clock.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(b) = weak.upgrade() else { return };
                    b.sweep(clock.now_us());
                }
            });
        }
        Ok(Self {
            local,
            sessions: Arc::default(),
            redis,
            on_error,
            clock,
            session_ttl: Duration::from_secs(cfg.session_ttl_secs),
            last_error_log_us: AtomicU64::new(0),
        })
    }

    /// A limiter keeping its state in this process.
    pub fn local(clock: Arc<dyn Clock>) -> Self {
        Self::from_config(&RateLimitConfig::default(), "", clock).expect("local limiter")
    }

    /// Whether state is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Buckets held in this process now.
    pub fn local_buckets(&self) -> usize {
        self.local.len()
    }

    fn store_failed(&self, e: &redis::StoreError) {
        metrics::get().ratelimit_store_errors.inc();
        let now = self.clock.now_us();
        let last = self.last_error_log_us.load(Ordering::Relaxed);
        let every = ERROR_LOG_INTERVAL.as_micros() as u64;
        if now.saturating_sub(last) >= every
            && self
                .last_error_log_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %e,
                on_store_error = ?self.on_error,
                "rate-limit store unavailable; deciding by on_store_error (logged once per {} s)",
                ERROR_LOG_INTERVAL.as_secs()
            );
        }
    }

    async fn decide(&self, tenant: &str, keys: &[String], rates: &[Rate], n: u32) -> Decision {
        if keys.is_empty() || n == 0 {
            return Decision {
                admitted: n,
                retry_after_us: 0,
            };
        }
        if let Some(r) = &self.redis {
            match r.decide(keys, rates, n).await {
                Ok(d) => return d,
                Err(e) => {
                    self.store_failed(&e);
                    match self.on_error {
                        OnStoreError::Allow => {
                            return Decision {
                                admitted: n,
                                retry_after_us: 0,
                            }
                        }
                        OnStoreError::Deny => {
                            return Decision {
                                admitted: 0,
                                retry_after_us: 1_000_000,
                            }
                        }
                        OnStoreError::Local => {}
                    }
                }
            }
        }
        self.local
            .decide(tenant, keys, rates, n, self.clock.now_us())
    }

    /// Decides `n` streamed frames at once: the first `admitted` may go on,
    /// the rest are refused.
    pub async fn frames(&self, s: &Subject, n: u32) -> Decision {
        self.decide(&s.tenant, &s.frame_keys, &s.frame_rates, n)
            .await
    }

    /// Decides one `POST /v1/detect`: a frame and a detect request.
    pub async fn detect(&self, s: &Subject) -> Result<(), GatewayError> {
        let d = self
            .decide(&s.tenant, &s.detect_keys, &s.detect_rates, 1)
            .await;
        if d.admitted == 1 {
            return Ok(());
        }
        // Say which limit: the frame buckets alone would have let it pass?
        let kind = if s.detect_keys.len() > s.frame_keys.len() {
            "its limit of detect requests per minute or frames per second"
        } else {
            "its limit of frames per second"
        };
        metrics::rate_limited(
            metrics::Transport::Http,
            if s.detect_keys.len() > s.frame_keys.len() {
                metrics::LimitKind::Detect
            } else {
                metrics::LimitKind::Frames
            },
            1,
        );
        Err(GatewayError::RateLimited {
            message: format!("tenant {:?} is over {kind}", s.tenant),
            retry_after: Duration::from_micros(d.retry_after_us),
        })
    }

    /// Takes a streaming-session slot, held until the returned guard drops.
    pub async fn open_session(
        &self,
        s: &Subject,
        transport: metrics::Transport,
    ) -> Result<SessionSlot, GatewayError> {
        if s.sessions.is_empty() {
            return Ok(SessionSlot(Slot::None));
        }
        let refused = |i: usize| {
            metrics::rate_limited(transport, metrics::LimitKind::Sessions, 1);
            let (name, max) = &s.sessions[i];
            let who = if name.contains(":rl:s:k:") {
                "this API key".to_string()
            } else {
                format!("tenant {:?}", s.tenant)
            };
            GatewayError::RateLimited {
                message: format!(
                    "{who} already has its maximum of {max} streaming sessions open; close one first"
                ),
                retry_after: Duration::from_secs(1),
            }
        };
        if let Some(r) = &self.redis {
            let mut b = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut b);
            let member = hex::encode(b);
            match r.open_session(&s.sessions, &member, self.session_ttl).await {
                // Counted here too: should Redis fail, the local fallback
                // starts from this gateway's real count.
                Ok(Ok(())) => self.sessions.hold(&s.sessions),
                Ok(Err(i)) => return Err(refused(i)),
                Err(e) => {
                    self.store_failed(&e);
                    // The script may have run before the store timed out:
                    // a session not opened takes its member out again.
                    let forget = || {
                        let (store, keys, m) = (r.clone(), s.sessions.clone(), member.clone());
                        tokio::spawn(async move {
                            let _ = store.close_session(&keys, &m).await;
                        });
                    };
                    match self.on_error {
                        OnStoreError::Allow => self.sessions.hold(&s.sessions),
                        OnStoreError::Deny => {
                            forget();
                            return Err(GatewayError::Overloaded(
                                "the rate-limit store is unavailable".into(),
                            ));
                        }
                        OnStoreError::Local => {
                            if let Err(i) = self.sessions.acquire(&s.sessions) {
                                forget();
                                return Err(refused(i));
                            }
                        }
                    }
                }
            }
            // Opened through Redis or admitted without it: either way the
            // heartbeat (re)registers the slot, so a session admitted while
            // the store was down counts across the cluster once it is back.
            return Ok(SessionSlot(self.redis_slot(r, &s.sessions, member)));
        }
        self.sessions.acquire(&s.sessions).map_err(refused)?;
        Ok(SessionSlot(Slot::Local {
            sessions: self.sessions.clone(),
            keys: s.sessions.clone(),
        }))
    }
}

impl RateLimiter {
    /// A slot kept in Redis as `member` (and held in this gateway's own
    /// count), renewed every third of the session TTL until it drops.
    fn redis_slot(&self, r: &redis::RedisLimits, keys: &[(String, u32)], member: String) -> Slot {
        let (store, beat_keys, ttl) = (r.clone(), keys.to_vec(), self.session_ttl);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    // The slot dropped (its sender with it).
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Err(e) = store.heartbeat(&beat_keys, &member, ttl).await {
                            tracing::debug!(error = %e, "session heartbeat failed");
                        }
                    }
                }
            }
            // Freed by the task that renews it, after any renewal under
            // way: a late heartbeat cannot re-add the member after this.
            // If it fails, the slot expires with its heartbeat.
            if let Err(e) = store.close_session(&beat_keys, &member).await {
                tracing::debug!(error = %e, "session slot not freed; it expires");
            }
        });
        Slot::Redis {
            keys: keys.to_vec(),
            stop,
            local: self.sessions.clone(),
        }
    }
}

/// A streaming session's place under `max_sessions`; freed on drop.
#[derive(Debug)]
pub struct SessionSlot(Slot);

#[derive(Debug)]
enum Slot {
    None,
    Local {
        sessions: Arc<local::LocalSessions>,
        keys: Vec<(String, u32)>,
    },
    Redis {
        keys: Vec<(String, u32)>,
        /// Dropped with the slot: its heartbeat task then frees it in Redis.
        stop: tokio::sync::oneshot::Sender<()>,
        /// The same slot in this gateway's own count.
        local: Arc<local::LocalSessions>,
    },
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.0, Slot::None) {
            Slot::None => {}
            Slot::Local { sessions, keys } => sessions.release(&keys),
            Slot::Redis { keys, stop, local } => {
                local.release(&keys);
                drop(stop);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct FakeClock(Mutex<u64>);
    impl Clock for FakeClock {
        fn now_us(&self) -> u64 {
            *self.0.lock().unwrap()
        }
    }

    fn principal(tenant: &str, key: &str, limits: PlanLimits) -> Principal {
        Principal {
            tenant: tenant.into(),
            key_id: key.into(),
            scopes: Scope::DEFAULT.to_vec(),
            limits: Arc::new(limits),
        }
    }

    fn limits(fps: f64, burst: u32) -> PlanLimits {
        PlanLimits {
            frames_per_sec: Some(fps),
            burst: Some(burst),
            detect_per_minute: Some(6),
            max_sessions: Some(2),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn tenant_and_key_limits_with_a_fake_clock() {
        let clock = Arc::new(FakeClock(Mutex::new(10_000_000)));
        let rl = RateLimiter::local(clock.clone());
        let tenant = limits(20.0, 10);
        // Key a inherits the tenant's limits: one bucket, the tenant's.
        let a = Subject::new(&tenant, &principal("t", "a", tenant.clone()));
        assert_eq!(a.frame_keys, ["fg:{t}:rl:f"]);
        // Key b has its own, stricter limit: both buckets.
        let b = Subject::new(&tenant, &principal("t", "b", limits(2.0, 1)));
        assert_eq!(b.frame_keys.len(), 2);
        assert_eq!(rl.frames(&b, 5).await.admitted, 1, "b's burst of 1");
        assert_eq!(
            rl.frames(&a, 20).await.admitted,
            9,
            "b used one of the tenant's 10"
        );
        let d = rl.frames(&a, 1).await;
        assert_eq!((d.admitted, d.retry_after_us), (0, 50_000));
        *clock.0.lock().unwrap() += 50_000;
        assert_eq!(rl.frames(&a, 3).await.admitted, 1);
        // Unlimited tenants make no decision at all.
        let free = Subject::new(
            &PlanLimits::default(),
            &principal("u", "k", PlanLimits::default()),
        );
        assert!(!free.limits_frames());
        assert_eq!(rl.frames(&free, 1000).await.admitted, 1000);
    }

    #[tokio::test]
    async fn detect_per_minute_and_retry_after() {
        let clock = Arc::new(FakeClock(Mutex::new(10_000_000)));
        let rl = RateLimiter::local(clock.clone());
        let tenant = limits(100.0, 100);
        let s = Subject::new(&tenant, &principal("t", "a", tenant.clone()));
        rl.detect(&s).await.unwrap();
        let Err(GatewayError::RateLimited { retry_after, .. }) = rl.detect(&s).await else {
            panic!("6/minute with a burst of 1: the second is refused")
        };
        assert_eq!(retry_after, Duration::from_secs(10));
        *clock.0.lock().unwrap() += 10_000_000;
        rl.detect(&s).await.unwrap();
    }

    #[tokio::test]
    async fn sessions_per_tenant_and_key() {
        let rl = RateLimiter::local(Arc::new(FakeClock::default()));
        let tenant = limits(1.0, 1);
        let a = Subject::new(&tenant, &principal("t", "a", tenant.clone()));
        let mut one = tenant.clone();
        one.max_sessions = Some(1);
        let b = Subject::new(&tenant, &principal("t", "b", one));
        let tr = metrics::Transport::Ws;
        let s1 = rl.open_session(&b, tr).await.unwrap();
        let err = rl.open_session(&b, tr).await.unwrap_err();
        assert!(err.to_string().contains("this API key"), "{err}");
        let _s2 = rl.open_session(&a, tr).await.unwrap();
        let err = rl.open_session(&a, tr).await.unwrap_err();
        assert!(err.to_string().contains("maximum of 2"), "{err}");
        assert_eq!(err.http_status(), 429);
        drop(s1);
        let _s3 = rl.open_session(&a, tr).await.unwrap();
    }
}
