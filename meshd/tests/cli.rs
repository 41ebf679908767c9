//! meshd's `--help`: what it says is what the binary does.

use std::process::Command;

fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The text of `flag`'s entry in `help`, up to the next option.
fn option(help: &str, flag: &str) -> String {
    let start = help.find(&format!("{flag} <")).unwrap();
    let end = help[start + 2..]
        .find("\n      --")
        .map_or(help.len(), |e| e + start + 2);
    help[start..end].to_owned()
}

#[test]
fn help_describes_meshd_and_marks_the_token_directory_required() {
    let help = help();
    assert!(
        help.starts_with("meshd: the mesh control plane. Signs workload certificates"),
        "{help}"
    );
    let token_dir = option(&help, "--token-dir");
    assert!(
        token_dir.contains("Required, unless --token-review is given"),
        "{token_dir}"
    );
    assert!(
        option(&help, "--config-dir").contains("LocalRateLimit"),
        "{help}"
    );
}

#[test]
fn without_a_token_directory_meshd_refuses_to_start_as_its_help_says() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .env_remove("MESHD_TOKEN_DIR")
        .env_remove("MESHD_TOKEN_REVIEW")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--token-dir"), "{err}");
}
