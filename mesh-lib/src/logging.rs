//! Human-readable logs on stderr, filtered by `RUST_LOG` (default `info`), coloured only where
//! a person reads them: ANSI codes in a file or a pipe break `grep` on a saved log.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber. Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Whether log lines get ANSI colours: only when stderr is a terminal, and not when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>).
pub fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        assert!(colour(true, None));
        // An empty NO_COLOR counts as unset, as no-color.org asks.
        assert!(colour(true, set("")));
        assert!(!colour(true, set("1")));
        assert!(!colour(true, set("0")));
        for no_color in [None, set(""), set("1")] {
            assert!(!colour(false, no_color), "{no_color:?}");
        }
    }
}
