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
