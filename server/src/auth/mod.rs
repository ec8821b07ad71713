//! Authentication: who is calling.
//!
//! Keys are kept only as SHA-256 hashes and compared in constant time. With
//! no keys configured the gateway runs with one development key, taken from
//! `FRAMEGATE_DEV_KEY` or generated and printed once at start-up. Every
//! request and session is authenticated before any image work.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::error::GatewayError;

/// Environment variable that supplies the development key.
pub const DEV_KEY_ENV: &str = "FRAMEGATE_DEV_KEY";

/// The tenant of the development key.
pub const DEV_TENANT: &str = "dev";

/// What a credential may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
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

struct KeyEntry {
    hash: [u8; 32],
    tenant: String,
    limits: std::sync::Arc<crate::config::PlanLimits>,
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

/// Checks credentials against the configured keys.
pub struct Authenticator {
    keys: Vec<KeyEntry>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
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
    /// Builds the authenticator from the configuration; with no keys there,
    /// from `dev_key_env` (the value of `FRAMEGATE_DEV_KEY`) or a new key.
    pub fn from_config(config: &AuthConfig, dev_key_env: Option<String>) -> (Self, DevKey) {
        if !config.keys.is_empty() {
            let keys = config
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
                    KeyEntry {
                        hash,
                        tenant: k.tenant.clone(),
                        limits: std::sync::Arc::default(),
                    }
                })
                .collect();
            return (Self { keys }, DevKey::None);
        }
        let (key, origin) = match dev_key_env.filter(|k| !k.is_empty()) {
            Some(k) => (k, DevKey::FromEnv),
            None => {
                let k = generate_key();
                (k.clone(), DevKey::Generated(k))
            }
        };
        (Self::single(&key, DEV_TENANT), origin)
    }

    /// An authenticator that knows exactly one key.
    pub fn single(key: &str, tenant: &str) -> Self {
        Self {
            keys: vec![KeyEntry {
                hash: hash_key(key),
                tenant: tenant.to_string(),
                limits: std::sync::Arc::default(),
            }],
        }
    }

    /// Gives every key its tenant's effective limits (plan and tenant
    /// overrides, `Config::tenant_limits`), carried by its [`Principal`].
    pub fn with_tenant_limits(
        mut self,
        limits: impl Fn(&str) -> crate::config::PlanLimits,
    ) -> Self {
        for k in &mut self.keys {
            k.limits = std::sync::Arc::new(limits(&k.tenant));
        }
        self
    }

    /// Checks a credential. Every key is compared, in constant time, so the
    /// answer's timing says nothing about which key came close.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, GatewayError> {
        if credential.is_empty() {
            return Err(GatewayError::Unauthorized);
        }
        let hash = hash_key(credential);
        let mut found: Option<&KeyEntry> = None;
        for entry in &self.keys {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found
            .map(|e| Principal {
                tenant: e.tenant.clone(),
                key_id: hex::encode(&e.hash[..6]),
                scopes: Scope::DEFAULT.to_vec(),
                limits: e.limits.clone(),
            })
            .ok_or(GatewayError::Unauthorized)
    }

    /// Checks an `Authorization` header value (`Bearer KEY`).
    pub fn authenticate_header(&self, header: Option<&str>) -> Result<Principal, GatewayError> {
        let value = header.ok_or(GatewayError::Unauthorized)?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(GatewayError::Unauthorized)?;
        self.authenticate(key.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    #[test]
    fn dev_key_from_env_is_accepted_and_others_refused() {
        let (auth, origin) = Authenticator::from_config(&AuthConfig::default(), Some("k1".into()));
        assert_eq!(origin, DevKey::FromEnv);
        assert_eq!(auth.authenticate("k1").unwrap().tenant, DEV_TENANT);
        assert!(auth.authenticate("k2").is_err());
        assert!(auth.authenticate("").is_err());
        assert!(auth.authenticate_header(Some("Bearer k1")).is_ok());
        assert!(auth.authenticate_header(Some("Basic k1")).is_err());
        assert!(auth.authenticate_header(None).is_err());
    }

    #[test]
    fn generated_key_is_random_and_works() {
        let (auth, origin) = Authenticator::from_config(&AuthConfig::default(), None);
        let DevKey::Generated(key) = origin else {
            panic!("expected a generated key")
        };
        assert!(key.starts_with("fg_dev_") && key.len() == 39);
        assert!(auth.authenticate(&key).is_ok());
        assert_ne!(generate_key(), generate_key());
    }

    #[test]
    fn configured_keys_map_to_tenants() {
        let config = AuthConfig {
            keys: vec![
                ApiKeyConfig {
                    tenant: "acme".into(),
                    sha256: hex::encode(hash_key("secret-a")),
                },
                ApiKeyConfig {
                    tenant: "globex".into(),
                    sha256: hex::encode(hash_key("secret-b")),
                },
            ],
        };
        let (auth, origin) = Authenticator::from_config(&config, Some("ignored".into()));
        assert_eq!(origin, DevKey::None);
        assert_eq!(auth.authenticate("secret-b").unwrap().tenant, "globex");
        assert!(auth.authenticate("ignored").is_err());
    }
}
