//! Authentication: who is calling.
//!
//! Keys are kept only as SHA-256 hashes and compared in constant time. Three
//! kinds of credential:
//!
//! * static keys from `[[auth.keys]]`; with none configured, one development
//!   key, taken from `FRAMEGATE_DEV_KEY` or generated and printed once;
//! * issued keys `fg_<id>_<secret>` from the key store ([`keys`]), looked up
//!   by id through an in-process cache with a TTL (`[auth] cache_ttl_secs`):
//!   a key revoked on any gateway is refused everywhere within that TTL;
//! * JWTs, handed to the [`TokenVerifier`] when one is set (OIDC).
//!
//! Every request and session is authenticated before any image work, and
//! each entry point checks the scope it needs ([`require_scope`]).

pub mod keys;
pub mod oidc;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, PlanLimits, TenantConfig};
use crate::error::GatewayError;
use keys::{KeyRecord, KeyStore};

/// Environment variable that supplies the development key.
pub const DEV_KEY_ENV: &str = "FRAMEGATE_DEV_KEY";

/// The tenant of the development key.
pub const DEV_TENANT: &str = "dev";

/// What a credential may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Open streaming sessions (WebSocket, QUIC).
    Stream,
    /// One-shot `POST /v1/detect`.
    Detect,
    /// Read the tenant's own usage (and manage its own keys where the plan allows).
    Usage,
    /// The admin API.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Stream, Scope::Detect, Scope::Usage, Scope::Admin];
    /// The scopes a key gets when none are given: everything but admin.
    pub const DEFAULT: [Scope; 3] = [Scope::Stream, Scope::Detect, Scope::Usage];
}

/// Who a valid credential belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The tenant.
    pub tenant: String,
    /// The key's id for usage records and rate limits (a public id, never
    /// the secret): for configured keys the first 12 hex digits of its SHA-256.
    pub key_id: String,
    /// What the credential may do.
    pub scopes: Vec<Scope>,
    /// Effective limits: the tenant's plan, its overrides, the key's overrides.
    pub limits: std::sync::Arc<crate::config::PlanLimits>,
}

impl Principal {
    /// Whether the credential carries `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// What a verified bearer token (an OIDC JWT) says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The tenant, from the issuer's configured tenant claim.
    pub tenant: String,
    /// The token's subject (`sub`), used as the key id for usage and limits
    /// (prefixed by the issuer's configured short name, never the token).
    pub subject: String,
    /// Scopes granted (from the token's `scope` claim, mapped; default
    /// [`Scope::DEFAULT`]).
    pub scopes: Vec<Scope>,
}

/// Verifies bearer tokens that are not API keys (OIDC JWTs, `auth::oidc`).
/// Async because an unknown signing key means fetching the issuer's JWKS.
pub trait TokenVerifier: Send + Sync + std::fmt::Debug {
    /// Checks `token`; `Err(Unauthorized)` for anything not valid.
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TokenIdentity, GatewayError>> + Send + 'a>,
    >;
}

/// Whether a credential has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(credential: &str) -> bool {
    let parts: Vec<&str> = credential.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Where the development key came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevKey {
    /// Keys come from the configuration; no dev key.
    None,
    /// Taken from `FRAMEGATE_DEV_KEY`.
    FromEnv,
    /// Generated now; this is the only time it is shown.
    Generated(String),
}

struct StaticKey {
    hash: [u8; 32],
    tenant: String,
    scopes: Vec<Scope>,
}

/// Most entries each lookup cache holds (keys, tenants, plans); past it the
/// expired ones go, then everything (a flood of made-up ids cannot grow it).
const MAX_CACHED: usize = 100_000;

/// Store lookups in flight at once; more callers with uncached ids wait, so
/// unknown ids cannot turn into an unbounded load on the store.
const MAX_LOOKUPS: usize = 64;

/// A TTL cache of store answers, negative ones included.
///
/// Its generation counts what was forgotten: a lookup notes it before asking
/// the store and caches the answer only if nothing was forgotten meanwhile,
/// so an answer read before a revocation here cannot be cached after it.
struct TtlCache<V> {
    entries: std::collections::HashMap<String, (Instant, V)>,
    generation: u64,
}

impl<V: Clone> TtlCache<V> {
    fn new() -> Self {
        Self {
            entries: Default::default(),
            generation: 0,
        }
    }

