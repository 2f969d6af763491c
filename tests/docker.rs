//! The shipped container files, validated offline (no Docker engine runs here): the compose file's
//! shape, its environment (with docker/.env.example's secrets) checked by the real binary's
//! `config check` against a certificate made by the compose file's own `certs` job, the
//! Dockerfile's promises (pinned images, a toolchain new enough for Cargo.lock), the monitoring
//! services (Prometheus's config through `promtool`, Grafana's provisioning, and a dashboard whose
//! every query parses and names only metrics the gateway exports), and `docker-compose config`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/docker-compose.yml");
const ENV_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/.env.example");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker/docker-compose.yml")).unwrap()
}

/// `KEY=value` lines of docker/.env.example.
fn env_example() -> BTreeMap<String, String> {
    read("docker/.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Compose's `${NAME}` / `${NAME:?message}` interpolation from `vars`; an unknown name fails.
fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        let name = inner.split(':').next().unwrap();
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in docker/.env.example"));
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `(major, minor, patch)` of `1.89`, `1.89.0`.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap());
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The images of the Dockerfile's `FROM` lines and of the compose services (ours excluded).
fn base_images() -> Vec<String> {
    let mut images: Vec<String> = read("docker/Dockerfile")
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let c = compose();
    for (_, service) in c["services"].as_mapping().unwrap() {
        if let Some(image) = service["image"].as_str() {
            if image != "portcullis:local" {
                images.push(image.to_string());
            }
        }
    }
    images
}

#[test]
fn compose_has_the_stack_with_health_gated_startup() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for name in [
        "postgres",
        "redis",
        "certs",
        "migrations",
        "gateway",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for name in ["postgres", "redis", "gateway"] {
        assert!(
            c["services"][name]["healthcheck"]["test"].is_sequence(),
            "{name} has a healthcheck"
        );
    }
    let deps = &c["services"]["gateway"]["depends_on"];
    for job in ["certs", "migrations"] {
        assert_eq!(deps[job]["condition"], "service_completed_successfully");
    }
    assert_eq!(deps["postgres"]["condition"], "service_healthy");
    assert_eq!(deps["redis"]["condition"], "service_healthy");
    let ports: Vec<String> = c["services"]["gateway"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for port in [
        "8000:8000",
        "8443:8443",
        "127.0.0.1:8001:8001",
        "127.0.0.1:8444:8444",
        "127.0.0.1:8100:8100",
    ] {
        assert!(
            ports.contains(&port.to_string()),
            "{port} published: {ports:?}"
        );
    }
    let command = c["services"]["migrations"]["command"][0].as_str().unwrap();
    assert!(
        command.contains("portcullis migrations bootstrap"),
        "{command}"
    );
}

#[test]
fn secrets_come_from_the_env_file_not_literals() {
    let text = read("docker/docker-compose.yml");
    let example = env_example();
    for (name, value) in &example {
        assert!(
            text.contains(&format!("${{{name}:?")),
            "{name} is required from docker/.env"
        );
        assert!(
            !text.contains(value.as_str()),
            "{name}'s example value is not a literal"
        );
    }
    let c = compose();
    let gateway = c["services"]["gateway"]["environment"]
        .as_mapping()
        .unwrap();
    for name in ["PORTCULLIS_PG_PASSWORD", "PORTCULLIS_ADMIN_TOKEN"] {
        let value = gateway[name].as_str().unwrap();
        assert!(
            value.starts_with("${") && value.ends_with('}'),
            "{name}: {value}"
        );
    }
    let postgres = c["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
        .as_str()
        .unwrap();
    assert!(postgres.starts_with("${POSTGRES_PASSWORD:?"), "{postgres}");
    let ignored = read(".gitignore");
    assert!(
        ignored.lines().any(|l| l.trim() == "docker/.env"),
        "docker/.env is never committed"
    );
}

#[test]
fn compose_environment_is_a_valid_gateway_config_with_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let on_volume = "/var/lib/portcullis/tls";
    let c = compose();
    let volumes: Vec<&str> = c["services"]["gateway"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        volumes.contains(&format!("tls:{on_volume}:ro").as_str()),
        "{volumes:?}"
    );
    assert!(c["volumes"].as_mapping().unwrap().contains_key("tls"));

    // The compose file's own certificate job, run here on a temporary directory, twice: the
    // second run keeps the first certificate.
    let job = c["services"]["certs"]["command"][0].as_str().unwrap();
    let job = job.replace(on_volume, tls_dir.to_str().unwrap());
    for _ in 0..2 {
        let out = Command::new("sh").args(["-c", &job]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cert = std::fs::read(tls_dir.join("cert.pem")).unwrap();
    let out = Command::new("sh").args(["-c", &job]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(tls_dir.join("cert.pem")).unwrap(),
        cert,
        "kept"
    );

    let vars = env_example();
    let env = c["services"]["gateway"]["environment"]
        .as_mapping()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["config", "check"]).env_clear();
    for (k, v) in env {
        let value = match v {
            Value::String(s) => interpolate(s, &vars),
            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
        };
        let value = value.replace(on_volume, tls_dir.to_str().unwrap());
        cmd.env(k.as_str().unwrap(), value);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "config check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("database = \"postgres\""), "{stdout}");
    assert!(stdout.contains("cert.pem"), "{stdout}");
    for secret in vars.values() {
        assert!(!stdout.contains(secret.as_str()), "masked: {stdout}");
    }
}

#[test]
fn healthchecks_ask_the_node_with_its_own_settings() {
    // `portcullis health` reads the container's environment: the check follows its listeners
    // and sends its admin token when it needs one.
    let c = compose();
    let test: Vec<&str> = c["services"]["gateway"]["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(test, ["CMD", "portcullis", "health"]);
    let dockerfile = read("docker/Dockerfile");
    let check = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .lines()
        .take(2)
        .collect::<String>();
    assert!(check.contains(r#"CMD ["portcullis", "health"]"#), "{check}");
}

#[test]
fn dockerfile_is_multi_stage_non_root() {
    let text = read("docker/Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build");
    let user = text.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains("root"), "{user}");
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(source).exists(),
                "Dockerfile copies {source}, which must exist in the repository"
            );
        }
    }
}

/// Every `path = "…"` in the root manifest (the workspace's crates and the patched hyper) is
/// copied into the build stage: otherwise `cargo build --locked` in the image cannot find it.
#[test]
fn dockerfile_copies_every_local_crate() {
    let manifest = read("Cargo.toml");
    let docker = read("docker/Dockerfile");
    let copied: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    let paths: Vec<&str> = manifest
        .split("path = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(paths.contains(&"vendor/hyper"), "{paths:?}");
    for path in paths {
        assert!(
            copied
                .iter()
                .any(|c| path == *c || path.starts_with(&format!("{c}/"))),
            "the Dockerfile does not copy {path}: {copied:?}"
        );
    }
}

#[test]
fn every_image_is_pinned_to_an_exact_version() {
    let images = base_images();
    assert!(images.len() >= 4, "{images:?}");
    for image in images {
        let (name, tag) = image.split_once(':').unwrap_or((&image, ""));
        // Prometheus tags its releases `v3.5.0`.
        let version = tag.split('-').next().unwrap().trim_start_matches('v');
        let dots = version.matches('.').count();
        // Debian and Postgres name a release by two numbers (12.15, 16.15); the others by three.
        let needed = if matches!(name, "debian" | "postgres") {
            1
        } else {
            2
        };
        assert!(
            dots >= needed && version.split('.').all(|p| p.parse::<u64>().is_ok()),
            "{image} is not pinned to an exact version"
        );
    }
}

/// The highest `rust-version` among the locked packages outside this workspace.
fn locked_rust_version() -> ((u64, u64, u64), String) {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Json = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&Json> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !members.contains(&&p["id"]))
        .filter_map(|p| {
            let rv = p["rust_version"].as_str()?;
            let (name, v) = (p["name"].as_str()?, p["version"].as_str()?);
            Some((version(rv), format!("{name} {v} needs rust {rv}")))
        })
        .max()
        .expect("locked packages declare rust-version")
}

#[test]
fn toolchains_are_new_enough_for_every_locked_package() {
    let (needed, which) = locked_rust_version();

    let dockerfile = read("docker/Dockerfile");
    let from = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust builder image");
    let tag = from.split_whitespace().next().unwrap();
    let builder = version(tag.split('-').next().unwrap());
    assert!(
        builder >= needed,
        "the Dockerfile builds with rust {tag}, but {which}"
    );

    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let declared = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    assert!(
        version(declared) >= needed,
        "Cargo.toml says rust-version = {declared}, but {which}"
    );
    assert!(
        builder >= version(declared),
        "the Dockerfile's rust {tag} < {declared}"
    );
}

/// `docker-compose` (the offline validator .ci/run installs): missing fails under CI.
fn docker_compose() -> Option<Command> {
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok()
    {
        let mut cmd = Command::new("docker-compose");
        // Only what the command line gives: no docker/.env of a developer's own.
        cmd.env_remove("POSTGRES_PASSWORD")
            .env_remove("PORTCULLIS_ADMIN_TOKEN");
        return Some(cmd);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "docker-compose is not installed (.ci/run installs it)"
    );
    eprintln!("docker-compose not installed: the checks above still ran");
    None
}

#[test]
fn docker_compose_accepts_the_file_with_the_example_env() {
    let Some(mut cmd) = docker_compose() else {
        return;
    };
    let out = cmd
        .args(["--env-file", ENV_EXAMPLE, "-f", COMPOSE, "config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn docker_compose_refuses_to_start_without_the_secrets() {
    let Some(mut cmd) = docker_compose() else {
        return;
    };
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = cmd
        .arg("--env-file")
        .arg(empty.path())
        .args(["-f", COMPOSE, "config", "-q"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("docker/.env.example"), "{stderr}");
}

/// `promtool` (the `prometheus` package .ci/run installs): missing fails under CI.
fn promtool() -> Option<Command> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some(Command::new("promtool"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is not installed (.ci/run installs the prometheus package)"
    );
    eprintln!("promtool not installed: the checks above still ran");
    None
}

/// The `source:target` bind mounts of a compose service.
fn mounts(service: &str) -> Vec<(String, String)> {
    compose()["services"][service]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let mut parts = v.as_str().unwrap().split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source
                .starts_with("./")
                .then(|| (source.to_string(), target.to_string()))
        })
        .collect()
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap()
}

#[test]
fn prometheus_scrapes_every_gateway_status_listener() {
    let c = compose();
    let gateway = &c["services"]["gateway"];
    let status = gateway["environment"]["PORTCULLIS_STATUS_LISTEN"]
        .as_str()
        .unwrap();
    let port = status.rsplit(':').next().unwrap();
    assert_eq!(status, format!("0.0.0.0:{port}"), "reachable by Prometheus");
    assert_eq!(
        mounts("prometheus"),
        [(
            "./prometheus/prometheus.yml".to_string(),
            "/etc/prometheus/prometheus.yml".to_string()
        )]
    );
    let config = yaml("docker/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["metrics_path"], "/metrics");
    let targets: Vec<&str> = jobs[0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, [format!("gateway:{port}")]);
    let Some(mut promtool) = promtool() else {
        return;
    };
    let out = promtool
        .args(["check", "config"])
        .arg(Path::new(ROOT).join("docker/prometheus/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_is_provisioned_with_prometheus_and_our_dashboard() {
    let mut grafana = mounts("grafana");
    grafana.sort();
    assert_eq!(
        grafana,
        [
            (
                "./grafana/dashboards".to_string(),
                "/var/lib/grafana/dashboards".to_string()
            ),
            (
                "./grafana/provisioning".to_string(),
                "/etc/grafana/provisioning".to_string()
            ),
        ]
    );
    let sources = yaml("docker/grafana/provisioning/datasources/prometheus.yml");
    let source = &sources["datasources"][0];
    assert_eq!(source["type"], "prometheus");
    assert_eq!(source["url"], "http://prometheus:9090");
    let providers = yaml("docker/grafana/provisioning/dashboards/portcullis.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let dashboard: Json =
        serde_json::from_str(&read("docker/grafana/dashboards/portcullis.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{}", panels.len());
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            source["uid"].as_str(),
            "{}",
            panel["title"]
        );
    }
}

/// Every metric family name the gateway can export (per-request families recorded once).
fn exported_names() -> Vec<String> {
    use portcullis::metrics::{Groups, Metrics, Probes, RequestLabels};
    let metrics = Metrics::standalone();
    let handles = metrics.request_handles(
        &RequestLabels {
            service: "s",
            route: "r",
            code: 200,
            source: "service",
            consumer: "",
        },
        Groups {
            status_code: true,
            latency: true,
            bandwidth: true,
        },
    );
    handles.requests.unwrap().inc();
    let text = metrics.render(Probes {
        datastore: true,
        postgres: Some(true),
        redis: Some(true),
        plugins: portcullis::metrics::PluginReadings {
            log_queues: vec![("id".into(), portcullis::metrics::QueueReading::default())],
            ..Default::default()
        },
        upstream_health: Some(vec![portcullis::metrics::TargetHealthReading {
            upstream: "u".into(),
            target: "127.0.0.1:80".into(),
            address: "127.0.0.1:80".into(),
            state: portcullis::metrics::TargetHealthState::Healthy,
        }]),
    });
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        names.push(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.push(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn every_dashboard_query_parses_and_names_exported_metrics() {
    let dashboard: Json =
        serde_json::from_str(&read("docker/grafana/dashboards/portcullis.json")).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let exported = exported_names();
    let name = regex::Regex::new(r"\b(?:kong|portcullis)_[a-z0-9_]+").unwrap();
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names: Vec<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            assert!(
                exported.iter().any(|e| e == n),
                "{n} is not exported: {expr}"
            );
            used.insert(n.to_string());
        }
    }
    // Kong's dashboard families, the OAuth2, token lookup, cluster and target health ones are all
    // shown.
    for family in [
        "kong_http_requests_total",
        "kong_kong_latency_ms_bucket",
        "kong_upstream_latency_ms_bucket",
        "kong_request_latency_ms_bucket",
        "kong_bandwidth_bytes",
        "kong_nginx_connections_total",
        "kong_datastore_reachable",
        "portcullis_oauth2_tokens_issued_total",
        "portcullis_oauth2_token_checks_total",
        "portcullis_token_lookups_total",
        "portcullis_token_lookup_ms_bucket",
        "portcullis_cluster_notices_total",
        "portcullis_cluster_resyncs_total",
        "kong_upstream_target_health",
    ] {
        assert!(used.contains(family), "{family} has no panel");
    }
    let Some(mut promtool) = promtool() else {
        return;
    };
    // promtool parses PromQL when it checks recording rules: one rule per query.
    let rules: Vec<Json> = exprs
        .iter()
        .enumerate()
        .map(
            |(i, expr)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}),
        )
        .collect();
    let file = tempfile::NamedTempFile::with_suffix(".yml").unwrap();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), serde_json::to_string(&doc).unwrap()).unwrap();
    let out = promtool
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
