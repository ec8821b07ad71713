//! The API key store: issued keys, and the tenants and plans an operator
//! manages at run time (the admin API, the CLI, self-service).
//!
//! A key reads `fg_<id>_<secret>`: `<id>` is 12 lowercase base32 characters
//! (60 random bits), a public handle used to look the key up, list it and
//! revoke it; `<secret>` is 48 hex digits (192 random bits). The key is shown
//! once, when it is created; the store keeps only the SHA-256 of the secret
//! (enough for a high-entropy secret: nothing to brute-force), and the
//! authenticator compares hashes in constant time.
//!
//! Two backends with one contract ([`KeyStore`]):
//!
//! * embedded — a `redb` file, `keys.redb` in `[storage].data_dir`. redb
//!   locks its file, so while a gateway runs, the CLI reaches the store
//!   through the admin API (`--admin-url`);
//! * Redis — shared by every gateway of a cluster (`[auth] store = "redis"`).
//!   Everything sits in one cluster slot (hash tag `{keys}`) under the prefix
//!   `fgauth:`, apart from every usage key (`fg:{tenant}:…`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `fgauth:{keys}:key:<id>` | string | the key record (JSON) |
//! | `fgauth:{keys}:keys` | set | every key id |
//! | `fgauth:{keys}:tenants` | hash | tenant → `TenantConfig` (JSON) |
//! | `fgauth:{keys}:plans` | hash | plan → `PlanLimits` (JSON) |
//!
//! Tenants and plans in the store override the configuration's entries of
//! the same name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Scope;
use crate::config::{PlanLimits, TenantConfig};

/// Characters of a key id (lowercase RFC 4648 base32).
const ID_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Length of a key id.
pub const ID_LEN: usize = 12;
/// Length of a key secret (hex digits).
pub const SECRET_LEN: usize = 48;

/// One issued key, as stored. The secret itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// Public id (the `<id>` of `fg_<id>_<secret>`).
    pub id: String,
    /// Tenant the key belongs to.
    pub tenant: String,
    /// A label for people ("ci", "camera-17").
    #[serde(default)]
    pub name: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Expiry, unix seconds; refused from then on.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Revocation time, unix seconds; refused from then on.
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Overrides of the tenant's limits for this key.
    #[serde(default)]
    pub limits: Option<PlanLimits>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// The key that minted this one (`POST /v1/keys`); revoking it revokes
    /// this one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl KeyRecord {
    /// Whether the key may be used at `now` (not revoked, not expired). A
    /// revocation counts from the moment it is stored, whatever its time
    /// says: that time comes from the revoking machine's clock, and a clock
    /// ahead of this one must not keep the key alive here.
    pub fn active_at(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// The record as shown to people and APIs: everything but the hash.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "scopes": self.scopes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "limits": self.limits,
            "parent": self.parent,
        })
    }
}

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Tenant.
    pub tenant: String,
    /// Label.
    pub name: String,
    /// Scopes (empty: [`Scope::DEFAULT`]).
    pub scopes: Vec<Scope>,
    /// Expiry, unix seconds.
    pub expires_at: Option<u64>,
    /// Overrides of the tenant's limits.
    pub limits: Option<PlanLimits>,
    /// The key minting it (self-service), whose revocation revokes it.
    pub parent: Option<String>,
}

/// A revocation: the key's record and the keys minted from it, directly or
/// through others, that were revoked with it.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The revoked key.
    pub record: KeyRecord,
    /// Ids of the keys revoked with it (still active until then).
    pub minted: Vec<String>,
}

/// A key just created: the record and the key itself (shown once).
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// What the store keeps.
    pub record: KeyRecord,
    /// The whole key, `fg_<id>_<secret>`.
    pub key: String,
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `fg_<id>_<secret>` into id and secret when it has that shape.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("fg_")?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    (id.bytes().all(|b| ID_ALPHABET.contains(&b))
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some((id, secret))
}

/// Whether `id` has the shape of a key id.
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b))
}

fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ID_ALPHABET[(b & 31) as usize] as char)
        .collect()
}

fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_LEN / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A key store failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The embedded file is held by another process (a running gateway).
    #[error("the key store {0} is in use by another process (a running gateway holds it); talk to that gateway's admin API instead (--admin-url, with FRAMEGATE_ADMIN_TOKEN)")]
    Locked(String),
    /// The store cannot be reached now.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something unexpected, or refused the request.
    #[error("key store error: {0}")]
    Failed(String),
}

