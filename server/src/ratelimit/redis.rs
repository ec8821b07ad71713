//! Rate-limit state in Redis, shared by every gateway of a cluster.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `fg:{T}:rl:f` | string, PX | TAT (µs) of tenant T's frames bucket |
//! | `fg:{T}:rl:f:k:<key id>` | string, PX | TAT of one key's frames bucket (when the key has its own limit) |
//! | `fg:{T}:rl:d`, `fg:{T}:rl:d:k:<key id>` | string, PX | the same for `detect_per_minute` |
//! | `fg:{T}:rl:s`, `fg:{T}:rl:s:k:<key id>` | zset | open sessions, score = expiry (ms) |
//!
//! Every key of a tenant carries `{T}` as its hash tag, so one decision's
//! keys share a cluster slot and one script touches them all atomically.
//! Each decision is one `EVALSHA` (the client library loads the script on
//! `NOSCRIPT` and retries); the script reads the time from Redis (`TIME`),
//! so the gateways' clocks do not matter. A bucket's key expires (`PX`) when
//! its TAT passes — the moment it would be as good as new — so idle keys
//! cost Redis nothing.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::gcra::{Decision, Rate};

/// GCRA over several buckets at once, the Lua twin of `gcra::decide`.
/// KEYS: the buckets. ARGV[1]: units asked for; then per bucket its
/// emission interval and tolerance in µs. Returns `{admitted, retry_after_us}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local k = n
local base = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  base[i] = tat
  local e = tonumber(ARGV[2 * i])
  local tol = tonumber(ARGV[2 * i + 1])
  local room = math.floor((now + tol - tat) / e)
  if room < k then k = room end
end
if k < 0 then k = 0 end
local retry = 0
for i = 1, #KEYS do
  local e = tonumber(ARGV[2 * i])
  local tol = tonumber(ARGV[2 * i + 1])
  local tat = base[i] + k * e
  if k > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
  if k < n then
    local w = tat + e - now - tol
    if w > retry then retry = w end
  end
end
if k < n and retry < 1 then retry = 1 end
return {k, retry}
"#;

/// Takes a session slot in every zset, or none. KEYS: the zsets. ARGV[1]:
/// the session's member, ARGV[2]: its TTL in ms, then each zset's maximum.
/// Returns 0, or the 1-based index of the full zset.
const SESSION_OPEN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], ARGV[1])
     and redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[2 + i]) then
    return i
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 0
"#;

/// Renews a session's slots (the heartbeat). KEYS: the zsets. ARGV[1]: the
/// member, ARGV[2]: TTL in ms.
const SESSION_BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 0
"#;

/// The Redis store. Cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct RedisLimits {
    conn: ConnectionManager,
    gcra: std::sync::Arc<Script>,
    open: std::sync::Arc<Script>,
    beat: std::sync::Arc<Script>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits").finish_non_exhaustive()
    }
}

/// A store failure (unreachable, timed out, bad answer).
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct StoreError(pub String);

impl RedisLimits {
    /// Connects lazily to `url`; each decision is bounded by `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError(format!("bad Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(Self {
            conn,
            gcra: std::sync::Arc::new(Script::new(GCRA)),
            open: std::sync::Arc::new(Script::new(SESSION_OPEN)),
            beat: std::sync::Arc::new(Script::new(SESSION_BEAT)),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(e.to_string())),
            Err(_) => Err(StoreError(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// One atomic GCRA decision of `n` units over `keys`.
    pub async fn decide(
        &self,
        keys: &[String],
        rates: &[Rate],
        n: u32,
    ) -> Result<Decision, StoreError> {
        let mut inv = self.gcra.prepare_invoke();
        for k in keys {
            inv.key(k.as_str());
        }
        inv.arg(n);
        for r in rates {
            inv.arg(r.emission_us).arg(r.tolerance_us);
        }
        let mut conn = self.conn.clone();
        let (admitted, retry): (i64, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(Decision {
            admitted: admitted.clamp(0, i64::from(n)) as u32,
            retry_after_us: retry.max(0) as u64,
        })
    }

    /// Takes a slot for `member` in every zset of `keys` (with its maximum);
    /// `Ok(Err(i))`: `keys[i]` is full.
    pub async fn open_session(
        &self,
        keys: &[(String, u32)],
        member: &str,
        ttl: Duration,
    ) -> Result<Result<(), usize>, StoreError> {
        let mut inv = self.open.prepare_invoke();
        for (k, _) in keys {
            inv.key(k.as_str());
        }
        inv.arg(member).arg(ttl.as_millis() as u64);
        for (_, max) in keys {
            inv.arg(*max);
        }
        let mut conn = self.conn.clone();
        let full: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(if full == 0 {
            Ok(())
        } else {
            Err((full - 1) as usize)
        })
    }

    /// Renews `member`'s slots.
    pub async fn heartbeat(
        &self,
        keys: &[(String, u32)],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut inv = self.beat.prepare_invoke();
        for (k, _) in keys {
            inv.key(k.as_str());
        }
        inv.arg(member).arg(ttl.as_millis() as u64);
        let mut conn = self.conn.clone();
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Frees `member`'s slots.
    pub async fn close_session(
        &self,
        keys: &[(String, u32)],
        member: &str,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, _) in keys {
            pipe.zrem(k.as_str(), member).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }
}
