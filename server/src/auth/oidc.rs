//! OIDC bearer tokens: JWTs from configured issuers (`[[auth.oidc]]`).
//!
//! Owns the per-issuer signing-key cache and the token checks. An issuer's
//! keys come from its JWKS (`jwks_uri` from `{issuer}/.well-known/openid-configuration`,
//! as Keycloak publishes it, or configured directly). The key set is fetched
//! in the background at start-up and again when a token names a `kid` the
//! cache does not hold (a rotation) or the set is older than
//! `jwks_max_age_secs`. Fetches are bounded: at most one attempt per
//! `jwks_min_refresh_secs` per issuer, and concurrent requests that need one
//! share it, so a flood of tokens with made-up `kid`s costs the issuer one
//! request per interval. An issuer that is down never stops the gateway: its
//! tokens are refused (401, a warning in the log) until a later fetch works.
//!
//! A token is accepted only when every check passes: the header's `alg` is one
//! the issuer allows (never `none`, never an HMAC algorithm, so a public key
//! can't be used as an HMAC secret) and fits the key's type and curve; the
//! signature; `iss` exactly; `aud` (a string or an array) contains the
//! audience; `exp` is present and `nbf`, when present, has passed, both with
//! `leeway_secs`; `sub` and the tenant claim are present and well-formed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Scope, TokenIdentity, TokenVerifier};
use crate::error::GatewayError;

/// Largest discovery document or JWKS accepted, in bytes.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Longest subject kept verbatim in a key id; longer ones are hashed.
const MAX_SUBJECT_CHARS: usize = 64;
/// Longest tenant accepted from a token.
const MAX_TENANT_CHARS: usize = 128;
/// Algorithms an issuer may be configured with: public-key signatures only.
pub const SUPPORTED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One trusted token issuer (`[[auth.oidc]]`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Short name for logs, metrics and key ids (`oidc:<name>:<sub>`):
    /// 1–32 of `a-z 0-9 _ -`, unique.
    pub name: String,
    /// The issuer URL, compared exactly with the token's `iss` (Keycloak:
    /// `https://HOST/realms/REALM`). Discovery is read from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The audience the token's `aud` must contain (Keycloak: the client id,
    /// or an audience mapper's value).
    pub audience: String,
    /// The claim that names the tenant. Default `tenant`.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// A fixed tenant for every token of this issuer; the tenant claim is
    /// then not read. Default: none (the claim decides).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Signature algorithms accepted. Default `["RS256", "ES256"]`. Only
    /// public-key algorithms (RS*, PS*, ES256, ES384, EdDSA) are allowed.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches for this issuer, in seconds: the
    /// bound on what unknown `kid`s can make the gateway send the issuer.
    /// Default 30.
    #[serde(default = "default_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// A key set older than this is fetched again (in the background, the
    /// cached keys serve meanwhile), so retired keys stop working. Default 3600.
    #[serde(default = "default_max_age")]
    pub jwks_max_age_secs: u64,
    /// The JWKS URL, skipping discovery. Default: from discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Timeout of one discovery or JWKS request, in milliseconds. Default 5000.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_ms: u64,
    /// Whether the token's `scope` may grant `admin`. Default false: an
    /// `admin` scope in a token is ignored.
    #[serde(default)]
    pub allow_admin: bool,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_min_refresh() -> u64 {
    30
}
fn default_max_age() -> u64 {
    3600
}
fn default_http_timeout() -> u64 {
    5000
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// Problems in `[[auth.oidc]]`, added to `problems`.
pub fn validate(issuers: &[OidcIssuerConfig], problems: &mut Vec<String>) {
    let mut names = HashSet::new();
    let mut urls = HashSet::new();
    for (i, c) in issuers.iter().enumerate() {
        let at = format!("auth.oidc[{i}]");
        let name_ok = (1..=32).contains(&c.name.len())
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            problems.push(format!(
                "{at}.name must be 1-32 characters of a-z, 0-9, _ and -, got {:?}",
                c.name
            ));
        } else if !names.insert(c.name.as_str()) {
            problems.push(format!("{at}.name {:?} is used twice", c.name));
        }
        if !is_http_url(&c.issuer) {
            problems.push(format!(
                "{at}.issuer must be an http:// or https:// URL, got {:?}",
                c.issuer
            ));
        } else if !urls.insert(c.issuer.as_str()) {
            problems.push(format!("{at}.issuer {:?} is configured twice", c.issuer));
        }
        if c.audience.trim().is_empty() {
            problems.push(format!("{at}.audience must not be empty"));
        }
        if c.tenant_claim.is_empty() {
            problems.push(format!("{at}.tenant_claim must not be empty"));
        }
        if let Some(t) = &c.tenant {
            if tenant_problem(t).is_some() {
                problems.push(format!(
                    "{at}.tenant {t:?} must be 1-{MAX_TENANT_CHARS} characters without braces, tabs, colons or control characters"
                ));
            }
        }
        if c.algorithms.is_empty() {
            problems.push(format!("{at}.algorithms must name at least one algorithm"));
        }
        for a in &c.algorithms {
            if a.starts_with("HS") {
                problems.push(format!(
                    "{at}.algorithms: {a} is a shared-secret algorithm; only public-key algorithms are accepted ({})",
                    SUPPORTED_ALGORITHMS.join(", ")
                ));
            } else if !SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
                problems.push(format!(
                    "{at}.algorithms: unknown algorithm {a:?}; supported: {}",
                    SUPPORTED_ALGORITHMS.join(", ")
                ));
            }
        }
        if let Some(u) = &c.jwks_uri {
            if !is_http_url(u) {
                problems.push(format!(
                    "{at}.jwks_uri must be an http:// or https:// URL, got {u:?}"
                ));
            } else if c.issuer.starts_with("https://") && !u.starts_with("https://") {
                problems.push(format!(
                    "{at}.jwks_uri must be https:// for an https issuer (keys fetched in the clear could be swapped), got {u:?}"
                ));
            }
        }
        if c.jwks_min_refresh_secs == 0 {
            problems.push(format!("{at}.jwks_min_refresh_secs must be at least 1"));
        }
        if c.jwks_max_age_secs < c.jwks_min_refresh_secs {
            problems.push(format!(
                "{at}.jwks_max_age_secs must be at least jwks_min_refresh_secs"
            ));
        }
        if c.leeway_secs > 300 {
            problems.push(format!("{at}.leeway_secs must be at most 300"));
        }
        if !(100..=60_000).contains(&c.http_timeout_ms) {
            problems.push(format!("{at}.http_timeout_ms must be in 100..=60000"));
        }
    }
}

