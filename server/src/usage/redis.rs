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
//! after a lost reply changes nothing. The scripts go in pipelines (see
//! [`TENANTS_PER_PIPELINE`]), several in flight at once: one round trip
//! per tenant made a batch of a few thousand tenants (after an outage, or a
//! busy minute) outlast the store timeout on a Redis a few milliseconds
//! away, and every retry again (the tenants already applied still cost
//! their round trip). A pipeline cut short by the timeout keeps what it
//! applied; the retry sends it again, and Redis skips those tenants.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{BillingState, FlushBatch, StoreError, UsageRow, APPLIED_ID_TTL_SECS};
use crate::metering::UsageDelta;

/// A pipeline of apply scripts holds at most this many tenants, and more
/// deltas than this only when one tenant has them.
pub const TENANTS_PER_PIPELINE: usize = 256;
const DELTAS_PER_PIPELINE: usize = 1024;
/// Pipelines of one batch in flight at once (on the one multiplexed
/// connection): the batch costs about one round trip, and Redis's own
/// time, however many pipelines it takes.
const PIPELINES_IN_FLIGHT: usize = 8;

/// `tenants` (each one tenant's deltas) cut into pipelines of at most
/// [`TENANTS_PER_PIPELINE`] tenants and about [`DELTAS_PER_PIPELINE`]
/// deltas.
fn pipelines<'a, 'b>(tenants: &'b [&'a [&'a UsageDelta]]) -> Vec<&'b [&'a [&'a UsageDelta]]> {
    let mut out = Vec::new();
    let (mut start, mut deltas) = (0, 0);
    for (i, part) in tenants.iter().enumerate() {
        if i > start
            && (i - start == TENANTS_PER_PIPELINE || deltas + part.len() > DELTAS_PER_PIPELINE)
        {
            out.push(&tenants[start..i]);
            (start, deltas) = (i, 0);
        }
        deltas += part.len();
    }
    if start < tenants.len() {
        out.push(&tenants[start..]);
    }
    out
}

/// KEYS: applied marker, windows zset, unbilled zset, then per delta its
/// usage hash and its period counter. ARGV: the marker's TTL, then per
/// delta window, field, frames, pixels. Every key is checked before the
/// first write: a script that fails half-way keeps what it wrote (Redis
/// has no rollback) while the marker stays unset, so each retry would
/// count that part again. A key it cannot count into is refused with the
/// error code `FGREFUSED`, before anything of the part is written.
const APPLY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local function refuse(why)
  return redis.error_reply('FGREFUSED ' .. why)
end
-- What INCRBY and HINCRBY take, with room for the sum.
local function integer(v, key)
  if v and v ~= '0' and not (string.match(v, '^%-?[1-9]%d*$') and #v <= 18) then
    return refuse(key .. ' holds ' .. string.sub(v, 1, 40) .. ', not a counter')
  end
end
local checked = {}
local function kind(key, want)
  if checked[key] then return nil end
  checked[key] = true
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return refuse('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
  if t == 'string' then
    return integer(redis.call('GET', key), key)
  end
end
local n = (#ARGV - 1) / 4
local e = kind(KEYS[2], 'zset') or kind(KEYS[3], 'zset')
if e then return e end
for i = 0, n - 1 do
  local hk = KEYS[4 + i * 2]
  local field = ARGV[3 + i * 4]
  e = integer(ARGV[4 + i * 4], 'frames') or integer(ARGV[5 + i * 4], 'pixels')
    or kind(hk, 'hash') or kind(KEYS[5 + i * 2], 'string')
    or integer(redis.call('HGET', hk, 'f:' .. field), hk)
    or integer(redis.call('HGET', hk, 'p:' .. field), hk)
  if e then return e end
end
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

/// Windows whose hashes one pipeline of a usage query reads (each hash
/// holds a row per model and key of its window).
const WINDOWS_PER_READ: usize = 512;

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
        use futures_util::StreamExt;
        let mut deltas: Vec<&UsageDelta> = batch.deltas.iter().collect();
        deltas.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let tenants: Vec<&[&UsageDelta]> = deltas.chunk_by(|a, b| a.tenant == b.tenant).collect();
        let sends: Vec<_> = pipelines(&tenants)
            .into_iter()
            .map(|group| self.apply_pipeline(&batch.id, group))
            .collect();
        let mut replies = futures_util::stream::iter(sends).buffer_unordered(PIPELINES_IN_FLIGHT);
        let mut refused = Vec::new();
        while let Some(reply) = replies.next().await {
            // A pipeline that did not go through fails the batch (retried
            // whole); parts refused one by one are named.
            refused.extend(reply?);
        }
        if refused.is_empty() {
            Ok(())
        } else {
            refused.sort();
            Err(StoreError::Refused(refused))
        }
    }

    /// Applies the parts of flush `id` in `group` (one tenant each) in one
    /// pipeline; the tenants whose part the store refused, with its error.
    async fn apply_pipeline(
        &self,
        id: &str,
        group: &[&[&UsageDelta]],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let invocations: Vec<_> = group
            .iter()
            .map(|part| self.apply_invocation(id, part))
            .collect();
        // Loading first (cheap, idempotent) saves a NOSCRIPT round trip
        // after a Redis restart; a pipeline does not retry one.
        let mut pipe = redis::pipe();
        pipe.load_script(&self.apply).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        // Each tenant's reply on its own, so an error names its tenant (a
        // key of the wrong type, say, fails that tenant's part on every
        // retry, and the operator needs to know whose keys to look at).
        pipe.ignore_errors();
        let mut conn = self.conn.clone();
        let replies: Vec<redis::RedisResult<i64>> = pipe.query_async(&mut conn).await?;
        // Only the script's own refusals are a tenant's: anything else (a
        // replica, out of memory, loading, a moved slot) is the store's,
        // and the batch is retried whole.
        let mut refused = Vec::new();
        for (part, reply) in group.iter().zip(replies) {
            match reply {
                Ok(_) => {}
                Err(e) if e.code() == Some("FGREFUSED") => {
                    refused.push((part[0].tenant.clone(), format!("flush {id}: {e}")));
                }
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
        Ok(refused)
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

    /// One pipeline of GETs (the keys are in as many cluster slots as
    /// tenants, so not one MGET).
    pub(super) async fn period_totals(
        &self,
        tenants: &[String],
        period: u32,
    ) -> Result<Vec<u64>, StoreError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for tenant in tenants {
            pipe.cmd("GET")
                .arg(format!("{}:period:{period}", tag(tenant)));
        }
        let mut conn = self.conn.clone();
        let totals: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        Ok(totals.into_iter().map(|t| t.unwrap_or(0)).collect())
    }

    /// Folds the rows of `tenant` with `from <= window_start < to` into
    /// `acc`, reading the windows' hashes [`WINDOWS_PER_READ`] windows a
    /// pipeline: a year of one-minute windows is half a million hashes,
    /// which one reply would hold in memory at once (their starts, 8 bytes
    /// each, still come in one reply).
    pub(super) async fn fold_rows<A>(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        mut acc: A,
        f: fn(&mut A, UsageRow),
    ) -> Result<A, StoreError> {
        let t = tag(tenant);
        let mut conn = self.conn.clone();
        let windows: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{t}:windows"))
            .arg(from)
            .arg(format!("({to}"))
            .query_async(&mut conn)
            .await?;
        for chunk in windows.chunks(WINDOWS_PER_READ) {
            let mut pipe = redis::pipe();
            for w in chunk {
                pipe.cmd("HGETALL").arg(format!("{t}:u:{w}"));
            }
            let hashes: Vec<std::collections::HashMap<String, u64>> =
                pipe.query_async(&mut conn).await?;
            for (w, fields) in chunk.iter().zip(hashes) {
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
                    f(
                        &mut acc,
                        UsageRow {
                            window_start: *w,
                            model: model.to_string(),
                            key_id: key_id.to_string(),
                            frames,
                            pixels,
                        },
                    );
                }
            }
        }
        Ok(acc)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(tenants: &[usize]) -> Vec<Vec<usize>> {
        let delta = UsageDelta {
            tenant: "t".into(),
            key_id: "k".into(),
            model: "m".into(),
            window_start: 0,
            frames: 1,
            pixels: 1,
        };
        let all: Vec<&UsageDelta> = vec![&delta; tenants.iter().sum()];
        let mut parts = Vec::new();
        let mut at = 0;
        for &n in tenants {
            parts.push(&all[at..at + n]);
            at += n;
        }
        pipelines(&parts)
            .iter()
            .map(|p| p.iter().map(|t| t.len()).collect())
            .collect()
    }

    #[test]
    fn pipelines_are_bounded_by_tenants_and_by_deltas() {
        let groups = sizes(&[1; 600]);
        let counts: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(counts, [256, 256, 88]);
        // A tenant with more deltas than a pipeline holds goes alone.
        assert_eq!(sizes(&[2000, 1, 1]), [vec![2000], vec![1, 1]]);
        assert_eq!(sizes(&[1, 2000, 1]), [vec![1], vec![2000], vec![1]]);
        assert_eq!(sizes(&[600, 600, 424]), [vec![600], vec![600, 424]]);
        assert!(sizes(&[]).is_empty());
    }
}
