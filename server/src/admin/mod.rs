//! The admin API: keys, tenants, plans and any tenant's usage, on its own
//! listener (`[admin] listen`, default `127.0.0.1:9090`), never the public
//! one.
//!
//! Every request needs an admin credential in `Authorization: Bearer …`:
//! the token from `FRAMEGATE_ADMIN_TOKEN`, a token whose SHA-256 is
//! `[admin] token_sha256`, or an issued key with the `admin` scope. With no
//! admin credential anywhere the listener stays off (`serve` says how to
//! turn it on). Answers are JSON; errors are `{"error": {"code", "message",
//! "retryable"}}` like the public API's.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | POST | `/v1/admin/keys` | create a key; the answer holds it, once |
//! | GET | `/v1/admin/keys?tenant=T` | list keys (never their hashes) |
//! | GET | `/v1/admin/keys/{id}` | one key |
//! | DELETE | `/v1/admin/keys/{id}` | revoke it |
//! | GET | `/v1/admin/tenants` | tenants from the config and the store |
//! | GET/PUT | `/v1/admin/tenants/{name}` | one tenant (GET adds its effective limits) |
//! | GET | `/v1/admin/plans` | plans from the config and the store |
//! | GET/PUT | `/v1/admin/plans/{name}` | one plan |
//! | GET | `/v1/admin/usage?tenant=T&from=…&to=…` | any tenant's usage |

pub mod selfservice;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::transport::http::BodyBytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::keys::{now_secs, KeyStore, NewKey};
use crate::auth::{bearer_token, Scope};
use crate::config::{Config, PlanLimits, TenantConfig};
use crate::error::GatewayError;
use crate::gateway::Gateway;

/// Environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "FRAMEGATE_ADMIN_TOKEN";

/// The admin credentials that are not keys: token hashes.
#[derive(Debug, Default)]
pub struct AdminAuth {
    token_hashes: Vec<[u8; 32]>,
}

impl AdminAuth {
    /// From `[admin] token_sha256` and the value of `FRAMEGATE_ADMIN_TOKEN`.
    pub fn new(config: &Config, env_token: Option<String>) -> Self {
        let mut token_hashes = Vec::new();
        if let Some(t) = env_token.filter(|t| !t.is_empty()) {
            token_hashes.push(Sha256::digest(t.as_bytes()).into());
        }
        if let Some(h) = &config.admin.token_sha256 {
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(h, &mut hash).is_ok() {
                token_hashes.push(hash);
            }
        }
        Self { token_hashes }
    }

    /// Whether an admin token is configured.
    pub fn has_token(&self) -> bool {
        !self.token_hashes.is_empty()
    }

    /// Admits the caller of a request, or refuses it (401 without an admin
    /// credential, 403 for a valid key without the admin scope).
    pub async fn check(&self, gw: &Gateway, headers: &HeaderMap) -> Result<(), GatewayError> {
        let token = bearer_token(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .filter(|t| !t.is_empty())
        .ok_or(GatewayError::Unauthorized)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut ok = false;
        for h in &self.token_hashes {
            ok |= bool::from(h.ct_eq(&hash));
        }
        if ok {
            return Ok(());
        }
        let p = gw.auth.authenticate(token).await?;
        crate::auth::require_scope(&p, Scope::Admin)
    }
}

/// Whether the store holds an active key with the admin scope.
pub async fn store_has_admin_key(store: &KeyStore) -> bool {
    let now = now_secs();
    store.list_keys(None).await.is_ok_and(|keys| {
        keys.iter()
            .any(|k| k.active_at(now) && k.scopes.contains(&Scope::Admin))
    })
}

#[derive(Clone)]
struct AdminState {
    gw: Arc<Gateway>,
    auth: Arc<AdminAuth>,
}

/// The admin router.
pub fn router(gw: Arc<Gateway>, auth: Arc<AdminAuth>) -> Router {
    Router::new()
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}", get(get_key).delete(revoke_key))
        .route("/v1/admin/tenants", get(list_tenants))
        .route("/v1/admin/tenants/{name}", get(get_tenant).put(put_tenant))
        .route("/v1/admin/plans", get(list_plans))
        .route("/v1/admin/plans/{name}", get(get_plan).put(put_plan))
        .route("/v1/admin/usage", get(usage))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::transport::http::JSON_BODY_LIMIT,
        ))
        .fallback(|| async {
            GatewayError::NotFound(
                "no such admin endpoint; see docs/operations.md, \"Admin API\"".into(),
            )
        })
        .with_state(AdminState { gw, auth })
}

type Answer = Result<Response, GatewayError>;

fn store(gw: &Gateway) -> Result<&KeyStore, GatewayError> {
    gw.auth
        .store()
        .ok_or_else(|| GatewayError::NotReady("no key store".into()))
}

/// Parses a JSON body into `T`, with a clear message when it does not fit.
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("bad JSON body: {e}")))
}

