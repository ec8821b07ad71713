//! `[backend]`: which backend runs the models, and the settings of the remote
//! Triton / KServe v2 backend (`[backend.triton]`).

use serde::{Deserialize, Serialize};

/// Which backend the inference workers use.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime on this machine's CPU (the default).
    #[default]
    Onnx,
    /// A remote Triton / KServe v2 inference server over gRPC.
    Triton,
    /// Made-up boxes at a configured cost (`[synthetic]`), for measuring the
    /// gateway without the model. Reported as `synthetic` everywhere.
    Synthetic,
}

/// `[backend]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `onnx`, `triton` or `synthetic`. Default `onnx`.
    pub kind: BackendKind,
    /// Settings for `kind = "triton"`; ignored otherwise.
    pub triton: TritonConfig,
}

/// `[backend.triton]`: the KServe v2 gRPC servers (Triton, MLServer, KServe)
/// that run the model, and how the gateway talks to them.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TritonConfig {
    /// gRPC endpoints, `http://host:port` (Triton's gRPC port is 8001). Each
    /// batch goes to one ready endpoint, in turn; an endpoint that fails its
    /// readiness check is skipped until it passes again. Default
    /// `["http://127.0.0.1:8001"]`.
    pub endpoints: Vec<String>,
    /// Model name on the servers. Default: the name the gateway serves the
    /// model under (`name` in its `model.toml`). Only settable when one model
    /// is served.
    pub model_name: Option<String>,
    /// Model version on the servers; empty lets the server choose (Triton:
    /// its version policy, usually the latest). Default empty.
    pub model_version: String,
    /// Deadline of one inference call, in milliseconds, sent to the server as
    /// `grpc-timeout` and enforced locally. Size it to the slowest batch at
    /// `pipeline.max_batch` plus the network round trip. Default 5000.
    pub timeout_ms: u64,
    /// Deadline for opening a connection and for one health check, in
    /// milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
    /// Further attempts after a call fails with `UNAVAILABLE` (server down,
    /// connection refused or reset), each on another ready endpoint when
    /// there is one. Other errors, deadlines included, are not retried: the
    /// server may still be working on the batch. Default 2.
    pub retries: u32,
    /// Pause before retrying on the same endpoint (there was no other), in
    /// milliseconds; doubles with each attempt. Default 50.
    pub retry_backoff_ms: u64,
    /// How often every endpoint's readiness (`ServerReady`, then `ModelReady`
    /// for each served model, and `ModelMetadata` against `model.toml` when
    /// the endpoint was not ready) is checked, in milliseconds. Default 1000.
    pub health_interval_ms: u64,
    /// How long start-up waits for at least one ready endpoint before it
    /// fails, in milliseconds. Default 30000.
    pub startup_timeout_ms: u64,
    /// HTTP/2 connections per endpoint, shared by all inference workers
    /// (calls are multiplexed on each). Raise it when one connection's
    /// bandwidth limits large batches. Default 1.
    pub connections_per_endpoint: usize,
    /// Largest response accepted, in bytes. NanoDet-g answers ~1.8 MB per
    /// frame. Default 256 MiB.
    pub max_message_bytes: usize,
    /// Threads of the gateway's dedicated gRPC runtime (protobuf encoding and
    /// decoding happens there). Default 2.
    pub runtime_threads: usize,
}

impl Default for TritonConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:8001".into()],
            model_name: None,
            model_version: String::new(),
            timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            retries: 2,
            retry_backoff_ms: 50,
            health_interval_ms: 1_000,
            startup_timeout_ms: 30_000,
            connections_per_endpoint: 1,
            max_message_bytes: 256 << 20,
            runtime_threads: 2,
        }
    }
}

impl BackendConfig {
    /// Adds one line per problem to `problems`. `models` is the number of
    /// configured models (0 = the bundled one).
    pub fn validate(&self, models: usize, problems: &mut Vec<String>) {
        if self.kind != BackendKind::Triton {
            return;
        }
        let t = &self.triton;
        if t.endpoints.is_empty() {
            problems.push("backend.triton.endpoints must list at least one endpoint".into());
        }
        for (i, e) in t.endpoints.iter().enumerate() {
            match e.parse::<tonic::codegen::http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
                Ok(u) if u.scheme_str() == Some("https") => problems.push(format!(
                    "backend.triton.endpoints[{i}] = {e:?}: TLS is not supported, use http:// (e.g. through a TLS sidecar)"
                )),
                _ => problems.push(format!(
                    "backend.triton.endpoints[{i}] = {e:?} is not an http://host:port address"
                )),
            }
        }
        if t.model_name.is_some() && models > 1 {
            problems.push(
                "backend.triton.model_name can only be set when one model is served (each model is looked up under its own name)"
                    .into(),
            );
        }
        for (field, value, min) in [
            ("timeout_ms", t.timeout_ms, 1),
            ("connect_timeout_ms", t.connect_timeout_ms, 1),
            ("health_interval_ms", t.health_interval_ms, 10),
            ("startup_timeout_ms", t.startup_timeout_ms, 1),
        ] {
            if value < min {
                problems.push(format!("backend.triton.{field} must be at least {min}"));
            }
        }
        if t.retries > 10 {
            problems.push("backend.triton.retries must be at most 10".into());
        }
        if t.connections_per_endpoint == 0 || t.connections_per_endpoint > 64 {
            problems.push("backend.triton.connections_per_endpoint must be in 1..=64".into());
        }
        if t.runtime_threads == 0 || t.runtime_threads > 64 {
            problems.push("backend.triton.runtime_threads must be in 1..=64".into());
        }
        if t.max_message_bytes < 1 << 20 {
            problems.push("backend.triton.max_message_bytes must be at least 1048576".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_section_parses_with_defaults_and_reports_bad_endpoints() {
        let text = r#"
            kind = "triton"
            [triton]
            endpoints = ["http://10.0.0.1:8001", "https://secure:8001", "not a url"]
            retries = 3
        "#;
        let c: BackendConfig = toml::from_str(text).unwrap();
        assert_eq!(c.kind, BackendKind::Triton);
        assert_eq!(c.triton.retries, 3);
        assert_eq!(c.triton.timeout_ms, 5_000);
        let mut problems = Vec::new();
        c.validate(0, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("TLS"), "{problems:?}");
        assert!(problems[1].contains("endpoints[2]"), "{problems:?}");
    }

    #[test]
    fn onnx_kind_ignores_the_triton_section() {
        let c = BackendConfig {
            triton: TritonConfig {
                endpoints: vec![],
                ..TritonConfig::default()
            },
            ..BackendConfig::default()
        };
        let mut problems = Vec::new();
        c.validate(3, &mut problems);
        assert!(problems.is_empty());
    }
}