/// Why a tenant name is unusable, if it is (the usage store keys on it).
fn tenant_problem(t: &str) -> Option<&'static str> {
    if t.is_empty() {
        Some("empty")
    } else if t.chars().count() > MAX_TENANT_CHARS {
        Some("too long")
    } else if t.contains(['{', '}', ':']) || t.chars().any(char::is_control) {
        Some("contains braces, colons or control characters")
    } else {
        None
    }
}

/// Why a token was refused. Logged at debug (never the token); the caller
/// only ever sees 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not three base64url parts, or a header or payload that is not JSON.
    #[error("malformed token")]
    Malformed,
    /// `iss` names no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// `alg` is missing, `none`, HMAC or not in the issuer's list.
    #[error("algorithm not allowed")]
    Algorithm,
    /// No key with this `kid` (after the refetch the rate limit allows).
    #[error("unknown signing key")]
    UnknownKey,
    /// The key's type or curve does not fit the token's `alg`.
    #[error("key does not fit the algorithm")]
    KeyMismatch,
    /// The issuer's keys could not be fetched.
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed (or is missing).
    #[error("expired or without exp")]
    Expired,
    /// `nbf` is in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `aud` does not contain the audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` differs from the issuer.
    #[error("wrong issuer")]
    Issuer,
    /// A claim is missing or malformed (named).
    #[error("claim {0} missing or invalid")]
    Claim(&'static str),
    /// Not an access token: an ID token (payload `typ` other than
    /// `Bearer`, or an `at_hash`), or a header `typ` other than `JWT` /
    /// `at+jwt`. An ID token proves who signed in to a client; it does not
    /// grant access to an API, and it carries no scopes.
    #[error("not an access token")]
    TokenType,
}