impl From<redis::RedisError> for KeyStoreError {
    fn from(e: redis::RedisError) -> Self {
        KeyStoreError::Unavailable(e.to_string())
    }
}

impl From<KeyStoreError> for crate::error::GatewayError {
    fn from(e: KeyStoreError) -> Self {
        crate::error::GatewayError::NotReady(e.to_string())
    }
}

fn failed(e: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Failed(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<String, KeyStoreError> {
    serde_json::to_string(v).map_err(failed)
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, KeyStoreError> {
    serde_json::from_str(s).map_err(failed)
}

/// The configured key store. Cheap to clone.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// A redb file.
    Embedded(EmbeddedKeys),
    /// A Redis server.
    Redis(RedisKeys),
}

macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            KeyStore::Embedded(s) => s.$m($($a),*).await,
            KeyStore::Redis(s) => s.$m($($a),*).await,
        }
    };
}

impl KeyStore {
    /// Opens the store `[auth]` names.
    pub fn open(config: &crate::config::Config) -> Result<Self, KeyStoreError> {
        let a = &config.auth;
        match a.store.as_str() {
            "redis" => {
                let url = a
                    .redis_url
                    .clone()
                    .unwrap_or_else(|| config.metering.redis_url.clone());
                Ok(KeyStore::Redis(RedisKeys::connect(
                    &url,
                    Duration::from_millis(config.metering.store_timeout_ms),
                )?))
            }
            _ => Ok(KeyStore::Embedded(EmbeddedKeys::open(
                &config.storage.data_dir.join("keys.redb"),
            )?)),
        }
    }

    /// Creates a key for `new.tenant` and stores its record.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, KeyStoreError> {
        if new.tenant.is_empty() || new.tenant.contains(['{', '}', '\t', ':']) {
            return Err(KeyStoreError::Failed(
                "a tenant must be non-empty, without braces, tabs or colons".into(),
            ));
        }
        let (id, secret) = (new_id(), new_secret());
        let record = KeyRecord {
            id: id.clone(),
            tenant: new.tenant,
            name: new.name,
            scopes: if new.scopes.is_empty() {
                Scope::DEFAULT.to_vec()
            } else {
                let mut s = new.scopes;
                s.sort();
                s.dedup();
                s
            },
            created_at: now_secs(),
            expires_at: new.expires_at,
            revoked_at: None,
            limits: new.limits,
            secret_sha256: hash_secret(&secret),
            parent: new.parent,
        };
        self.put_key(&record).await?;
        Ok(CreatedKey {
            key: format!("fg_{id}_{secret}"),
            record,
        })
    }

    /// Stores (inserts or replaces) a key record.
    pub async fn put_key(&self, r: &KeyRecord) -> Result<(), KeyStoreError> {
        dispatch!(self.put_key(r))
    }

    /// The record of key `id`.
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        dispatch!(self.get_key(id))
    }

    /// Every key, or every key of `tenant`, by creation time.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut keys: Vec<KeyRecord> = dispatch!(self.all_keys())?
            .into_iter()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    /// Revokes key `id` (from now) and every active key minted from it,
    /// directly or through others (a stolen key cannot leave a child
    /// behind); `None` when there is no such key. Revoking twice keeps the
    /// first time.
    pub async fn revoke(&self, id: &str) -> Result<Option<Revocation>, KeyStoreError> {
        let Some(mut r) = self.get_key(id).await? else {
            return Ok(None);
        };
        let now = now_secs();
        if r.revoked_at.is_none() {
            r.revoked_at = Some(now);
            self.put_key(&r).await?;
        }
        // Children are in the same tenant (a key mints for its own). One
        // pass builds the tenant's parent → children index, so the walk is
        // linear in the tenant's keys however deep or wide the tree.
        let keys = self.list_keys(Some(&r.tenant)).await?;
        let mut children: std::collections::HashMap<&str, Vec<&KeyRecord>> =
            std::collections::HashMap::new();
        for k in &keys {
            if let Some(p) = k.parent.as_deref() {
                children.entry(p).or_default().push(k);
            }
        }
        let mut minted = Vec::new();
        let mut seen = std::collections::HashSet::from([r.id.as_str()]);
        let mut parents = vec![r.id.as_str()];
        while let Some(parent) = parents.pop() {
            for k in children.get(parent).into_iter().flatten() {
                // A record naming an ancestor as its child (only a damaged
                // store could) is not walked twice.
                if !seen.insert(k.id.as_str()) {
                    continue;
                }
                parents.push(k.id.as_str());
                if k.revoked_at.is_none() {
                    let mut child = (*k).clone();
                    child.revoked_at = Some(now);
                    self.put_key(&child).await?;
                    minted.push(k.id.clone());
                }
            }
        }
        Ok(Some(Revocation { record: r, minted }))
    }

    /// A tenant set at run time.
    pub async fn get_tenant(&self, name: &str) -> Result<Option<TenantConfig>, KeyStoreError> {
        dispatch!(self.get_entry("tenants", name))?
            .map(|s| from_json(&s))
            .transpose()
    }

    /// Sets a tenant.
    pub async fn put_tenant(&self, name: &str, t: &TenantConfig) -> Result<(), KeyStoreError> {
        dispatch!(self.put_entry("tenants", name, &to_json(t)?))
    }

    /// Every tenant set at run time.
    pub async fn list_tenants(
        &self,
    ) -> Result<std::collections::BTreeMap<String, TenantConfig>, KeyStoreError> {
        dispatch!(self.all_entries("tenants"))?
            .into_iter()
            .map(|(k, v)| Ok((k, from_json(&v)?)))
            .collect()
    }

    /// A plan set at run time.
    pub async fn get_plan(&self, name: &str) -> Result<Option<PlanLimits>, KeyStoreError> {
        dispatch!(self.get_entry("plans", name))?
            .map(|s| from_json(&s))
            .transpose()
    }

    /// Sets a plan.
    pub async fn put_plan(&self, name: &str, p: &PlanLimits) -> Result<(), KeyStoreError> {
        dispatch!(self.put_entry("plans", name, &to_json(p)?))
    }

    /// Every plan set at run time.
    pub async fn list_plans(
        &self,
    ) -> Result<std::collections::BTreeMap<String, PlanLimits>, KeyStoreError> {
        dispatch!(self.all_entries("plans"))?
            .into_iter()
            .map(|(k, v)| Ok((k, from_json(&v)?)))
            .collect()
    }
}