/// Checks tenant and plan names: non-empty, short, no braces, tabs or colons.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), GatewayError> {
    if name.is_empty() || name.len() > 128 || name.contains(['{', '}', '\t', ':', '\n']) {
        return Err(GatewayError::BadRequest(format!(
            "{what} name {name:?} must be 1 to 128 characters without braces, tabs, colons or newlines"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: Vec<Scope>,
    /// Seconds from now.
    #[serde(default)]
    expires_in_secs: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    limits: Option<PlanLimits>,
}

async fn create_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let req: CreateKey = parse_body(&body)?;
    check_name("tenant", &req.tenant)?;
    if let Some(l) = &req.limits {
        let mut problems = l.problems("limits");
        if l.budget_frames.is_some() {
            problems.push(
                "limits.budget_frames: a budget is the tenant's; set it on the tenant or its plan"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(GatewayError::BadRequest(problems.join("; ")));
        }
    }
    let expires_at = match (req.expires_at, req.expires_in_secs) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::BadRequest(
                "give expires_at or expires_in_secs, not both".into(),
            ))
        }
        (at, None) => at,
        (None, Some(secs)) => Some(now_secs().saturating_add(secs)),
    };
    let created = store(&s.gw)?
        .create(NewKey {
            tenant: req.tenant,
            name: req.name,
            scopes: req.scopes,
            expires_at,
            limits: req.limits,
            parent: None,
        })
        .await?;
    tracing::info!(key_id = %created.record.id, tenant = %created.record.tenant, "admin: key created");
    let mut v = created.record.view();
    v["key"] = serde_json::Value::String(created.key);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_keys(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let keys = store(&s.gw)?
        .list_keys(q.get("tenant").map(String::as_str))
        .await?;
    let keys: Vec<_> = keys.iter().map(|k| k.view()).collect();
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

async fn get_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    match store(&s.gw)?.get_key(&id).await? {
        Some(k) => Ok(Json(k.view()).into_response()),
        None => Err(GatewayError::NotFound(format!("no key {id:?}"))),
    }
}

async fn revoke_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    // Forgotten here even if revoking a child fails after the key itself
    // was revoked.
    let revoked = store(&s.gw)?.revoke(&id).await;
    s.gw.auth.forget_key(&id);
    match revoked? {
        Some(r) => {
            for child in &r.minted {
                s.gw.auth.forget_key(child);
            }
            tracing::info!(key_id = %id, tenant = %r.record.tenant, minted = r.minted.len(), "admin: key revoked, with the keys minted from it");
            let mut v = r.record.view();
            v["revoked_with_it"] = serde_json::json!(r.minted);
            Ok(Json(v).into_response())
        }
        None => Err(GatewayError::NotFound(format!("no key {id:?}"))),
    }
}

fn tenant_view(t: &TenantConfig, source: &str) -> serde_json::Value {
    serde_json::json!({ "plan": t.plan, "limits": t.limits, "source": source })
}

async fn list_tenants(State(s): State<AdminState>, headers: HeaderMap) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let mut out: BTreeMap<String, serde_json::Value> =
        s.gw.config
            .tenants
            .iter()
            .map(|(k, t)| (k.clone(), tenant_view(t, "config")))
            .collect();
    for (k, t) in store(&s.gw)?.list_tenants().await? {
        out.insert(k, tenant_view(&t, "store"));
    }
    Ok(Json(serde_json::json!({ "tenants": out })).into_response())
}

async fn get_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let t = s.gw.auth.tenant(&name).await?.unwrap_or_default();
    let effective = s.gw.auth.tenant_limits(&name).await?;
    Ok(Json(serde_json::json!({
        "tenant": name,
        "plan": t.plan,
        "limits": t.limits,
        "effective_limits": effective,
    }))
    .into_response())
}

async fn put_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    check_name("tenant", &name)?;
    let t: TenantConfig = parse_body(&body)?;
    let problems = t.limits.problems("limits");
    if !problems.is_empty() {
        return Err(GatewayError::BadRequest(problems.join("; ")));
    }
    if let Some(plan) = &t.plan {
        if s.gw.auth.plan(plan).await?.is_none() {
            return Err(GatewayError::BadRequest(format!(
                "no plan named {plan:?} (set it first: PUT /v1/admin/plans/{plan})"
            )));
        }
    }
    store(&s.gw)?.put_tenant(&name, &t).await?;
    s.gw.auth.forget_tenancy();
    Ok(Json(tenant_view(&t, "store")).into_response())
}

async fn list_plans(State(s): State<AdminState>, headers: HeaderMap) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (k, p) in &s.gw.config.plans {
        out.insert(
            k.clone(),
            serde_json::json!({ "limits": p, "source": "config" }),
        );
    }
    for (k, p) in store(&s.gw)?.list_plans().await? {
        out.insert(k, serde_json::json!({ "limits": p, "source": "store" }));
    }
    Ok(Json(serde_json::json!({ "plans": out })).into_response())
}

async fn get_plan(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    match s.gw.auth.plan(&name).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(GatewayError::NotFound(format!("no plan {name:?}"))),
    }
}

async fn put_plan(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    check_name("plan", &name)?;
    let p: PlanLimits = parse_body(&body)?;
    let problems = p.problems(&format!("plans.{name}"));
    if !problems.is_empty() {
        return Err(GatewayError::BadRequest(problems.join("; ")));
    }
    store(&s.gw)?.put_plan(&name, &p).await?;
    s.gw.auth.forget_tenancy();
    Ok(Json(p).into_response())
}

async fn usage(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    s.auth.check(&s.gw, &headers).await?;
    let Some(tenant) = q.get("tenant") else {
        return Err(GatewayError::BadRequest("missing tenant".into()));
    };
    Ok(crate::usage::http::report(&s.gw, tenant, &q).await)
}
