//! What one listener allows its clients: how many connections, how long a connection may stay
//! silent, half-sent or idle, and how large a request head may be.
//!
//! These are the server's defences against clients that hold resources without using them
//! (idle and slow connections exhausting file descriptors, oversized headers exhausting
//! memory). They live in one typed value so service, gateway and admin ports, which all serve
//! through [`Server`](super::Server), get the same defaults, modelled on Envoy's.

use std::time::Duration;

/// Default [`ServerLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default [`ServerLimits::first_byte_timeout`]: Envoy's `listener_filters_timeout`, which
/// bounds the same wait (its TLS inspector peeking at the first bytes).
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Default [`ServerLimits::header_read_timeout`]. A real client sends a request head in one
/// round trip; this leaves slow links ample room and still caps how long a slowloris client
/// holds a connection.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`ServerLimits::body_read_timeout`]. Envoy bounds the same wait with its stream
/// idle timeout (5 minutes); nothing in the mesh uploads slowly, and a body that stops
/// arriving holds its connection and the service's task until this runs out.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Default [`ServerLimits::idle_timeout`]. Longer than every client pool that reuses our
/// connections — the mesh client's 30 s (`outbound::DEFAULT_POOL_IDLE_TIMEOUT`), and the 90 s
/// of hyper-util's and Go's clients — so a client retires an idle connection before the server
/// closes it, and never sends a request into a connection the server is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default [`ServerLimits::close_timeout`]: Envoy's `drain_timeout` for the same exchange.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default [`ServerLimits::max_request_headers_bytes`]: Envoy's `max_request_headers_kb` of
/// 60 KiB, above which it answers 431.
pub const DEFAULT_MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;

/// Default [`ServerLimits::h2_keep_alive_interval`].
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Default [`ServerLimits::h2_keep_alive_timeout`]: hyper's own default.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The smallest [`ServerLimits::max_request_headers_bytes`]: hyper's smallest HTTP/1 buffer.
pub const MIN_REQUEST_HEADERS_BYTES: usize = 8192;

/// Limits of one listener. Every field has a default (the `DEFAULT_*` consts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections the listener serves at once. When it is full, a new connection makes the
    /// connection idle the longest close gracefully; when none is idle (every one has a
    /// request in flight) the new one is closed at once. Never more than the process's
    /// open-file limit allows (see [`crate::nofile`]).
    pub max_connections: usize,
    /// How long a new connection may send nothing (no TLS ClientHello, no request) before it
    /// is closed.
    pub first_byte_timeout: Duration,
    /// How long an HTTP/1 request head may take from its first byte to its last before the
    /// connection is closed.
    pub header_read_timeout: Duration,
    /// How long a request body may go without a byte from the client before its read fails
    /// and the connection is closed.
    pub body_read_timeout: Duration,
    /// How long a connection may have no request in flight (HTTP/1 and HTTP/2) before it is
    /// closed gracefully.
    pub idle_timeout: Duration,
    /// How long a connection closed for idleness, eviction or shutdown may go on without a
    /// request in flight (HTTP/2 exchanges GOAWAY and a PING first) before it is dropped.
    pub close_timeout: Duration,
    /// Largest request head, in bytes: HTTP/1's request line and headers (larger: 431
    /// `Request Header Fields Too Large`), HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE` (larger:
    /// 431 on that stream).
    pub max_request_headers_bytes: usize,
    /// How often an HTTP/2 connection that has received nothing for that long is PINGed.
    pub h2_keep_alive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub h2_keep_alive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            max_request_headers_bytes: DEFAULT_MAX_REQUEST_HEADERS_BYTES,
            h2_keep_alive_interval: DEFAULT_H2_KEEP_ALIVE_INTERVAL,
            h2_keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
        }
    }
}

/// A [`ServerLimits`] value the server cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("max_connections must be at least 1")]
    NoConnections,
    #[error("{0} must be longer than zero")]
    ZeroTimeout(&'static str),
    #[error(
        "max_request_headers_bytes must be between {MIN_REQUEST_HEADERS_BYTES} and {max}, got {got}",
        max = u32::MAX
    )]
    HeaderSize { got: usize },
}

impl ServerLimits {
    /// Checks that every field is one the server can apply.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        for (name, value) in [
            ("first_byte_timeout", self.first_byte_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
            ("h2_keep_alive_interval", self.h2_keep_alive_interval),
            ("h2_keep_alive_timeout", self.h2_keep_alive_timeout),
        ] {
            if value.is_zero() {
                return Err(LimitsError::ZeroTimeout(name));
            }
        }
        let size = self.max_request_headers_bytes;
        if size < MIN_REQUEST_HEADERS_BYTES || u32::try_from(size).is_err() {
            return Err(LimitsError::HeaderSize { got: size });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_outlast_the_mesh_client_pool() {
        let limits = ServerLimits::default();
        assert_eq!(limits.validate(), Ok(()));
        assert!(limits.idle_timeout > crate::outbound::DEFAULT_POOL_IDLE_TIMEOUT);
        assert!(limits.header_read_timeout < limits.idle_timeout);
    }

    #[test]
    fn unusable_values_are_named() {
        let bad = |f: fn(&mut ServerLimits)| {
            let mut limits = ServerLimits::default();
            f(&mut limits);
            limits.validate().unwrap_err().to_string()
        };
        assert_eq!(
            bad(|l| l.max_connections = 0),
            "max_connections must be at least 1"
        );
        assert_eq!(
            bad(|l| l.idle_timeout = Duration::ZERO),
            "idle_timeout must be longer than zero"
        );
        assert_eq!(
            bad(|l| l.max_request_headers_bytes = 4096),
            "max_request_headers_bytes must be between 8192 and 4294967295, got 4096"
        );
    }
}