/// id → key record (JSON)
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("keys");
/// tenant → TenantConfig (JSON)
const TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");
/// plan → PlanLimits (JSON)
const PLANS: TableDefinition<&str, &str> = TableDefinition::new("plans");

fn table(kind: &str) -> TableDefinition<'static, &'static str, &'static str> {
    match kind {
        "tenants" => TENANTS,
        "plans" => PLANS,
        _ => KEYS,
    }
}

/// The redb-backed key store.
#[derive(Clone)]
pub struct EmbeddedKeys {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKeys").finish_non_exhaustive()
    }
}

impl EmbeddedKeys {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(KeyStoreError::Locked(path.display().to_string()))
            }
            Err(e) => {
                return Err(KeyStoreError::Failed(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            }
        };
        let txn = db.begin_write().map_err(failed)?;
        for t in [KEYS, TENANTS, PLANS] {
            txn.open_table(t).map_err(failed)?;
        }
        txn.commit().map_err(failed)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, KeyStoreError> + Send + 'static,
    ) -> Result<T, KeyStoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(failed)?
    }

    async fn put_key(&self, r: &KeyRecord) -> Result<(), KeyStoreError> {
        let (id, json) = (r.id.clone(), to_json(r)?);
        self.put_entry("keys", &id, &json).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        self.get_entry("keys", id)
            .await?
            .map(|s| from_json(&s))
            .transpose()
    }

    async fn all_keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        self.all_entries("keys")
            .await?
            .into_iter()
            .map(|(_, v)| from_json(&v))
            .collect()
    }

    async fn put_entry(&self, kind: &str, name: &str, json: &str) -> Result<(), KeyStoreError> {
        let (t, name, json) = (table(kind), name.to_string(), json.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(failed)?;
            txn.open_table(t)
                .map_err(failed)?
                .insert(name.as_str(), json.as_str())
                .map_err(failed)?;
            txn.commit().map_err(failed)
        })
        .await
    }

    async fn get_entry(&self, kind: &str, name: &str) -> Result<Option<String>, KeyStoreError> {
        let (t, name) = (table(kind), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(failed)?;
            let table = txn.open_table(t).map_err(failed)?;
            Ok(table
                .get(name.as_str())
                .map_err(failed)?
                .map(|v| v.value().to_string()))
        })
        .await
    }

    async fn all_entries(&self, kind: &str) -> Result<Vec<(String, String)>, KeyStoreError> {
        let t = table(kind);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(failed)?;
            let table = txn.open_table(t).map_err(failed)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(failed)? {
                let (k, v) = entry.map_err(failed)?;
                out.push((k.value().to_string(), v.value().to_string()));
            }
            Ok(out)
        })
        .await
    }
}