    /// Forgets `k`.
    fn forget(&mut self, k: &str) {
        self.entries.remove(k);
        self.generation += 1;
    }

    /// Forgets everything.
    fn forget_all(&mut self) {
        self.entries.clear();
        self.generation += 1;
    }

    /// Caches `v`, read from the store after the cache was at `generation`,
    /// unless something was forgotten since (the answer may be stale).
    fn put_read_at(&mut self, k: &str, v: V, ttl: Duration, generation: u64) {
        if generation == self.generation {
            self.put(k, v, ttl);
        }
    }

    fn get(&self, k: &str, ttl: Duration) -> Option<V> {
        self.entries
            .get(k)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, k: &str, v: V, ttl: Duration) {
        if self.entries.len() >= MAX_CACHED {
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
            }
        }
        self.entries.insert(k.to_string(), (Instant::now(), v));
    }
}

struct Caches {
    keys: TtlCache<Option<Arc<KeyRecord>>>,
    tenants: TtlCache<Option<TenantConfig>>,
    plans: TtlCache<Option<PlanLimits>>,
}

/// Checks credentials: static keys from the configuration (and the
/// development key), issued keys from the key store (through a TTL cache),
/// and JWTs through the optional [`TokenVerifier`].
pub struct Authenticator {
    static_keys: Vec<StaticKey>,
    store: Option<KeyStore>,
    plans: BTreeMap<String, PlanLimits>,
    tenants: BTreeMap<String, TenantConfig>,
    ttl: Duration,
    caches: Mutex<Caches>,
    lookups: tokio::sync::Semaphore,
    verifier: Option<Arc<dyn TokenVerifier>>,
    /// Tests: holds a key lookup between the store's answer and caching it.
    #[cfg(test)]
    pause_after_lookup: Option<Arc<LookupPause>>,
}

/// Where a paused lookup waits (tests).
#[cfg(test)]
#[derive(Default)]
struct LookupPause {
    reached: tokio::sync::Notify,
    resume: tokio::sync::Notify,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_keys", &self.static_keys.len())
            .field("store", &self.store)
            .field("ttl", &self.ttl)
            .field("verifier", &self.verifier)
            .finish()
    }
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random development key: `fg_dev_` and 32 hex digits.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("fg_dev_{}", hex::encode(bytes))
}

impl Authenticator {
    /// Builds the authenticator from the configuration and the key store;
    /// with no static keys configured it also takes the development key:
    /// `dev_key_env` (the value of `FRAMEGATE_DEV_KEY`), or a new one unless
    /// OIDC issuers are configured (a gateway whose callers sign in through
    /// an identity provider gets no key nobody asked for).
    pub fn from_config(
        config: &Config,
        store: Option<KeyStore>,
        dev_key_env: Option<String>,
    ) -> (Self, DevKey) {
        let mut auth = Self {
            static_keys: Vec::new(),
            store,
            plans: config.plans.clone(),
            tenants: config.tenants.clone(),
            ttl: Duration::from_secs(config.auth.cache_ttl_secs),
            caches: Mutex::new(Caches {
                keys: TtlCache::new(),
                tenants: TtlCache::new(),
                plans: TtlCache::new(),
            }),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            verifier: None,
            #[cfg(test)]
            pause_after_lookup: None,
        };
        if !config.auth.keys.is_empty() {
            auth.static_keys = config
                .auth
                .keys
                .iter()
                .map(|k| {
                    let mut hash = [0u8; 32];
                    // Validated at start-up: 64 hex digits.
                    if let Ok(bytes) = hex::decode(&k.sha256) {
                        if bytes.len() == 32 {
                            hash.copy_from_slice(&bytes);
                        }
                    }
                    StaticKey {
                        hash,
                        tenant: k.tenant.clone(),
                        scopes: k.scopes.clone(),
                    }
                })
                .collect();
            return (auth, DevKey::None);
        }
        let (key, origin) = match dev_key_env.filter(|k| !k.is_empty()) {
            Some(k) => (k, DevKey::FromEnv),
            None if !config.auth.oidc.is_empty() => return (auth, DevKey::None),
            None => {
                let k = generate_key();
                (k.clone(), DevKey::Generated(k))
            }
        };
        auth.static_keys.push(StaticKey {
            hash: hash_key(&key),
            tenant: DEV_TENANT.to_string(),
            scopes: Scope::DEFAULT.to_vec(),
        });
        (auth, origin)
    }