/// A key from the issuer's JWKS.
struct CachedKey {
    kid: Option<String>,
    key: DecodingKey,
    params: KeyType,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    Ec(Curve),
    Ed25519,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl KeyType {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::Ec(Curve::P256) => alg == ES256,
            KeyType::Ec(Curve::P384) => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

/// One issuer's key set as last fetched.
#[derive(Default)]
struct KeySet {
    /// Bumped by every successful fetch.
    generation: u64,
    fetched_at: Option<Instant>,
    keys: Vec<CachedKey>,
}

struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

struct Issuer {
    config: OidcIssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<KeySet>,
    /// Held while fetching: concurrent refreshes wait and share the result.
    refresh: tokio::sync::Mutex<RefreshState>,
    http: HttpClient,
    http_timeout: Duration,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Verifies JWTs from the configured issuers.
pub struct OidcVerifier {
    issuers: Vec<Arc<Issuer>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Claims read from a token (the rest are ignored).
#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

fn http_client(timeout: Duration) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

impl OidcVerifier {
    /// A verifier for validated issuer configurations. Fetches nothing yet;
    /// see [`OidcVerifier::prefetch`].
    pub fn new(configs: &[OidcIssuerConfig]) -> Result<Self, GatewayError> {
        let mut issuers = Vec::new();
        for c in configs {
            let algorithms = c
                .algorithms
                .iter()
                .filter(|a| SUPPORTED_ALGORITHMS.contains(&a.as_str()))
                .filter_map(|a| a.parse::<Algorithm>().ok())
                .collect();
            let http = http_client(Duration::from_millis(c.http_timeout_ms))
                .map_err(|e| GatewayError::Internal(format!("OIDC HTTP client: {e}")))?;
            issuers.push(Arc::new(Issuer {
                config: c.clone(),
                algorithms,
                keys: ArcSwap::from_pointee(KeySet::default()),
                refresh: tokio::sync::Mutex::new(RefreshState {
                    last_attempt: None,
                    jwks_uri: c.jwks_uri.clone(),
                }),
                http,
                http_timeout: Duration::from_millis(c.http_timeout_ms),
            }));
        }
        crate::metrics::init_oidc_issuers(configs.iter().map(|c| c.name.as_str()));
        Ok(Self { issuers })
    }

    /// Starts one background fetch of every issuer's keys, so the first
    /// tokens need not wait. A failure is logged; the gateway serves on.
    pub fn prefetch(&self) {
        for issuer in &self.issuers {
            let issuer = issuer.clone();
            tokio::spawn(async move { issuer.refresh(0).await });
        }
    }

    /// Installs a key set for issuer `name` as if fetched now (benchmarks,
    /// tests, or keys shipped with the configuration).
    pub fn install_jwks(&self, name: &str, jwks: &[u8]) -> Result<usize, String> {
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.name == name)
            .ok_or_else(|| format!("no issuer named {name:?}"))?;
        let keys = parse_jwks(jwks)?;
        let n = keys.len();
        issuer.install(keys);
        Ok(n)
    }

    /// Checks `token`; on success, who it speaks for.
    pub async fn check(&self, token: &str) -> Result<TokenIdentity, Rejection> {
        let issuer = self.issuer_of(token)?;
        let result = issuer.check(token).await;
        if let Err(r) = &result {
            tracing::debug!(issuer = %issuer.config.name, reason = %r, "bearer token refused");
        }
        result
    }

    /// The configured issuer named by the token's (not yet verified) `iss`.
    fn issuer_of(&self, token: &str) -> Result<&Arc<Issuer>, Rejection> {
        let payload = token.split('.').nth(1).ok_or(Rejection::Malformed)?;
        let bytes = base64url(payload).ok_or(Rejection::Malformed)?;
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss: Iss = serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)?;
        let iss = iss.iss.ok_or(Rejection::Claim("iss"))?;
        self.issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(Rejection::UnknownIssuer)
    }
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

impl TokenVerifier for OidcVerifier {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TokenIdentity, GatewayError>> + Send + 'a>,
    > {
        Box::pin(async move {
            self.check(token)
                .await
                .map_err(|_| GatewayError::Unauthorized)
        })
    }
}

/// Parses a JWKS document, keeping the signing keys it can use.
fn parse_jwks(body: &[u8]) -> Result<Vec<CachedKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid: {e}"))?;
    let mut out = Vec::new();
    for raw in set.keys {
        // Keys this crate can't parse (other types, encryption algorithms)
        // are skipped, not fatal: Keycloak publishes RSA-OAEP keys too.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let params = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyType::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyType::Ec(Curve::P256),
                EllipticCurve::P384 => KeyType::Ec(Curve::P384),
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyType::Ed25519
            }
            // Symmetric keys ("oct") are never trusted from a JWKS.
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match key_algorithm(a) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(CachedKey {
            kid: jwk.common.key_id.clone(),
            key,
            params,
            alg,
        });
    }
    Ok(out)
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl Issuer {
    fn install(&self, keys: Vec<CachedKey>) {
        let generation = self.keys.load().generation + 1;
        self.keys.store(Arc::new(KeySet {
            generation,
            fetched_at: Some(Instant::now()),
            keys,
        }));
    }

    async fn check(self: &Arc<Self>, token: &str) -> Result<TokenIdentity, Rejection> {
        // `alg: none` and unknown names fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Algorithm)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm);
        }
        // An access token says "JWT" or "at+jwt" (RFC 9068) if anything;
        // another type (a logout token, an ID token some issuers mark) is not
        // a credential for this API.
        if let Some(typ) = &header.typ {
            let t = typ.to_ascii_lowercase();
            if !matches!(t.as_str(), "jwt" | "at+jwt" | "application/at+jwt") {
                return Err(Rejection::TokenType);
            }
        }
        let set = self.keys.load_full();
        let stale = set
            .fetched_at
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(self.config.jwks_max_age_secs));
        if stale && self.refresh_due() {
            let me = self.clone();
            let seen = set.generation;
            tokio::spawn(async move { me.refresh(seen).await });
        }
        let kid = header.kid.as_deref();
        let set = if find_key(&set, kid, header.alg).is_some() {
            set
        } else {
            // Unknown kid: a rotation, or a made-up kid. One refetch,
            // shared and rate-limited.
            self.refresh(set.generation).await;
            let set = self.keys.load_full();
            if set.fetched_at.is_none() {
                return Err(Rejection::KeysUnavailable);
            }
            set
        };
        let key = find_key(&set, kid, header.alg).ok_or(Rejection::UnknownKey)?;
        if !key.params.fits(header.alg) || key.alg.is_some_and(|a| a != header.alg) {
            return Err(Rejection::KeyMismatch);
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.config.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => Rejection::Signature,
                K::ExpiredSignature => Rejection::Expired,
                K::ImmatureSignature => Rejection::NotYetValid,
                K::InvalidAudience => Rejection::Audience,
                K::InvalidIssuer => Rejection::Issuer,
                K::MissingRequiredClaim(c) if c == "exp" => Rejection::Expired,
                K::MissingRequiredClaim(c) if c == "aud" => Rejection::Audience,
                K::MissingRequiredClaim(_) => Rejection::Claim("iss"),
                K::InvalidAlgorithm | K::InvalidAlgorithmName => Rejection::Algorithm,
                K::InvalidClaimFormat(_) => Rejection::Claim("exp/nbf"),
                _ => Rejection::Malformed,
            }
        })?;
        self.identity(data.claims)
    }

    fn identity(&self, claims: Claims) -> Result<TokenIdentity, Rejection> {
        // Keycloak marks its tokens: "Bearer" for access, "ID" for ID
        // tokens; every ID token may carry at_hash, no access token does.
        match claims.rest.get("typ") {
            None => {}
            Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err(Rejection::TokenType),
        }
        if claims.rest.contains_key("at_hash") {
            return Err(Rejection::TokenType);
        }
        let tenant_value = match self.config.tenant_claim.as_str() {
            // Read into their own fields: not in `rest`.
            "sub" => claims.sub.as_ref(),
            "scope" => claims.scope.as_ref(),
            other => claims.rest.get(other),
        }
        .cloned();
        let subject = match claims.sub {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            _ => return Err(Rejection::Claim("sub")),
        };
        let tenant = match &self.config.tenant {
            Some(t) => t.clone(),
            None => match &tenant_value {
                Some(serde_json::Value::String(t)) if tenant_problem(t).is_none() => t.clone(),
                _ => return Err(Rejection::Claim("tenant")),
            },
        };
        let scopes = match claims.scope {
            None => Scope::DEFAULT.to_vec(),
            Some(serde_json::Value::String(s)) => map_scopes(&s, self.config.allow_admin),
            Some(_) => return Err(Rejection::Claim("scope")),
        };
        Ok(TokenIdentity {
            tenant,
            subject: key_subject(&self.config.name, &subject),
            scopes,
        })
    }

    /// Whether a background refresh may start now: none is running and the
    /// last attempt is older than the refresh interval.
    fn refresh_due(&self) -> bool {
        let min = Duration::from_secs(self.config.jwks_min_refresh_secs);
        self.refresh
            .try_lock()
            .is_ok_and(|s| s.last_attempt.is_none_or(|t| t.elapsed() >= min))
    }

    /// Fetches the key set unless a fetch since generation `seen` already
    /// happened or the rate limit forbids one now.
    async fn refresh(&self, seen: u64) {
        let mut state = self.refresh.lock().await;
        if self.keys.load().generation > seen {
            return; // another request fetched while this one waited
        }
        let min = Duration::from_secs(self.config.jwks_min_refresh_secs);
        if state.last_attempt.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        let name = &self.config.name;
        match self.fetch(&mut state).await {
            Ok(keys) => {
                crate::metrics::oidc_jwks_fetch(name, true);
                tracing::info!(issuer = %name, keys = keys.len(), "OIDC signing keys fetched");
                self.install(keys);
            }
            Err(e) => {
                crate::metrics::oidc_jwks_fetch(name, false);
                tracing::warn!(
                    issuer = %name,
                    error = %e,
                    retry_after_secs = min.as_secs(),
                    "OIDC signing keys could not be fetched; this issuer's tokens are refused until a fetch works"
                );
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<Vec<CachedKey>, String> {
        let jwks_uri = match &state.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                #[derive(Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let body = self.get(&url).await?;
                let d: Discovery = serde_json::from_slice(&body)
                    .map_err(|e| format!("discovery document at {url} is not valid: {e}"))?;
                if d.issuer != self.config.issuer {
                    return Err(format!(
                        "discovery at {url} names issuer {:?}, not the configured {:?}",
                        d.issuer, self.config.issuer
                    ));
                }
                if !is_http_url(&d.jwks_uri) {
                    return Err(format!(
                        "discovery at {url}: jwks_uri is not an http(s) URL"
                    ));
                }
                // Keys fetched in the clear could be swapped on the way.
                if self.config.issuer.starts_with("https://") && !d.jwks_uri.starts_with("https://")
                {
                    return Err(format!(
                        "discovery at {url}: jwks_uri {:?} is not https for an https issuer",
                        d.jwks_uri
                    ));
                }
                state.jwks_uri = Some(d.jwks_uri.clone());
                d.jwks_uri
            }
        };
        let body = self.get(&jwks_uri).await?;
        let keys = parse_jwks(&body).map_err(|e| format!("{jwks_uri}: {e}"))?;
        if keys.is_empty() {
            return Err(format!("{jwks_uri}: no usable signing keys"));
        }
        Ok(keys)
    }

    /// GET `url` (no redirects), at most [`MAX_DOCUMENT_BYTES`], within the
    /// issuer's HTTP timeout.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let request = hyper::Request::get(url)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("framegate/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let fetch = async {
            let resp = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("GET {url}: HTTP {}", resp.status()));
            }
            let mut body = resp.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("GET {url}: {e}"))?;
                if let Ok(chunk) = frame.into_data() {
                    if out.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(format!("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
                    }
                    out.extend_from_slice(&chunk);
                }
            }
            Ok(out)
        };
        tokio::time::timeout(self.http_timeout, fetch)
            .await
            .map_err(|_| format!("GET {url}: no answer within {:?}", self.http_timeout))?
    }
}

