//! The process's open-file limit (RLIMIT_NOFILE): raising it at start, and how many inbound
//! connections the servers may hold under it.
//!
//! Every accepted socket is a file descriptor, and a process at its limit can no longer accept,
//! dial out or open a file (EMFILE). Linux starts processes with a soft limit (often 1024) well
//! below the hard one, so each service binary raises its soft limit to the hard limit once at
//! start, and [`Server`](crate::Server) keeps its connections below what the limit leaves.
//! It sits apart from the server because it is process-wide: every listener in the process,
//! and every outbound connection, shares the one limit.

use std::io;

/// Descriptors kept back from inbound connections for everything else the process opens
/// (outbound pooled connections, the control-plane stream, files, the runtime's own): a
/// quarter of the soft limit, at most this many.
pub const MAX_RESERVED_DESCRIPTORS: u64 = 1024;

/// The open-file limits in force. `None`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit: what the process may open now.
    pub soft: Option<u64>,
    /// The hard limit: what an unprivileged process may raise its soft limit to.
    pub hard: Option<u64>,
}

/// The soft limit could not be raised.
#[derive(Debug, thiserror::Error)]
#[error("cannot raise the open-file limit from {from} to {to}: {source}")]
pub struct RaiseNofileError {
    pub from: u64,
    pub to: u64,
    #[source]
    pub source: io::Error,
}

/// The limits in force now.
pub fn nofile_limit() -> NofileLimit {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    NofileLimit {
        soft: limit.current,
        hard: limit.maximum,
    }
}

/// Raises the soft open-file limit to the hard limit and returns the limits then in force.
/// Service binaries call it once at start, before they bind. An unlimited hard limit leaves
/// the soft limit as it is: Linux refuses an unlimited RLIMIT_NOFILE.
pub fn raise_nofile_limit() -> Result<NofileLimit, RaiseNofileError> {
    let current = nofile_limit();
    let (Some(from), Some(to)) = (current.soft, current.hard) else {
        return Ok(current);
    };
    if from >= to {
        return Ok(current);
    }
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(to),
            maximum: Some(to),
        },
    )
    .map_err(|e| RaiseNofileError {
        from,
        to,
        source: e.into(),
    })?;
    Ok(nofile_limit())
}

/// [`raise_nofile_limit`] for a binary's start (after logging is set up): a failure is a
/// warning, as the servers then size their connection limits to the limit in force.
pub fn raise_at_start() {
    match raise_nofile_limit() {
        Ok(limit) => tracing::debug!(?limit, "open-file limit"),
        Err(e) => tracing::warn!("{e}; serving within the current limit"),
    }
}

/// How many inbound connections every server of this process may hold together under the
/// soft limit in force now.
pub fn inbound_connection_budget() -> usize {
    budget_for(nofile_limit().soft)
}

fn budget_for(soft: Option<u64>) -> usize {
    let Some(soft) = soft else {
        return usize::MAX;
    };
    let reserved = (soft / 4).min(MAX_RESERVED_DESCRIPTORS);
    usize::try_from(soft - reserved).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_reserve_for_everything_else() {
        assert_eq!(budget_for(Some(1024)), 768);
        assert_eq!(budget_for(Some(20_000)), 20_000 - 1024);
        assert_eq!(budget_for(Some(1_048_576)), 1_048_576 - 1024);
        assert_eq!(budget_for(Some(8)), 6);
        assert_eq!(budget_for(None), usize::MAX);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let raised = raise_nofile_limit().unwrap();
        assert_eq!(raised, nofile_limit());
        if let (Some(soft), Some(hard)) = (raised.soft, raised.hard) {
            assert_eq!(soft, hard);
        }
    }
}