    /// An authenticator that knows exactly one key (no store).
    pub fn single(key: &str, tenant: &str) -> Self {
        let (mut auth, _) = Self::from_config(&Config::default(), None, Some(key.to_string()));
        auth.static_keys[0].tenant = tenant.to_string();
        auth
    }

    /// Hands JWT-shaped credentials to `verifier` (OIDC).
    pub fn set_token_verifier(&mut self, verifier: Arc<dyn TokenVerifier>) {
        self.verifier = Some(verifier);
    }

    /// The key store, when there is one.
    pub fn store(&self) -> Option<&KeyStore> {
        self.store.as_ref()
    }

    /// How long a cached lookup stands: the revocation bound.
    pub fn cache_ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets what this process cached about key `id` (after revoking it
    /// here, so this gateway refuses it at once).
    pub fn forget_key(&self, id: &str) {
        self.lock().keys.forget(id);
    }

    /// Forgets cached tenants and plans (after one was changed here).
    pub fn forget_tenancy(&self) {
        let mut c = self.lock();
        c.tenants.forget_all();
        c.plans.forget_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a credential. Static keys are all compared, in constant time,
    /// so the answer's timing says nothing about which key came close; an
    /// issued key is looked up by its public id and its secret's hash
    /// compared in constant time. Expired and revoked keys are refused like
    /// unknown ones.
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, GatewayError> {
        if credential.is_empty() {
            return Err(GatewayError::Unauthorized);
        }
        let hash = hash_key(credential);
        let mut found: Option<&StaticKey> = None;
        for entry in &self.static_keys {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        if let Some(e) = found {
            return Ok(Principal {
                tenant: e.tenant.clone(),
                key_id: hex::encode(&e.hash[..6]),
                scopes: e.scopes.clone(),
                limits: Arc::new(self.tenant_limits(&e.tenant).await?),
            });
        }
        if let Some((id, secret)) = keys::parse_key(credential) {
            return self.authenticate_issued(id, secret).await;
        }
        if looks_like_jwt(credential) {
            if let Some(v) = &self.verifier {
                let identity = v.verify(credential).await?;
                let limits = self.tenant_limits(&identity.tenant).await?;
                return Ok(Principal {
                    tenant: identity.tenant,
                    key_id: identity.subject,
                    scopes: identity.scopes,
                    limits: Arc::new(limits),
                });
            }
        }
        Err(GatewayError::Unauthorized)
    }

    async fn authenticate_issued(&self, id: &str, secret: &str) -> Result<Principal, GatewayError> {
        let Some(record) = self.key_record(id).await? else {
            return Err(GatewayError::Unauthorized);
        };
        let mut want = [0u8; 32];
        if hex::decode_to_slice(&record.secret_sha256, &mut want).is_err() {
            return Err(GatewayError::Unauthorized);
        }
        let given = hash_key(secret);
        if !bool::from(want.ct_eq(&given)) || !record.active_at(keys::now_secs()) {
            return Err(GatewayError::Unauthorized);
        }
        let mut limits = self.tenant_limits(&record.tenant).await?;
        if let Some(over) = &record.limits {
            // The budget is the tenant's (one cap per tenant and month): a
            // key's own figure (refused at creation since; older keys may
            // hold one) never changes it, or each key would swap the cap in
            // or out for every key of the tenant.
            let budget = limits.budget_frames;
            limits = limits.overlay(over);
            limits.budget_frames = budget;
        }
        Ok(Principal {
            tenant: record.tenant.clone(),
            key_id: record.id.clone(),
            scopes: record.scopes.clone(),
            limits: Arc::new(limits),
        })
    }

    /// Key `id` from the cache, or the store (one lookup per id per TTL,
    /// unknown ids included; at most [`MAX_LOOKUPS`] at once).
    async fn key_record(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        if let Some(v) = self.lock().keys.get(id, self.ttl) {
            return Ok(v);
        }
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|_| GatewayError::Internal("lookup limiter closed".into()))?;
        // Another caller may have looked it up while this one waited.
        let generation = {
            let c = self.lock();
            if let Some(v) = c.keys.get(id, self.ttl) {
                return Ok(v);
            }
            c.keys.generation
        };
        let v = match store.get_key(id).await {
            Ok(v) => v.map(Arc::new),
            Err(e) => {
                crate::metrics::key_lookup("error");
                return Err(e.into());
            }
        };
        crate::metrics::key_lookup(if v.is_some() { "found" } else { "unknown" });
        #[cfg(test)]
        if let Some(pause) = &self.pause_after_lookup {
            pause.reached.notify_one();
            pause.resume.notified().await;
        }
        self.lock()
            .keys
            .put_read_at(id, v.clone(), self.ttl, generation);
        Ok(v)
    }

    /// A tenant's settings: the store's entry, else the configuration's.
    pub async fn tenant(&self, tenant: &str) -> Result<Option<TenantConfig>, GatewayError> {
        if let Some(store) = &self.store {
            let (cached, generation) = {
                let c = self.lock();
                (c.tenants.get(tenant, self.ttl), c.tenants.generation)
            };
            let v = match cached {
                Some(v) => v,
                None => match store.get_tenant(tenant).await {
                    Ok(v) => {
                        self.lock()
                            .tenants
                            .put_read_at(tenant, v.clone(), self.ttl, generation);
                        v
                    }
                    Err(e) => {
                        // Limits degrade to the configuration's rather than
                        // refusing every caller while the store is away.
                        tracing::warn!(error = %e, "key store unavailable; using the configured tenant");
                        None
                    }
                },
            };
            if v.is_some() {
                return Ok(v);
            }
        }
        Ok(self.tenants.get(tenant).cloned())
    }

    /// A plan: the store's entry, else the configuration's.
    pub async fn plan(&self, name: &str) -> Result<Option<PlanLimits>, GatewayError> {
        if let Some(store) = &self.store {
            let (cached, generation) = {
                let c = self.lock();
                (c.plans.get(name, self.ttl), c.plans.generation)
            };
            let v = match cached {
                Some(v) => v,
                None => match store.get_plan(name).await {
                    Ok(v) => {
                        self.lock()
                            .plans
                            .put_read_at(name, v.clone(), self.ttl, generation);
                        v
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "key store unavailable; using the configured plan");
                        None
                    }
                },
            };
            if v.is_some() {
                return Ok(v);
            }
        }
        Ok(self.plans.get(name).cloned())
    }

    /// A tenant's effective limits: its plan (`default` when it names none)
    /// overlaid with its own overrides; store entries win over the
    /// configuration's.
    pub async fn tenant_limits(&self, tenant: &str) -> Result<PlanLimits, GatewayError> {
        let t = self.tenant(tenant).await?;
        let plan_name = t
            .as_ref()
            .and_then(|t| t.plan.as_deref())
            .unwrap_or(crate::config::tenancy::DEFAULT_PLAN);
        let base = self.plan(plan_name).await?.unwrap_or_default();
        Ok(match t {
            Some(t) => base.overlay(&t.limits),
            None => base,
        })
    }

    /// Checks an `Authorization` header value (`Bearer KEY`).
    pub async fn authenticate_header(
        &self,
        header: Option<&str>,
    ) -> Result<Principal, GatewayError> {
        let key = bearer_token(header).ok_or(GatewayError::Unauthorized)?;
        self.authenticate(key).await
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// Refuses `principal` unless it carries `scope`.
pub fn require_scope(principal: &Principal, scope: Scope) -> Result<(), GatewayError> {
    if principal.has_scope(scope) {
        Ok(())
    } else {
        let name = serde_json::to_value(scope)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Err(GatewayError::Forbidden(format!(
            "this key lacks the {name:?} scope"
        )))
    }
}

/// Refuses `model` unless the principal's plan allows it.
pub fn require_model(principal: &Principal, model: &str) -> Result<(), GatewayError> {
    if principal.limits.allows_model(model) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(format!(
            "model {model:?} is not in tenant {:?}'s plan",
            principal.tenant
        )))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    /// An embedded key store in `dir`.
    fn embedded_store(dir: &tempfile::TempDir) -> KeyStore {
        KeyStore::Embedded(keys::EmbeddedKeys::open(&dir.path().join("k.redb")).unwrap())
    }

    #[tokio::test]
    async fn dev_key_from_env_is_accepted_and_others_refused() {
        let (auth, origin) =
            Authenticator::from_config(&Config::default(), None, Some("k1".into()));
        assert_eq!(origin, DevKey::FromEnv);
        let p = auth.authenticate("k1").await.unwrap();
        assert_eq!(p.tenant, DEV_TENANT);
        assert_eq!(p.scopes, Scope::DEFAULT.to_vec());
        assert!(auth.authenticate("k2").await.is_err());
        assert!(auth.authenticate("").await.is_err());
        assert!(auth.authenticate_header(Some("Bearer k1")).await.is_ok());
        assert!(auth.authenticate_header(Some("Basic k1")).await.is_err());
        assert!(auth.authenticate_header(None).await.is_err());
    }

    #[tokio::test]
    async fn with_oidc_issuers_no_key_is_generated_but_one_from_the_env_is_taken() {
        let config: Config = toml::from_str(
            "[[auth.oidc]]\nname = \"idp\"\nissuer = \"https://idp.example\"\naudience = \"framegate\"\n",
        )
        .unwrap();
        let (auth, origin) = Authenticator::from_config(&config, None, None);
        assert_eq!(origin, DevKey::None);
        assert!(auth.static_keys.is_empty());
        let (auth, origin) = Authenticator::from_config(&config, None, Some("k1".into()));
        assert_eq!(origin, DevKey::FromEnv);
        assert!(auth.authenticate("k1").await.is_ok());
    }

    #[tokio::test]
    async fn generated_key_is_random_and_works() {
        let (auth, origin) = Authenticator::from_config(&Config::default(), None, None);
        let DevKey::Generated(key) = origin else {
            panic!("expected a generated key")
        };
        assert!(key.starts_with("fg_dev_") && key.len() == 39);
        assert!(auth.authenticate(&key).await.is_ok());
        assert_ne!(generate_key(), generate_key());
    }

    #[tokio::test]
    async fn configured_keys_map_to_tenants_and_plans() {
        let mut config: Config = toml::from_str(
            "[plans.default]\nframes_per_sec = 5.0\n[plans.pro]\nmodels = [\"a\"]\n[tenants.globex]\nplan = \"pro\"\n",
        )
        .unwrap();
        config.auth.keys = vec![
            ApiKeyConfig {
                tenant: "acme".into(),
                sha256: hex::encode(hash_key("secret-a")),
                scopes: vec![Scope::Detect],
            },
            ApiKeyConfig {
                tenant: "globex".into(),
                sha256: hex::encode(hash_key("secret-b")),
                scopes: Scope::DEFAULT.to_vec(),
            },
        ];
        let (auth, origin) = Authenticator::from_config(&config, None, Some("ignored".into()));
        assert_eq!(origin, DevKey::None);
        let b = auth.authenticate("secret-b").await.unwrap();
        assert_eq!(b.tenant, "globex");
        assert!(require_model(&b, "a").is_ok() && require_model(&b, "b").is_err());
        let a = auth.authenticate("secret-a").await.unwrap();
        assert_eq!(a.limits.frames_per_sec, Some(5.0));
        assert!(require_scope(&a, Scope::Detect).is_ok());
        let e = require_scope(&a, Scope::Stream).unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(e.to_string().contains("\"stream\""), "{e}");
        assert!(auth.authenticate("ignored").await.is_err());
    }

    #[tokio::test]
    async fn a_lookup_that_read_the_key_before_it_was_revoked_here_does_not_cache_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded_store(&dir);
        let mut config = Config::default();
        config.auth.cache_ttl_secs = 600;
        let (mut auth, _) =
            Authenticator::from_config(&config, Some(store.clone()), Some("dev".into()));
        let pause = Arc::new(LookupPause::default());
        auth.pause_after_lookup = Some(pause.clone());
        let auth = Arc::new(auth);
        let k = store
            .create(keys::NewKey {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        // A request looks the key up and has the store's (active) record...
        let first = tokio::spawn({
            let (auth, key) = (auth.clone(), k.key.clone());
            async move { auth.authenticate(&key).await.map(|p| p.tenant) }
        });
        pause.reached.notified().await;
        // ...when the key is revoked through this gateway.
        store.revoke(&k.record.id).await.unwrap();
        auth.forget_key(&k.record.id);
        pause.resume.notify_one();
        // The request that began before the revocation may pass; the record
        // it read must not outlive the revocation in the cache.
        assert_eq!(first.await.unwrap().unwrap(), "acme");
        let mut after = tokio::spawn({
            let (auth, key) = (auth.clone(), k.key.clone());
            async move { auth.authenticate(&key).await.map(|p| p.tenant) }
        });
        // From the cache it answers at once; from the store it pauses.
        let after = tokio::select! {
            r = &mut after => r,
            _ = pause.reached.notified() => {
                pause.resume.notify_one();
                after.await
            }
        };
        assert!(
            after.unwrap().is_err(),
            "a key revoked here was accepted from the cache"
        );
    }

    #[tokio::test]
    async fn issued_keys_are_cached_expire_and_revoke_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded_store(&dir);
        let mut config = Config::default();
        config.auth.cache_ttl_secs = 1;
        config.plans.insert(
            "default".into(),
            PlanLimits {
                frames_per_sec: Some(9.0),
                max_sessions: Some(4),
                ..Default::default()
            },
        );
        let (auth, _) =
            Authenticator::from_config(&config, Some(store.clone()), Some("dev".into()));
        let k = store
            .create(keys::NewKey {
                tenant: "acme".into(),
                scopes: vec![Scope::Stream],
                limits: Some(PlanLimits {
                    max_sessions: Some(1),
                    budget_frames: Some(5),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let p = auth.authenticate(&k.key).await.unwrap();
        // A key's own budget (stored before it was refused) is not the
        // tenant's: the plan has none.
        assert_eq!(p.limits.budget_frames, None);
        assert_eq!(
            (p.tenant.as_str(), p.key_id.as_str()),
            ("acme", k.record.id.as_str())
        );
        assert_eq!(p.scopes, vec![Scope::Stream]);
        assert_eq!(p.limits.frames_per_sec, Some(9.0));
        assert_eq!(p.limits.max_sessions, Some(1));
        // The wrong secret with the right id.
        let wrong = format!("fg_{}_{}", k.record.id, "0".repeat(keys::SECRET_LEN));
        assert!(auth.authenticate(&wrong).await.is_err());
        // Revoked elsewhere: still cached here until the TTL passes.
        store.revoke(&k.record.id).await.unwrap();
        assert!(auth.authenticate(&k.key).await.is_ok());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(auth.authenticate(&k.key).await.is_err());
        // Expired keys are refused.
        let old = store
            .create(keys::NewKey {
                tenant: "acme".into(),
                expires_at: Some(keys::now_secs() - 1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(auth.authenticate(&old.key).await.is_err());
        // An unknown id is remembered as unknown (one store lookup per TTL).
        let ghost = format!("fg_aaaaaaaaaaaa_{}", "1".repeat(keys::SECRET_LEN));
        assert!(auth.authenticate(&ghost).await.is_err());
        assert!(auth.lock().keys.get("aaaaaaaaaaaa", auth.ttl).is_some());
        // Store tenants and plans win over the configuration's.
        store
            .put_plan(
                "default",
                &PlanLimits {
                    frames_per_sec: Some(1.0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        auth.forget_tenancy();
        assert_eq!(
            auth.tenant_limits("acme").await.unwrap().frames_per_sec,
            Some(1.0)
        );
    }

    #[derive(Debug)]
    struct FixedVerifier;

    impl TokenVerifier for FixedVerifier {
        fn verify<'a>(
            &'a self,
            token: &'a str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<TokenIdentity, GatewayError>> + Send + 'a>,
        > {
            Box::pin(async move {
                if token.ends_with(".good") {
                    Ok(TokenIdentity {
                        tenant: "acme".into(),
                        subject: "idp:alice".into(),
                        scopes: vec![Scope::Detect],
                    })
                } else {
                    Err(GatewayError::Unauthorized)
                }
            })
        }
    }

    #[tokio::test]
    async fn jwts_go_to_the_token_verifier() {
        let mut config = Config::default();
        config.plans.insert(
            "default".into(),
            PlanLimits {
                weight: Some(3),
                ..Default::default()
            },
        );
        let (mut auth, _) = Authenticator::from_config(&config, None, Some("k".into()));
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.good";
        assert!(looks_like_jwt(jwt));
        // No verifier: refused like any unknown credential.
        assert!(auth.authenticate(jwt).await.is_err());
        auth.set_token_verifier(Arc::new(FixedVerifier));
        let p = auth.authenticate(jwt).await.unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.key_id.as_str(), p.scopes.clone()),
            ("acme", "idp:alice", vec![Scope::Detect])
        );
        assert_eq!(p.limits.effective_weight(), 3);
        assert!(auth
            .authenticate("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.bad")
            .await
            .is_err());
    }
}
