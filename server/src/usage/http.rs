//! `GET /v1/usage` (the caller's tenant, with the `usage` scope); the admin
//! API's `GET /v1/admin/usage` (any tenant, `crate::admin`) answers with the
//! same [`report`].
//!
//! Answers what the store holds, so the newest `flush_interval` of usage
//! may not be there yet.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::transport::http::error_response;

pub use super::Bucket;

/// Longest range one query may cover (a year and a day).
const MAX_RANGE_SECS: u64 = 366 * 86_400;

/// The answer of a usage query.
#[derive(Debug, Serialize)]
pub struct UsageReport {
    /// Tenant.
    pub tenant: String,
    /// Range start (inclusive), unix seconds.
    pub from: u64,
    /// Range end (exclusive), unix seconds.
    pub to: u64,
    /// `hour` or `day`.
    pub granularity: String,
    /// Buckets with usage, by start then model.
    pub buckets: Vec<Bucket>,
    /// Frames over the whole range.
    pub frames: u64,
    /// Pixels over the whole range.
    pub pixels: u64,
}

/// Parses `from`, `to` and `granularity`; `(from, to, bucket_secs, name)`.
fn parse_range(q: &HashMap<String, String>) -> Result<(u64, u64, u64, String), GatewayError> {
    let num = |name: &str| -> Result<u64, GatewayError> {
        q.get(name)
            .ok_or_else(|| GatewayError::BadRequest(format!("missing {name} (unix seconds)")))?
            .parse()
            .map_err(|_| GatewayError::BadRequest(format!("{name} must be unix seconds")))
    };
    let (from, to) = (num("from")?, num("to")?);
    if from >= to {
        return Err(GatewayError::BadRequest("from must be before to".into()));
    }
    if to - from > MAX_RANGE_SECS {
        return Err(GatewayError::BadRequest(
            "the range may cover at most 366 days".into(),
        ));
    }
    let granularity = q.get("granularity").map_or("hour", String::as_str);
    let secs = match granularity {
        "hour" => 3600,
        "day" => 86_400,
        other => {
            return Err(GatewayError::BadRequest(format!(
                "granularity must be hour or day, got {other:?}"
            )))
        }
    };
    Ok((from, to, secs, granularity.to_string()))
}

/// The usage report of `tenant` for the query `q` (`from`, `to`, `granularity`).
pub async fn report(gw: &Gateway, tenant: &str, q: &HashMap<String, String>) -> Response {
    let (from, to, secs, granularity) = match parse_range(q) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let Some(m) = gw.metering.as_ref() else {
        return error_response(&GatewayError::NotReady("metering is off".into()));
    };
    match m.store.buckets(tenant, from, to, secs).await {
        Ok(buckets) => Json(UsageReport {
            tenant: tenant.to_string(),
            from,
            to,
            granularity,
            frames: buckets.iter().map(|b| b.frames).sum(),
            pixels: buckets.iter().map(|b| b.pixels).sum(),
            buckets,
        })
        .into_response(),
        Err(e) => error_response(&GatewayError::NotReady(e.to_string())),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `GET /v1/usage?from=…&to=…&granularity=hour|day` for the caller's tenant.
pub async fn usage(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match gw
        .authenticate_header(bearer(&headers))
        .await
        .and_then(|p| {
            crate::auth::require_scope(&p, crate::auth::Scope::Usage)?;
            Ok(p)
        }) {
        Ok(p) => report(&gw, &p.tenant, &q).await,
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{Buckets, UsageRow};

    #[test]
    fn rows_group_into_hours_per_model() {
        let row = |w, model: &str, frames| UsageRow {
            window_start: w,
            model: model.into(),
            key_id: "k".into(),
            frames,
            pixels: frames * 2,
        };
        let rows = [
            row(0, "a", 1),
            row(60, "a", 2),
            row(3600, "a", 4),
            row(3660, "b", 8),
        ];
        let bucketize = |rows: &[UsageRow], secs| {
            let mut fold = Buckets::new(secs);
            for r in rows {
                fold.add(r.clone());
            }
            fold.finish()
        };
        let b = bucketize(&rows, 3600);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].start, b[0].frames, b[0].pixels), (0, 3, 6));
        assert_eq!((b[2].start, b[2].model.as_str()), (3600, "b"));
        assert_eq!(bucketize(&rows, 86_400).len(), 2);
    }

    #[test]
    fn ranges_are_checked() {
        let q = |s: &str| -> HashMap<String, String> {
            s.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(parse_range(&q("from=10&to=5")).is_err());
        assert!(parse_range(&q("from=0&to=100&granularity=week")).is_err());
        assert!(parse_range(&q("to=100")).is_err());
        assert_eq!(
            parse_range(&q("from=0&to=100&granularity=day")).unwrap().2,
            86_400
        );
    }
}
