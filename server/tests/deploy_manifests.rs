//! The deployment files agree with the code: ports, probes, the config the
//! manifests mount, the ONNX Runtime version, and every metric the dashboard
//! and alert rules use. No container engine runs here; these checks are
//! what keeps the manifests honest.

mod support;

use std::path::PathBuf;
use std::process::Command;

use framegate::config::Config;
use framegate::metrics::METRIC_NAMES;
use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    support::repo_root().join("deploy").join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const QUIC_PORT: u64 = 8443;

#[test]
fn kubernetes_manifests_match_the_defaults() {
    let http_port = u64::from(Config::default().http.listen.port());
    let dep = yaml("k8s/deployment.yaml");
    assert_eq!(dep["kind"], "Deployment");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<(u64, String, String)> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        ports.contains(&(http_port, "TCP".into(), "http".into())),
        "{ports:?}"
    );
    assert!(
        ports.contains(&(QUIC_PORT, "UDP".into(), "quic".into())),
        "{ports:?}"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");

    // The mounted configuration parses and validates, and listens on the
    // container port on all interfaces.
    let cm = yaml("k8s/configmap.yaml");
    let toml_text = cm["data"]["framegate.toml"].as_str().unwrap();
    let config: Config = toml::from_str(toml_text).expect("configmap framegate.toml parses");
    config
        .validate()
        .expect("configmap framegate.toml is valid");
    assert_eq!(u64::from(config.http.listen.port()), http_port);
    assert!(config.http.listen.ip().is_unspecified());
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        args.contains(&format!("{mount}/framegate.toml").as_str()),
        "{args:?}"
    );

    let svc = yaml("k8s/service.yaml");
    let sports: Vec<(u64, String)> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        sports.contains(&(http_port, "TCP".into())) && sports.contains(&(QUIC_PORT, "UDP".into()))
    );
    assert_eq!(
        yaml("k8s/hpa.yaml")["spec"]["scaleTargetRef"]["name"],
        dep["metadata"]["name"]
    );
    assert_eq!(
        yaml("k8s/pdb.yaml")["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let kust = yaml("k8s/kustomization.yaml");
    for r in kust["resources"].as_sequence().unwrap() {
        assert!(
            deploy(&format!("k8s/{}", r.as_str().unwrap())).exists(),
            "{r:?}"
        );
    }
}

#[test]
fn compose_and_dockerfile_match_the_defaults() {
    let compose = yaml("compose.yml");
    for gw in ["framegate-a", "framegate-b"] {
        let s = &compose["services"][gw];
        let ports: Vec<&str> = s["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(ports.iter().any(|p| p.ends_with(":8080/tcp")), "{ports:?}");
        assert!(
            ports
                .iter()
                .any(|p| p.ends_with(&format!(":{QUIC_PORT}/udp"))),
            "{ports:?}"
        );
    }
    for svc in ["redis", "prometheus", "grafana"] {
        assert!(compose["services"][svc].is_mapping(), "compose lacks {svc}");
    }
    let docker = std::fs::read_to_string(deploy("docker/Dockerfile")).unwrap();
    assert!(docker.contains("EXPOSE 8080/tcp 8443/udp"));
    assert!(docker.contains("USER 10001"), "runs as non-root");
    let ort = framegate::backend::onnx::ORT_LIB_NAME;
    assert!(docker.contains(ort), "Dockerfile must ship {ort}");
    let unit = std::fs::read_to_string(deploy("systemd/framegate.service")).unwrap();
    assert!(unit.contains(ort) && unit.contains("KillSignal=SIGTERM"));
    let prom = yaml("prometheus/prometheus.yml");
    assert_eq!(prom["scrape_configs"][0]["metrics_path"], "/metrics");
}

/// Metric names a PromQL text uses.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("framegate_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n;
            }
        }
        out.push(name.to_string());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(deploy("grafana/framegate.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    for p in json["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let used: Vec<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .chain(metric_names(&alerts))
        .collect();
    assert!(used.len() > 10);
    for name in used {
        assert!(
            METRIC_NAMES.contains(&name.as_str()),
            "{name} is not an exported metric"
        );
    }
    for needed in [
        "framegate_frames_answered_total",
        "framegate_stage_duration_seconds",
        "framegate_ingress_queue_depth",
        "framegate_batch_size",
        "framegate_frames_dropped_total",
        "framegate_sessions_open",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needed)),
            "dashboard lacks {needed}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml"))
        .output()
        .expect("promtool (Debian package `prometheus`; `make test` installs it)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}