const REDIS_PREFIX: &str = "fgauth:{keys}";

/// The Redis-backed key store.
#[derive(Clone)]
pub struct RedisKeys {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeys").finish_non_exhaustive()
    }
}

impl RedisKeys {
    /// Connects lazily to `url` (like the usage store: the gateway starts
    /// while Redis is down; lookups fail until it is back).
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, KeyStoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| KeyStoreError::Failed(format!("bad Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(failed)?;
        Ok(Self { conn })
    }

    async fn put_key(&self, r: &KeyRecord) -> Result<(), KeyStoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(format!("{REDIS_PREFIX}:key:{}", r.id))
            .arg(to_json(r)?)
            .ignore()
            .cmd("SADD")
            .arg(format!("{REDIS_PREFIX}:keys"))
            .arg(&r.id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let mut conn = self.conn.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{REDIS_PREFIX}:key:{id}"))
            .query_async(&mut conn)
            .await?;
        v.map(|s| from_json(&s)).transpose()
    }

    async fn all_keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{REDIS_PREFIX}:keys"))
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in &ids {
            cmd.arg(format!("{REDIS_PREFIX}:key:{id}"));
        }
        let values: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
        values
            .into_iter()
            .flatten()
            .map(|s| from_json(&s))
            .collect()
    }

    async fn put_entry(&self, kind: &str, name: &str, json: &str) -> Result<(), KeyStoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(format!("{REDIS_PREFIX}:{kind}"))
            .arg(name)
            .arg(json)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn get_entry(&self, kind: &str, name: &str) -> Result<Option<String>, KeyStoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGET")
            .arg(format!("{REDIS_PREFIX}:{kind}"))
            .arg(name)
            .query_async(&mut conn)
            .await?)
    }

    async fn all_entries(&self, kind: &str) -> Result<Vec<(String, String)>, KeyStoreError> {
        let mut conn = self.conn.clone();
        let map: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{REDIS_PREFIX}:{kind}"))
            .query_async(&mut conn)
            .await?;
        Ok(map.into_iter().collect())
    }
}

/// Parses a duration like `30d`, `12h`, `15m`, `90s` (or plain seconds).
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'd') => (&s[..i], 86_400),
        (i, 'h') => (&s[..i], 3_600),
        (i, 'm') => (&s[..i], 60),
        (i, 's') => (&s[..i], 1),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses `stream,detect,...`.
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_value(serde_json::Value::String(p.to_ascii_lowercase())).map_err(
                |_| format!("unknown scope {p:?}; scopes are stream, detect, usage, admin"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_durations_too() {
        let id = new_id();
        let key = format!("fg_{id}_{}", new_secret());
        assert_eq!(parse_key(&key).unwrap().0, id);
        assert!(parse_key("fg_dev_0123456789abcdef0123456789abcdef").is_none());
        assert!(parse_key(&format!("fg_{id}_short")).is_none());
        assert!(parse_key(&format!("fg_{}_{}", "A".repeat(12), new_secret())).is_none());
        assert_eq!(parse_duration_secs("30d"), Some(30 * 86_400));
        assert_eq!(parse_duration_secs("2h"), Some(7200));
        assert_eq!(parse_duration_secs("45"), Some(45));
        assert_eq!(parse_duration_secs("x"), None);
        assert_eq!(
            parse_scopes("stream, detect").unwrap(),
            vec![Scope::Stream, Scope::Detect]
        );
        assert!(parse_scopes("stream,fly").is_err());
    }

    #[test]
    fn a_revocation_stamped_by_a_clock_ahead_still_counts() {
        let now = now_secs();
        let mut r = KeyRecord {
            id: new_id(),
            tenant: "acme".into(),
            name: String::new(),
            scopes: Vec::new(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            limits: None,
            secret_sha256: String::new(),
            parent: None,
        };
        assert!(r.active_at(now));
        // Revoked from a machine whose clock runs ten minutes ahead.
        r.revoked_at = Some(now + 600);
        assert!(!r.active_at(now));
        r.revoked_at = None;
        r.expires_at = Some(now + 1);
        assert!(r.active_at(now) && !r.active_at(now + 1));
    }
}