/// The key for `kid`; without a `kid`, the one key that fits `alg`.
fn find_key<'a>(set: &'a KeySet, kid: Option<&str>, alg: Algorithm) -> Option<&'a CachedKey> {
    match kid {
        Some(kid) => set.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None => {
            let mut fitting = set.keys.iter().filter(|k| k.params.fits(alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Some(k),
                _ => None,
            }
        }
    }
}

/// Maps a space-separated `scope` claim to gateway scopes. Unknown scopes are
/// ignored; a claim naming none of ours (Keycloak puts `profile email` in
/// every token) gets [`Scope::DEFAULT`], as does a token without one.
fn map_scopes(claim: &str, allow_admin: bool) -> Vec<Scope> {
    let mut out = Vec::new();
    for s in claim.split_ascii_whitespace() {
        let scope = match s {
            "stream" => Scope::Stream,
            "detect" => Scope::Detect,
            "usage" => Scope::Usage,
            "admin" if allow_admin => Scope::Admin,
            _ => continue,
        };
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    if out.is_empty() && !claim.split_ascii_whitespace().any(|s| s == "admin") {
        return Scope::DEFAULT.to_vec();
    }
    out.sort();
    out
}

/// `oidc:<name>:<sub>`: the subject verbatim when short and plain, else a
/// hash of it (the key id lands in usage records and logs).
fn key_subject(name: &str, sub: &str) -> String {
    let plain = sub.len() <= MAX_SUBJECT_CHARS
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if plain {
        format!("oidc:{name}:{sub}")
    } else {
        let h = Sha256::digest(sub.as_bytes());
        format!("oidc:{name}:h{}", hex::encode(&h[..12]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const ISS: &str = "https://login.example.test/realms/acme";

    fn config() -> OidcIssuerConfig {
        toml::from_str(&format!(
            "name = \"kc\"\nissuer = \"{ISS}\"\naudience = \"framegate\"\n"
        ))
        .unwrap()
    }

    struct Signer {
        key: EncodingKey,
        jwks: String,
    }

    fn es256_signer(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string();
        Signer {
            key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwks,
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "aud": "framegate", "sub": "svc-1", "tenant": "acme",
            "exp": now() + 300, "nbf": now() - 5, "iat": now(),
        })
    }

    fn sign(s: &Signer, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &s.key).unwrap()
    }

    fn verifier(c: OidcIssuerConfig, s: &Signer) -> OidcVerifier {
        let v = OidcVerifier::new(&[c]).unwrap();
        assert_eq!(v.install_jwks("kc", s.jwks.as_bytes()).unwrap(), 1);
        v
    }

    fn with(
        mut c: serde_json::Value,
        f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> serde_json::Value {
        f(c.as_object_mut().unwrap());
        c
    }

    #[tokio::test]
    async fn claim_checks() {
        let s = es256_signer("k1");
        let v = verifier(config(), &s);
        let id = v.check(&sign(&s, "k1", &claims())).await.unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.subject, "oidc:kc:svc-1");
        assert_eq!(id.scopes, Scope::DEFAULT.to_vec());

        // aud as an array containing ours.
        let c = with(claims(), |m| {
            m.insert("aud".into(), serde_json::json!(["other", "framegate"]));
        });
        assert!(v.check(&sign(&s, "k1", &c)).await.is_ok());

        let cases: Vec<(serde_json::Value, Rejection)> = vec![
            (
                with(claims(), |m| {
                    m.insert("exp".into(), (now() - 60).into());
                }),
                Rejection::Expired,
            ),
            (
                with(claims(), |m| {
                    m.remove("exp");
                }),
                Rejection::Expired,
            ),
            (
                with(claims(), |m| {
                    m.insert("nbf".into(), (now() + 120).into());
                }),
                Rejection::NotYetValid,
            ),
            (
                with(claims(), |m| {
                    m.insert("aud".into(), "someone-else".into());
                }),
                Rejection::Audience,
            ),
            (
                with(claims(), |m| {
                    m.insert("aud".into(), serde_json::json!(["a", "b"]));
                }),
                Rejection::Audience,
            ),
            (
                with(claims(), |m| {
                    m.remove("aud");
                }),
                Rejection::Audience,
            ),
            (
                with(claims(), |m| {
                    m.remove("tenant");
                }),
                Rejection::Claim("tenant"),
            ),
            (
                with(claims(), |m| {
                    m.insert("tenant".into(), "".into());
                }),
                Rejection::Claim("tenant"),
            ),
            (
                with(claims(), |m| {
                    m.insert("tenant".into(), "a:b".into());
                }),
                Rejection::Claim("tenant"),
            ),
            (
                with(claims(), |m| {
                    m.insert("tenant".into(), 7.into());
                }),
                Rejection::Claim("tenant"),
            ),
            (
                with(claims(), |m| {
                    m.remove("sub");
                }),
                Rejection::Claim("sub"),
            ),
            (
                with(claims(), |m| {
                    m.insert("iss".into(), "https://evil.test".into());
                }),
                Rejection::UnknownIssuer,
            ),
        ];
        for (c, want) in cases {
            assert_eq!(v.check(&sign(&s, "k1", &c)).await.unwrap_err(), want, "{c}");
        }
        // Within the leeway: expired 10 s ago, valid from 10 s ahead.
        let c = with(claims(), |m| {
            m.insert("exp".into(), (now() - 10).into());
            m.insert("nbf".into(), (now() + 10).into());
        });
        assert!(v.check(&sign(&s, "k1", &c)).await.is_ok());
    }

    #[tokio::test]
    async fn only_access_tokens_are_credentials() {
        let s = es256_signer("k1");
        let v = verifier(config(), &s);
        // Keycloak's access tokens say Bearer; its ID tokens say ID (same
        // audience when the client id is the audience, and no scope claim).
        let bearer = with(claims(), |m| {
            m.insert("typ".into(), "Bearer".into());
        });
        assert!(v.check(&sign(&s, "k1", &bearer)).await.is_ok());
        for c in [
            with(claims(), |m| {
                m.insert("typ".into(), "ID".into());
            }),
            with(claims(), |m| {
                m.insert("at_hash".into(), "x1Y2".into());
            }),
        ] {
            assert_eq!(
                v.check(&sign(&s, "k1", &c)).await.unwrap_err(),
                Rejection::TokenType,
                "{c}"
            );
        }
        for (typ, ok) in [("JWT", true), ("at+jwt", true), ("logout+jwt", false)] {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("k1".into());
            h.typ = Some(typ.into());
            let token = jsonwebtoken::encode(&h, &claims(), &s.key).unwrap();
            match v.check(&token).await {
                Ok(_) => assert!(ok, "{typ} was taken"),
                Err(e) => assert_eq!((ok, e), (false, Rejection::TokenType), "{typ}"),
            }
        }
    }

    #[tokio::test]
    async fn the_tenant_may_be_the_subject() {
        let s = es256_signer("k1");
        let mut c = config();
        c.tenant_claim = "sub".into();
        let v = verifier(c, &s);
        let id = v.check(&sign(&s, "k1", &claims())).await.unwrap();
        assert_eq!(id.tenant, "svc-1");
    }

    #[test]
    fn keys_of_an_https_issuer_come_over_https() {
        let mut c = config();
        c.jwks_uri = Some("http://login.example.test/certs".into());
        let mut problems = Vec::new();
        validate(&[c.clone()], &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("jwks_uri must be https")),
            "{problems:?}"
        );
        c.jwks_uri = Some("https://login.example.test/certs".into());
        let mut problems = Vec::new();
        validate(&[c], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[tokio::test]
    async fn signature_key_and_algorithm_checks() {
        let s = es256_signer("k1");
        let other = es256_signer("k1");
        let v = verifier(config(), &s);
        // Same kid, other key: bad signature.
        assert_eq!(
            v.check(&sign(&other, "k1", &claims())).await.unwrap_err(),
            Rejection::Signature
        );
        // Tampered payload.
        let t = sign(&s, "k1", &claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = sign(
            &s,
            "k1",
            &with(claims(), |m| {
                m.insert("tenant".into(), "globex".into());
            }),
        );
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(
            v.check(&parts.join(".")).await.unwrap_err(),
            Rejection::Signature
        );
        // alg none, HS256 with the public key as secret, RS256 header on an EC key.
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let payload = b64(claims().to_string().as_bytes());
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
        assert_eq!(v.check(&none).await.unwrap_err(), Rejection::Algorithm);
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(s.jwks.as_bytes()))
            .unwrap();
        assert_eq!(v.check(&hs).await.unwrap_err(), Rejection::Algorithm);
        let mut c = config();
        c.algorithms = vec!["RS256".into(), "ES256".into()];
        let v2 = verifier(c, &s);
        let rs_on_ec = format!(
            "{}.{payload}.{}",
            b64(br#"{"alg":"RS256","kid":"k1"}"#),
            parts[2]
        );
        assert_eq!(
            v2.check(&rs_on_ec).await.unwrap_err(),
            Rejection::KeyMismatch
        );
        // ES256 not allowed for this issuer.
        let mut c = config();
        c.algorithms = vec!["RS256".into()];
        let v3 = verifier(c, &s);
        assert_eq!(v3.check(&t).await.unwrap_err(), Rejection::Algorithm);
        // Garbage.
        assert_eq!(
            v.check("eyJ.eyJ.x").await.unwrap_err(),
            Rejection::Malformed
        );
    }

    #[tokio::test]
    async fn unknown_kid_with_unreachable_issuer_is_refused_without_a_storm() {
        let s = es256_signer("k1");
        let mut c = config();
        // Nothing listens on port 9 of loopback (discard): connection refused.
        c.issuer = "http://127.0.0.1:9".into();
        let v = OidcVerifier::new(&[c]).unwrap();
        let t = sign(
            &s,
            "k1",
            &with(claims(), |m| {
                m.insert("iss".into(), "http://127.0.0.1:9".into());
            }),
        );
        assert_eq!(v.check(&t).await.unwrap_err(), Rejection::KeysUnavailable);
        // The second attempt inside the refresh interval does not fetch.
        let started = std::time::Instant::now();
        assert_eq!(v.check(&t).await.unwrap_err(), Rejection::KeysUnavailable);
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn scopes_map_and_admin_needs_permission() {
        use Scope::*;
        assert_eq!(map_scopes("detect stream", false), vec![Stream, Detect]);
        assert_eq!(map_scopes("profile email", false), Scope::DEFAULT.to_vec());
        assert_eq!(map_scopes("usage admin", false), vec![Usage]);
        assert_eq!(map_scopes("admin", false), Vec::<Scope>::new());
        assert_eq!(map_scopes("usage admin", true), vec![Usage, Admin]);
    }

    #[test]
    fn key_ids_are_bounded() {
        assert_eq!(key_subject("kc", "svc-1"), "oidc:kc:svc-1");
        let long = "x".repeat(500);
        let id = key_subject("kc", &long);
        assert!(id.len() < 40 && id.starts_with("oidc:kc:h"), "{id}");
        assert_ne!(key_subject("kc", "a\tb"), key_subject("kc", "a b"));
    }

    #[test]
    fn config_problems_are_reported() {
        let mut bad = config();
        bad.name = "Bad Name".into();
        bad.issuer = "ftp://x".into();
        bad.audience = " ".into();
        bad.algorithms = vec!["HS256".into(), "none".into()];
        bad.jwks_min_refresh_secs = 0;
        let mut problems = Vec::new();
        validate(&[bad], &mut problems);
        let all = problems.join("\n");
        for want in [
            "name",
            "issuer must be an http",
            "audience",
            "HS256 is a shared-secret",
            "unknown algorithm \"none\"",
            "jwks_min_refresh_secs",
        ] {
            assert!(all.contains(want), "missing {want:?} in {all}");
        }
        let mut problems = Vec::new();
        validate(&[config(), config()], &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let mut problems = Vec::new();
        validate(&[config()], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
