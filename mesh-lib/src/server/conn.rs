//! Drives one accepted connection from its first byte to its close: waits a bounded time for
//! the client to speak, applies the mesh's transport decision, serves HTTP/1.1 or HTTP/2, and
//! closes it when a request head stalls, when it stays idle, when the listener evicts it or
//! when the server shuts down.
//!
//! The timers sit here, around hyper's connection, rather than in hyper's builder because
//! hyper has no idle timeout and its HTTP/1 header timer also covers the keep-alive wait (see
//! [`super::activity`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tower::Service as _;

use super::ServerLimits;
use super::activity::{Expiry, InFlightBody, TimedBody, Watched};
use super::admission::Ticket;
use crate::dataplane::{Mesh, PeerIdentity};

/// What every connection of one listener shares.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) app: crate::inbound::Stack,
    pub(super) http: auto::Builder<TokioExecutor>,
    pub(super) mesh: Option<Mesh>,
    pub(super) limits: ServerLimits,
}

/// Serves one connection until it is closed; the ticket keeps its place in the listener's
/// table until then.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    ticket: Ticket,
) {
    let activity = Arc::clone(ticket.activity());
    let limits = &listener.limits;

    let mut first = [0u8; 1];
    tokio::select! {
        biased;
        () = activity.close_requested() => return,
        waited = timeout(limits.first_byte_timeout, stream.peek(&mut first)) => match waited {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "connection failed before its first byte: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no data within {:?}: closing", limits.first_byte_timeout);
                return;
            }
        },
    }

    let secured = tokio::select! {
        biased;
        () = activity.close_requested() => return,
        secured = crate::inbound::transport::secure(stream, peer, listener.mesh.as_ref()) => secured,
    };
    let Some((io, peer_identity)) = secured else {
        return;
    };

    let peer_identity = PeerIdentity(peer_identity.map(Arc::new));
    let service = {
        let activity = Arc::clone(&activity);
        let app = listener.app.clone();
        let body_read_timeout = limits.body_read_timeout;
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let in_flight = activity.begin_request();
            let mut req =
                req.map(|body| TimedBody::new(body, Arc::clone(&activity), body_read_timeout));
            req.extensions_mut().insert(peer_identity.clone());
            // The stack is always ready.
            let response = app.clone().call(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| InFlightBody::new(body, in_flight)))
            }
        })
    };
    let conn = listener.http.serve_connection_with_upgrades(
        TokioIo::new(Watched::new(io, Arc::clone(&activity))),
        service,
    );
    tokio::pin!(conn);

    // The timers are checked rather than re-armed on every change: requests and request
    // heads only record when they began and ended (see `Activity`), and this loop looks at
    // least every `check`, which is no longer than the shortest timer, so it wakes no more
    // than that per connection, not twice per request. A deadline is kept to the instant:
    // each check sleeps until the deadline in force or the next check, whichever is sooner.
    let check = limits.header_read_timeout.min(limits.idle_timeout);
    let next = |now: Instant| {
        let deadline = activity.next_expiry(limits.header_read_timeout, limits.idle_timeout);
        deadline.map_or(now + check, |(at, _)| at.min(now + check))
    };
    let timer = sleep_until(next(Instant::now()));
    tokio::pin!(timer);
    let close = activity.close_requested();
    tokio::pin!(close);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended with error: {e}");
                }
                return;
            }
            () = &mut close => break,
            () = &mut timer => {
                let now = Instant::now();
                match activity.next_expiry(limits.header_read_timeout, limits.idle_timeout) {
                    Some((at, Expiry::HeaderRead)) if at <= now => {
                        tracing::debug!(
                            %peer,
                            "request head not complete within {:?}: closing",
                            limits.header_read_timeout
                        );
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= now => {
                        tracing::debug!(%peer, "idle for {:?}: closing", limits.idle_timeout);
                        break;
                    }
                    _ => timer.as_mut().reset(next(now)),
                }
            }
        }
    }

    // HTTP/1 closes at once when idle, or after the request in flight; HTTP/2 sends GOAWAY,
    // finishes its streams and waits for the PING that confirms the client saw it. The
    // backstop is checked the same way: a request in flight defers it.
    conn.as_mut().graceful_shutdown();
    let closing = Instant::now();
    let close_timeout = limits.close_timeout;
    // A request waiting only for its client's body defers nothing: the client is the one
    // holding it up.
    let overdue_at = || {
        activity
            .quiet_since()
            .map(|quiet| quiet.max(closing) + close_timeout)
    };
    let next =
        |now: Instant| overdue_at().map_or(now + close_timeout, |at| at.min(now + close_timeout));
    timer.as_mut().reset(next(closing));
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended with error while closing: {e}");
                }
                return;
            }
            () = &mut timer => {
                let now = Instant::now();
                if overdue_at().is_some_and(|at| at <= now) {
                    tracing::debug!(%peer, "graceful close took over {close_timeout:?}: dropping");
                    return;
                }
                timer.as_mut().reset(next(now));
            }
        }
    }
}
