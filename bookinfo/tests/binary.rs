//! The `bookinfo` binary as a user runs it: it prints the page URL, serves it, and stops
//! cleanly on Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;

#[tokio::test]
async fn prints_the_page_url_serves_it_and_stops_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args([
            "--productpage-port",
            "0",
            "--details-port",
            "0",
            "--reviews-v1-port",
            "0",
            "--reviews-v2-port",
            "0",
            "--reviews-v3-port",
            "0",
            "--ratings-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The URL line is printed once every port is bound: that is the readiness signal.
    let (url, lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let url = lines
            .by_ref()
            .map(Result::unwrap)
            .find_map(|l| {
                l.strip_prefix("Open ")
                    .map(|r| r.split_whitespace().next().unwrap().to_owned())
            })
            .expect("the launcher prints the page URL");
        (url, lines)
    })
    .await
    .unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/productpage"),
        "{url}"
    );

    let page = mesh::Client::new()
        .get(&url, Default::default(), Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(page.body()).contains("<title>Simple Bookstore App</title>"));

    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(rest.iter().any(|l| l == "Bookinfo stopped."), "{rest:?}");
}

#[test]
fn help_describes_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--bind", "--productpage-port", "--ratings-version"] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    // The launcher's own description, not the crate's ("… and its end-to-end tests").
    assert!(
        help.starts_with("Runs the whole Bookinfo app on this machine"),
        "{help}"
    );
    let option = |flag: &str| {
        let start = help.find(&format!("{flag} <")).unwrap();
        let end = help[start + 2..]
            .find("\n      --")
            .map_or(help.len(), |e| e + start + 2);
        help[start..end].to_owned()
    };
    let config_dir = option("--config-dir");
    for kind in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "LocalRateLimit",
    ] {
        assert!(config_dir.contains(kind), "{kind}: {config_dir}");
    }
    let ratings_version = option("--ratings-version");
    let words: Vec<&str> = ratings_version
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    for variant in [
        "v1",
        "v2",
        "v-faulty",
        "v-delayed",
        "v-unavailable",
        "v-unhealthy",
    ] {
        assert!(words.contains(&variant), "{variant}: {ratings_version}");
    }
}

#[test]
fn ratings_v2_is_refused_with_where_to_run_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args(["--ratings-version", "v2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("start ratings alone with SERVICE_VERSION=v2 DB_TYPE=mysql"),
        "{err}"
    );
    assert!(!err.contains("means MongoDB"), "{err}");
}

#[test]
fn a_bad_ratings_variant_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args(["--ratings-version", "v9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("'v9'") && err.contains("expected one of v1") && err.contains("v-faulty"),
        "{err}"
    );
}
