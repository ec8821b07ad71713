//! The Redis usage store, shared by every gateway of a cluster.
//!
//! Key layout (every key of a tenant carries `{tenant}` as its hash tag, so
//! one tenant's script touches one cluster slot):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `fg:{T}:u:<window>` | hash | `f:<model>\t<key_id>` frames, `p:<model>\t<key_id>` pixels |
//! | `fg:{T}:windows` | zset | windows with usage (score = window start) |
//! | `fg:{T}:unbilled` | zset | windows not yet fully reported |
//! | `fg:{T}:period:<YYYYMM>` | string | frames in the billing period |
//! | `fg:{T}:applied:<flush id>` | string, TTL 7 d | the flush was applied |
//! | `fg:{T}:billing` | hash | `<meter>\t<window>` → `reported:pending_to` |
//! | `fg:billing:lease` | string, TTL | the reporter lease holder |
//!
//! A batch is split by tenant and each part applied by one Lua script that
//! checks and sets the applied-id marker in the same atomic step, so a retry
//! after a lost reply changes nothing. The scripts go in pipelines of
//! [`TENANTS_PER_ROUND_TRIP`]: one round trip per tenant made a batch of a
//! few thousand tenants (after an outage, or a busy minute) outlast the
//! store timeout on a Redis a millisecond away, and every retry again.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{BillingState, FlushBatch, StoreError, UsageRow, APPLIED_ID_TTL_SECS};
use crate::metering::UsageDelta;

/// Tenants' apply scripts sent in one pipeline (one round trip). Each
/// script commits on its own with its applied-id marker, so a pipeline cut
/// short by the timeout keeps what it applied and the retry skips it.
pub const TENANTS_PER_ROUND_TRIP: usize = 256;

const APPLY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = (#ARGV - 1) / 4
for i = 0, n - 1 do
  local w = ARGV[2 + i * 4]
  local field = ARGV[3 + i * 4]
  local hk = KEYS[4 + i * 2]
  local pk = KEYS[5 + i * 2]
  redis.call('HINCRBY', hk, 'f:' .. field, ARGV[4 + i * 4])
  redis.call('HINCRBY', hk, 'p:' .. field, ARGV[5 + i * 4])
  redis.call('ZADD', KEYS[2], w, w)
  redis.call('ZADD', KEYS[3], w, w)
  redis.call('INCRBY', pk, ARGV[4 + i * 4])
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"#;

/// KEYS: billing hash, usage hash of the window, unbilled zset.
/// ARGV: field, expected, next, window, next_reported, next_has_pending.
const SWAP_BILLING: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '0:0' end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] == '0' then
  local total = 0
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'f:' then total = total + tonumber(all[i + 1]) end
  end
  if total == tonumber(ARGV[5]) then redis.call('ZREM', KEYS[3], ARGV[4]) end
end
return 1
"#;

const RENEW_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The key of the reporter lease.
pub const LEASE_KEY: &str = "fg:billing:lease";

/// The Redis-backed store. Cheap to clone (one multiplexed connection,
/// reconnected by the connection manager).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    apply: std::sync::Arc<Script>,
    swap: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
    release: std::sync::Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn tag(tenant: &str) -> String {
    // Braces would end the hash tag early; tenants are validated not to have them.
    format!("fg:{{{tenant}}}")
}

