//! Tenants and plans: who may send how much.
//!
//! ```toml
//! [plans.free]
//! frames_per_sec = 5.0
//! burst = 10
//! max_sessions = 2
//! detect_per_minute = 100
//!
//! [plans.pro]
//! frames_per_sec = 60.0
//! burst = 120
//! weight = 4
//!
//! [tenants.acme]
//! plan = "pro"
//! [tenants.acme.limits]      # overrides of the plan for this tenant
//! max_sessions = 50
//! ```
//!
//! A tenant not listed gets the plan named `default` when there is one, and no
//! limits otherwise. An API key may carry its own overrides (stored with the
//! key); the effective limits are plan, then tenant overrides, then key
//! overrides ([`PlanLimits::overlay`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of the plan given to tenants that name none.
pub const DEFAULT_PLAN: &str = "default";

/// Limits of a plan. Every field is optional: unset means no limit (or, for
/// `weight`, 1).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlanLimits {
    /// Sustained frames per second over all of a tenant's (or key's) streams
    /// and one-shot requests (GCRA rate).
    pub frames_per_sec: Option<f64>,
    /// Frames that may arrive at once above the sustained rate (GCRA burst).
    /// Default: one second's worth of `frames_per_sec`, at least 1.
    pub burst: Option<u32>,
    /// Streaming sessions open at the same time.
    pub max_sessions: Option<u32>,
    /// One-shot `POST /v1/detect` requests per minute.
    pub detect_per_minute: Option<u32>,
    /// Models this tenant may use. Unset: every model.
    pub models: Option<Vec<String>>,
    /// Budget cap in frames per billing month (see `[metering]`).
    pub budget_frames: Option<u64>,
    /// Share of the batcher under contention (deficit round robin weight).
    /// Default 1.
    pub weight: Option<u32>,
    /// API keys a tenant may create for itself (self-service). Unset: none
    /// (only the admin API creates keys).
    pub max_keys: Option<u32>,
}

impl PlanLimits {
    /// These limits with every field that `over` sets replaced by its value.
    pub fn overlay(&self, over: &PlanLimits) -> PlanLimits {
        PlanLimits {
            frames_per_sec: over.frames_per_sec.or(self.frames_per_sec),
            burst: over.burst.or(self.burst),
            max_sessions: over.max_sessions.or(self.max_sessions),
            detect_per_minute: over.detect_per_minute.or(self.detect_per_minute),
            models: over.models.clone().or_else(|| self.models.clone()),
            budget_frames: over.budget_frames.or(self.budget_frames),
            weight: over.weight.or(self.weight),
            max_keys: over.max_keys.or(self.max_keys),
        }
    }

    /// The GCRA burst: `burst`, else one second of `frames_per_sec` (≥ 1).
    pub fn effective_burst(&self) -> u32 {
        match (self.burst, self.frames_per_sec) {
            (Some(b), _) => b.max(1),
            (None, Some(r)) => (r.ceil() as u32).max(1),
            (None, None) => 1,
        }
    }

    /// The deficit round robin weight (default 1, at least 1).
    pub fn effective_weight(&self) -> u32 {
        self.weight.unwrap_or(1).max(1)
    }

    /// Whether `model` is allowed.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// Problems with these limits, each prefixed with `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = self.frames_per_sec {
            if !(r.is_finite() && r > 0.0) {
                out.push(format!("{at}.frames_per_sec must be a positive number"));
            }
        }
        if self.burst == Some(0) {
            out.push(format!("{at}.burst must be at least 1"));
        }
        if self.weight == Some(0) || self.weight.is_some_and(|w| w > 1000) {
            out.push(format!("{at}.weight must be in 1..=1000"));
        }
        if self.models.as_ref().is_some_and(|m| m.is_empty()) {
            // An empty list allows no model: every frame would be refused.
            out.push(format!(
                "{at}.models must name at least one model (leave it out to allow every model)"
            ));
        }
        out
    }
}

/// One tenant.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// The plan (a key of `[plans]`). Default: the plan named `default`, if any.
    pub plan: Option<String>,
    /// Overrides of the plan's limits for this tenant.
    pub limits: PlanLimits,
}

/// Resolves a tenant's effective limits from `[plans]` and `[tenants]`.
pub fn resolve(
    plans: &BTreeMap<String, PlanLimits>,
    tenants: &BTreeMap<String, TenantConfig>,
    tenant: &str,
) -> PlanLimits {
    let t = tenants.get(tenant);
    let plan_name = t.and_then(|t| t.plan.as_deref()).unwrap_or(DEFAULT_PLAN);
    let base = plans.get(plan_name).cloned().unwrap_or_default();
    match t {
        Some(t) => base.overlay(&t.limits),
        None => base,
    }
}

/// Problems in `[plans]` and `[tenants]`.
pub fn problems(
    plans: &BTreeMap<String, PlanLimits>,
    tenants: &BTreeMap<String, TenantConfig>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, p) in plans {
        out.extend(p.problems(&format!("plans.{name}")));
    }
    for (name, t) in tenants {
        if name.is_empty() {
            out.push("tenants: a tenant name is empty".into());
        }
        if let Some(plan) = &t.plan {
            if !plans.contains_key(plan) {
                out.push(format!(
                    "tenants.{name}.plan: no plan named {plan:?} in [plans]"
                ));
            }
        }
        out.extend(t.limits.problems(&format!("tenants.{name}.limits")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_overrides_plan_and_unknown_tenant_gets_default() {
        let plans: BTreeMap<String, PlanLimits> = toml::from_str(
            "[default]\nframes_per_sec = 5.0\n[pro]\nframes_per_sec = 60.0\nweight = 4\nmax_sessions = 3\n",
        )
        .unwrap();
        let tenants: BTreeMap<String, TenantConfig> =
            toml::from_str("[acme]\nplan = \"pro\"\n[acme.limits]\nmax_sessions = 50\n").unwrap();
        let acme = resolve(&plans, &tenants, "acme");
        assert_eq!(acme.frames_per_sec, Some(60.0));
        assert_eq!(acme.max_sessions, Some(50));
        assert_eq!(acme.effective_weight(), 4);
        assert_eq!(acme.effective_burst(), 60);
        let other = resolve(&plans, &tenants, "other");
        assert_eq!(other.frames_per_sec, Some(5.0));
        assert_eq!(other.effective_weight(), 1);
        assert!(problems(&plans, &tenants).is_empty());
        let key = acme.overlay(&PlanLimits {
            frames_per_sec: Some(1.0),
            ..Default::default()
        });
        assert_eq!(key.frames_per_sec, Some(1.0));
        assert_eq!(key.max_sessions, Some(50));
    }

    #[test]
    fn bad_plans_are_reported() {
        let plans: BTreeMap<String, PlanLimits> =
            toml::from_str("[p]\nframes_per_sec = -1.0\nburst = 0\nweight = 0\nmodels = []\n")
                .unwrap();
        let tenants: BTreeMap<String, TenantConfig> =
            toml::from_str("[t]\nplan = \"missing\"\n").unwrap();
        let p = problems(&plans, &tenants);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.contains("plans.p.models")), "{p:?}");
        assert!(resolve(&plans, &tenants, "x").allows_model("m"));
        let limited = PlanLimits {
            models: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert!(limited.allows_model("a") && !limited.allows_model("b"));
    }
}
