//! The ratings binary's `--health-check`, which container health checks run (no shell or curl
//! in a FROM-scratch image). Every service binary shares it through mesh-lib.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::refused;
use test_support::{Killed, free_port};

mod common;

fn health_check(port: u16) -> ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_ratings"))
        .args([&port.to_string(), "--health-check"])
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

#[test]
fn health_check_succeeds_only_while_the_service_answers() {
    let port = free_port();
    assert!(!health_check(port).success(), "nothing listens yet");
    let server = Killed(
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--bind", "127.0.0.1"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Readiness is what is being tested: poll it, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health_check(port).success() {
        assert!(Instant::now() < deadline, "ratings never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    assert!(!health_check(port).success(), "the service is gone");
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let port = free_port();
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--bind", "127.0.0.1"])
            // Colour must go because stderr is a pipe, not because NO_COLOR says so.
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = server.0.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no start-up log line ({e}); stderr so far: {seen:?}"),
        }
    }
    assert!(
        seen.iter().all(|l| !l.contains("\x1b[")),
        "ANSI codes in piped logs: {seen:?}"
    );
}

#[test]
fn an_unknown_variant_is_a_configuration_error_with_exit_64() {
    let stderr = refused(&[("SERVICE_VERSION", "v9")]);
    assert!(
        stderr.contains("invalid SERVICE_VERSION=\"v9\": expected one of v1, v2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_the_mesh_from_its_environment_and_reports_ready_on_the_admin_port() {
    use meshd::daemon::{self, CaSource, MeshdConfig};
    let mut tokens = meshd::server::Tokens::default();
    tokens.insert("default", "bookinfo-ratings", "s3cret");
    let meshd = daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::Ephemeral,
        tokens,
        base: Default::default(),
        config_dirs: Vec::new(),
        trust_domain: "cluster.local".into(),
        cert_ttl: Duration::from_secs(3600),
        dashboard: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    // The root reaches the workload out of band, as a mounted file.
    let ca_file = std::env::temp_dir().join(format!("ratings-mesh-root-{port}.pem"));
    std::fs::write(&ca_file, meshd.root_pem()).unwrap();
    let env = [
        ("MESH_CONTROL_PLANE", meshd.url()),
        ("MESH_CA_FILE", ca_file.display().to_string()),
        ("MESH_TOKEN", "s3cret".to_owned()),
        ("MESH_ADMIN_PORT", admin.to_string()),
    ];
    let ready = |env: &[(&str, String)]| {
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--health-check"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--bind", "127.0.0.1"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(&env) {
        assert!(
            Instant::now() < deadline,
            "ratings never became ready in the mesh"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(meshd.plane.registered(), 1);

    // A request in the mesh: one JSON access-log line on stdout, and Istio metrics on the
    // admin port.
    let url = format!("http://127.0.0.1:{port}/ratings/0");
    let r = mesh::Client::new()
        .get(&url, Default::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stdout = server.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .find(|l| l.contains("/ratings/0"))
            .unwrap()
    })
    .await
    .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["response_code"], 200);
    assert_eq!(entry["workload"], "ratings-v1");
    assert_eq!(entry["response_flags"], "-");
    let text =
        test_support::metrics_text(std::net::SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert!(
        text.contains("istio_requests_total{reporter=\"destination\""),
        "{text}"
    );
    assert!(
        text.contains("destination_workload=\"ratings-v1\""),
        "{text}"
    );
    assert!(
        text.contains("connection_security_policy=\"none\""),
        "{text}"
    );
    meshd.shutdown().await;
}

#[test]
fn joining_the_mesh_without_a_token_or_over_plaintext_is_a_configuration_error() {
    let run = refused;
    let https = ("MESH_CONTROL_PLANE", "https://127.0.0.1:1");
    let ca = ("MESH_CA_FILE", "/nonexistent/root-cert.pem");
    assert!(run(&[https, ca]).contains("bootstrap token"));
    assert!(run(&[https, ("MESH_TOKEN", "t")]).contains("MESH_CA_FILE"));
    let plain = run(&[
        ("MESH_CONTROL_PLANE", "http://127.0.0.1:1"),
        ca,
        ("MESH_TOKEN", "t"),
    ]);
    assert!(plain.contains("meshd serves TLS only"), "{plain}");
}