impl RedisStore {
    /// Connects lazily to `url` (`redis://host:port/db`): the gateway starts
    /// while Redis is down and the flusher retries until it is back.
    /// `timeout` bounds each command.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Failed(format!("bad Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(Self {
            conn,
            apply: std::sync::Arc::new(Script::new(APPLY)),
            swap: std::sync::Arc::new(Script::new(SWAP_BILLING)),
            renew: std::sync::Arc::new(Script::new(RENEW_LEASE)),
            release: std::sync::Arc::new(Script::new(RELEASE_LEASE)),
        })
    }

    pub(super) async fn apply(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        let mut deltas: Vec<&UsageDelta> = batch.deltas.iter().collect();
        deltas.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let tenants: Vec<&[&UsageDelta]> = deltas.chunk_by(|a, b| a.tenant == b.tenant).collect();
        let mut conn = self.conn.clone();
        for group in tenants.chunks(TENANTS_PER_ROUND_TRIP) {
            let invocations: Vec<_> = group
                .iter()
                .map(|part| self.apply_invocation(&batch.id, part))
                .collect();
            // Loading first (cheap, idempotent) saves a NOSCRIPT round
            // trip after a Redis restart; a pipeline does not retry one.
            let mut pipe = redis::pipe();
            pipe.load_script(&self.apply).ignore();
            for inv in &invocations {
                pipe.invoke_script(inv).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    /// One tenant's part of flush `id` (`part`: its deltas, at least one).
    fn apply_invocation<'a>(
        &'a self,
        id: &str,
        part: &[&UsageDelta],
    ) -> redis::ScriptInvocation<'a> {
        let t = tag(&part[0].tenant);
        let mut inv = self.apply.prepare_invoke();
        inv.key(format!("{t}:applied:{id}"))
            .key(format!("{t}:windows"))
            .key(format!("{t}:unbilled"))
            .arg(APPLIED_ID_TTL_SECS);
        for d in part {
            inv.key(format!("{t}:u:{}", d.window_start))
                .key(format!(
                    "{t}:period:{}",
                    crate::metering::period_of(d.window_start)
                ))
                .arg(d.window_start)
                .arg(format!("{}\t{}", d.model, d.key_id))
                .arg(d.frames)
                .arg(d.pixels);
        }
        inv
    }

    pub(super) async fn period_total(&self, tenant: &str, period: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:period:{period}", tag(tenant)))
            .query_async(&mut conn)
            .await?;
        Ok(v.unwrap_or(0))
    }

    pub(super) async fn rows(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let t = tag(tenant);
        let mut conn = self.conn.clone();
        let windows: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{t}:windows"))
            .arg(from)
            .arg(format!("({to}"))
            .query_async(&mut conn)
            .await?;
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for w in &windows {
            pipe.cmd("HGETALL").arg(format!("{t}:u:{w}"));
        }
        let hashes: Vec<std::collections::HashMap<String, u64>> =
            pipe.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (w, fields) in windows.iter().zip(hashes) {
            let mut rows: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            for (field, v) in fields {
                if let Some(series) = field.strip_prefix("f:") {
                    rows.entry(series.to_string()).or_default().0 = v;
                } else if let Some(series) = field.strip_prefix("p:") {
                    rows.entry(series.to_string()).or_default().1 = v;
                }
            }
            for (series, (frames, pixels)) in rows {
                let (model, key_id) = series.split_once('\t').unwrap_or((&series, ""));
                out.push(UsageRow {
                    window_start: *w,
                    model: model.to_string(),
                    key_id: key_id.to_string(),
                    frames,
                    pixels,
                });
            }
        }
        Ok(out)
    }

    pub(super) async fn unbilled(&self, tenant: &str, before: u64) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}:unbilled", tag(tenant)))
            .arg(0)
            .arg(format!("({before}"))
            .query_async(&mut conn)
            .await?)
    }

    pub(super) async fn billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
    ) -> Result<BillingState, StoreError> {
        let mut conn = self.conn.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(format!("{}:billing", tag(tenant)))
            .arg(format!("{meter}\t{window}"))
            .query_async(&mut conn)
            .await?;
        Ok(v.map_or_else(BillingState::default, |s| BillingState::decode(&s)))
    }

    pub(super) async fn swap_billing_state(
        &self,
        tenant: &str,
        meter: &str,
        window: u64,
        expected: BillingState,
        next: BillingState,
    ) -> Result<bool, StoreError> {
        let t = tag(tenant);
        let mut conn = self.conn.clone();
        let r: i64 = self
            .swap
            .key(format!("{t}:billing"))
            .key(format!("{t}:u:{window}"))
            .key(format!("{t}:unbilled"))
            .arg(format!("{meter}\t{window}"))
            .arg(expected.encode())
            .arg(next.encode())
            .arg(window)
            .arg(next.reported)
            .arg(if next.pending_to.is_some() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(r == 1)
    }

    pub(super) async fn lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let r: i64 = self
            .renew
            .key(LEASE_KEY)
            .arg(holder)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(r == 1)
    }

    pub(super) async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(LEASE_KEY)
            .arg(holder)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
