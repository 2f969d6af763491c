//! The shipped container files, validated offline (no Docker engine runs here): the compose file's
//! shape and its environment checked by the real binary's `config check`, the Dockerfile's
//! promises, and `docker-compose config -q` when that validator is installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_yaml::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/docker-compose.yml"
    ))
    .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn compose_has_the_stack_with_health_gated_startup() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for name in ["postgres", "redis", "migrations", "gateway"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for name in ["postgres", "redis", "gateway"] {
        assert!(
            c["services"][name]["healthcheck"]["test"].is_sequence(),
            "{name} has a healthcheck"
        );
    }
    let deps = &c["services"]["gateway"]["depends_on"];
    assert_eq!(
        deps["migrations"]["condition"],
        "service_completed_successfully"
    );
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
fn compose_environment_is_a_valid_gateway_config() {
    let c = compose();
    let env = c["services"]["gateway"]["environment"]
        .as_mapping()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["config", "check"]).env_clear();
    for (k, v) in env {
        let value = match v {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
        };
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
    assert!(
        !stdout.contains("pg_password = \"portcullis\""),
        "password masked: {stdout}"
    );
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_status_healthcheck() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build");
    let user = text.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains("root"), "{user}");
    assert!(text.contains("HEALTHCHECK") && text.contains("/status"));
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
            assert!(
                path.exists(),
                "Dockerfile copies {source}, which must exist in the repository"
            );
        }
    }
}

#[test]
fn docker_compose_validator_accepts_the_file() {
    let Ok(out) = Command::new("docker-compose")
        .args([
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker/docker-compose.yml"),
            "config",
            "-q",
        ])
        .output()
    else {
        eprintln!(
            "docker-compose not installed: structural checks above still ran (.ci/run installs it)"
        );
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
