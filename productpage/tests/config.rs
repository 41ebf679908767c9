//! Where the session cookie's signing key comes from: `SESSION_SECRET`, `SESSION_SECRET_FILE`,
//! or a secret generated at start; and how a bad one is refused.

use std::path::PathBuf;
use std::process::Command;

use productpage::{Config, MIN_SESSION_SECRET_BYTES, SessionSecret};

/// A file in the temporary directory, removed when dropped. Named per test and process so
/// tests running in parallel never share one.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("productpage-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const UNSET: [(&str, &str); 0] = [];

#[test]
fn without_a_secret_each_config_generates_its_own() {
    let a = Config::from_env(&UNSET).unwrap();
    let b = Config::from_env(&UNSET).unwrap();
    assert!(a.session_secret.is_generated());
    assert!(b.session_secret.is_generated());
    assert_ne!(a.session_secret, b.session_secret);
    assert_ne!(
        Config::default().session_secret,
        Config::default().session_secret
    );
}

#[test]
fn empty_variables_count_as_unset_as_compose_passes_them() {
    for env in [
        [("SESSION_SECRET", ""), ("SESSION_SECRET_FILE", "")],
        [("SESSION_SECRET", ""), ("FLOOD_FACTOR", "0")],
    ] {
        let config = Config::from_env(&env).unwrap();
        assert!(config.session_secret.is_generated(), "{env:?}");
    }
}

#[test]
fn session_secret_is_used_as_given() {
    let value = "0123456789abcdef";
    assert_eq!(value.len(), MIN_SESSION_SECRET_BYTES);
    let config = Config::from_env(&[("SESSION_SECRET", value)]).unwrap();
    assert!(!config.session_secret.is_generated());
    assert_eq!(config.session_secret, SessionSecret::new(value).unwrap());
}

#[test]
fn session_secret_file_is_read_and_trimmed() {
    let file = TempFile::new("trimmed", b"  secret-from-a-mounted-file\n");
    let config = Config::from_env(&[("SESSION_SECRET_FILE", file.path())]).unwrap();
    assert!(!config.session_secret.is_generated());
    assert_eq!(
        config.session_secret,
        SessionSecret::new("secret-from-a-mounted-file").unwrap()
    );
}

#[test]
fn setting_both_is_an_error() {
    let file = TempFile::new("both", b"secret-from-a-mounted-file");
    let err = Config::from_env(&[
        ("SESSION_SECRET", "secret-from-the-environment"),
        ("SESSION_SECRET_FILE", file.path()),
    ])
    .unwrap_err();
    assert_eq!(err.name, "SESSION_SECRET_FILE");
    assert!(err.reason.contains("SESSION_SECRET is set too"), "{err}");
    assert!(
        !err.to_string().contains("secret-from-the-environment"),
        "{err}"
    );
}

#[test]
fn a_short_secret_is_an_error_that_does_not_show_it() {
    let err = Config::from_env(&[("SESSION_SECRET", "fifteen-bytes!!")]).unwrap_err();
    assert_eq!(err.name, "SESSION_SECRET");
    assert!(err.reason.contains("at least 16 bytes, got 15"), "{err}");
    assert!(!err.to_string().contains("fifteen"), "{err}");
}

#[test]
fn an_empty_or_short_file_is_an_error_naming_the_variable() {
    let blank = TempFile::new("blank", b" \n\t\n");
    let err = Config::from_env(&[("SESSION_SECRET_FILE", blank.path())]).unwrap_err();
    assert_eq!(err.name, "SESSION_SECRET_FILE");
    assert_eq!(err.value, blank.path());
    assert_eq!(err.reason, "the file is empty");

    let short = TempFile::new("short", b"short\n");
    let err = Config::from_env(&[("SESSION_SECRET_FILE", short.path())]).unwrap_err();
    assert_eq!(err.name, "SESSION_SECRET_FILE");
    assert!(err.reason.contains("at least 16 bytes, got 5"), "{err}");
}

#[test]
fn an_unreadable_file_is_an_error_naming_the_variable() {
    let missing =
        std::env::temp_dir().join(format!("productpage-{}-does-not-exist", std::process::id()));
    let missing = missing.to_str().unwrap();
    let err = Config::from_env(&[("SESSION_SECRET_FILE", missing)]).unwrap_err();
    assert_eq!(err.name, "SESSION_SECRET_FILE");
    assert!(err.reason.starts_with("cannot read the file: "), "{err}");
}

#[test]
fn the_binary_exits_64_on_a_bad_secret_without_printing_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_productpage"))
        .env("SESSION_SECRET", "too-short")
        .env_remove("SESSION_SECRET_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("productpage: invalid configuration: invalid SESSION_SECRET="),
        "{stderr}"
    );
    assert!(!stderr.contains("too-short"), "{stderr}");
}
