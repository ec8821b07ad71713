//! Self-service on the public listener, for the web console: a caller with
//! the `usage` scope sees itself and manages its own tenant's keys.
//!
//! * `GET /v1/me` → `{"tenant", "key_id", "scopes", "limits", "budget":
//!   {"cap_frames", "used_frames"}}`;
//! * `GET /v1/keys` → `{"keys": [{"id", "name", "scopes", "created_at",
//!   "expires_at", "revoked_at"}]}`, the tenant's keys, never hashes;
//! * `POST /v1/keys` `{"name", "scopes"?}` → 201 with the new key (once),
//!   while the plan's `max_keys` is above the tenant's active keys (403
//!   otherwise); never the admin scope, never a scope the caller lacks; the
//!   new key records the caller as its parent and keeps its expiry and
//!   limits;
//! * `DELETE /v1/keys/{id}` → 204 for the tenant's own key (with every key
//!   minted from it), 404 otherwise, 403 when it has a scope the caller
//!   lacks.

use std::sync::Arc;

use crate::transport::http::BodyBytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::auth::keys::{now_secs, KeyRecord, NewKey};
use crate::auth::{require_scope, Principal, Scope};
use crate::error::GatewayError;
use crate::gateway::Gateway;

type Answer = Result<Response, GatewayError>;

/// Serialises self-service key creation in this process, so two requests
/// at once cannot both pass the `max_keys` check.
static CREATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn caller(gw: &Gateway, headers: &HeaderMap) -> Result<Principal, GatewayError> {
    let p = gw
        .authenticate_header(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .await?;
    require_scope(&p, Scope::Usage)?;
    Ok(p)
}

fn store(gw: &Gateway) -> Result<&crate::auth::keys::KeyStore, GatewayError> {
    gw.auth
        .store()
        .ok_or_else(|| GatewayError::NotReady("no key store".into()))
}

fn key_view(k: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": k.id,
        "name": k.name,
        "scopes": k.scopes,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
    })
}

/// `GET /v1/me`.
pub async fn me(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Answer {
    let p = caller(&gw, &headers).await?;
    let (cap, used) = match &gw.metering {
        Some(m) => match m.budgets.used(&p.tenant) {
            Some((used, cap)) => (Some(cap), used),
            None => {
                let period = crate::metering::period_of(now_secs());
                let used = m.store.period_total(&p.tenant, period).await.unwrap_or(0);
                (None, used)
            }
        },
        None => (None, 0),
    };
    Ok(Json(serde_json::json!({
        "tenant": p.tenant,
        "key_id": p.key_id,
        "scopes": p.scopes,
        "limits": *p.limits,
        "budget": { "cap_frames": cap, "used_frames": used },
    }))
    .into_response())
}

/// `GET /v1/keys`.
pub async fn list_keys(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Answer {
    let p = caller(&gw, &headers).await?;
    let keys = store(&gw)?.list_keys(Some(&p.tenant)).await?;
    let keys: Vec<_> = keys.iter().map(key_view).collect();
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
}

/// `POST /v1/keys`.
pub async fn create_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Answer {
    let p = caller(&gw, &headers).await?;
    let req: CreateKey = super::parse_body(&body)?;
    if req.name.len() > 128 {
        return Err(GatewayError::BadRequest(
            "name must be at most 128 characters".into(),
        ));
    }
    let scopes = match req.scopes {
        Some(s) if s.is_empty() => {
            return Err(GatewayError::BadRequest(
                "scopes must name at least one scope".into(),
            ))
        }
        Some(s) => s,
        None => p
            .scopes
            .iter()
            .copied()
            .filter(|s| *s != Scope::Admin)
            .collect(),
    };
    if let Some(s) = scopes
        .iter()
        .find(|s| **s == Scope::Admin || !p.has_scope(**s))
    {
        return Err(GatewayError::Forbidden(format!(
            "a key may not grant the {:?} scope",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )));
    }
    let store = store(&gw)?;
    let _one_at_a_time = CREATE.lock().await;
    let max = p.limits.max_keys.unwrap_or(0);
    let now = now_secs();
    let active = store
        .list_keys(Some(&p.tenant))
        .await?
        .iter()
        .filter(|k| k.active_at(now))
        .count();
    if active >= max as usize {
        return Err(GatewayError::Forbidden(format!(
            "tenant {:?} has {active} active keys and its plan allows {max} (max_keys)",
            p.tenant
        )));
    }
    // A key minted by a key is no freer than it: it keeps the caller's
    // expiry and its own limits (models, rates). Configured keys and tokens
    // have no record here, and nothing of their own to pass on.
    let parent = store
        .get_key(&p.key_id)
        .await?
        .filter(|r| r.tenant == p.tenant);
    // The caller's key as the store has it now, not as a cache had it: a key
    // revoked since it was cached mints nothing (its revocation would not
    // see the child).
    if parent.as_ref().is_some_and(|r| !r.active_at(now)) {
        return Err(GatewayError::Unauthorized);
    }
    let (expires_at, limits, parent) =
        parent.map_or((None, None, None), |r| (r.expires_at, r.limits, Some(r.id)));
    let created = store
        .create(NewKey {
            tenant: p.tenant.clone(),
            name: req.name,
            scopes,
            expires_at,
            limits,
            parent,
        })
        .await?;
    tracing::info!(key_id = %created.record.id, tenant = %p.tenant, "self-service: key created");
    let mut v = key_view(&created.record);
    v["key"] = serde_json::Value::String(created.key);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `DELETE /v1/keys/{id}`.
pub async fn delete_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let p = caller(&gw, &headers).await?;
    let store = store(&gw)?;
    match store.get_key(&id).await? {
        Some(k) if k.tenant == p.tenant => {
            // A key may not undo one that can do more than it can.
            if let Some(s) = k.scopes.iter().find(|s| !p.scopes.contains(s)) {
                return Err(GatewayError::Forbidden(format!(
                    "key {id:?} has the {} scope, which this key lacks: revoke it with a key \
                     that has every scope it has, or through the admin API",
                    serde_json::json!(s)
                )));
            }
            // Forgotten here even if revoking a child fails after the key
            // itself was revoked.
            let revoked = store.revoke(&id).await;
            gw.auth.forget_key(&id);
            if let Some(r) = revoked? {
                for child in &r.minted {
                    gw.auth.forget_key(child);
                }
            }
            tracing::info!(key_id = %id, tenant = %p.tenant, "self-service: key revoked, with the keys minted from it");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(GatewayError::NotFound(format!(
            "no key {id:?} in your tenant"
        ))),
    }
}
