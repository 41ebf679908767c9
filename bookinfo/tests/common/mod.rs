//! What the end-to-end tests share.

// Each test crate uses a part of it.
#![allow(dead_code)]

/// `found`, or `None` after saying why the test is skipped: a missing tool skips the test on a
/// developer's machine and fails it in CI, which installs it.
pub(crate) fn required<T>(found: Option<T>, what: &str, install: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {what} ({install})"
        );
        eprintln!("skipping: no {what} on this machine ({install})");
    }
    found
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when the test ends, however it ends.
pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
