//! The bottom of the outbound stack: pooled HTTP/1.1 connections, each driven by the request
//! that is using it.
//!
//! A general-purpose pooled client (hyper-util's) gives every connection a task of its own and
//! hands each request to it over a channel, so a request and its response wake two tasks each
//! way — on a multi-threaded runtime often across threads, which on a small VM costs more
//! than the HTTP work. Here a connection is a plain value: a request checks one out (or opens
//! one through the [`MeshConnector`]: TCP, then mTLS to mesh endpoints), polls it in its own
//! future while the request is written and the whole response read, and puts it back. So a
//! call is one task's work, as an Envoy worker keeps a request's two connections on one event
//! loop.
//!
//! A connection waiting in the pool is not polled; a close by the peer is noticed when it is
//! next checked out (its socket then reads end-of-file), and such a connection is dropped and
//! the next one tried. A request that a reused connection could not even begin to send goes
//! on a fresh connection, as hyper-util retries canceled requests. Connections idle for
//! longer than the idle timeout are closed when the pool is next used.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use tokio::time::Instant;
use tower::Service;

use super::BoxFuture;
use super::connect::{MeshConnector, MeshStream};
use crate::BoxError;
use crate::classify::ConnectError;
use crate::fast_hash::FastMap;

/// How many idle connections to one authority the pool keeps; more are closed.
pub const MAX_IDLE_PER_AUTHORITY: usize = 64;

/// Pooled connections to backends, opened by a [`MeshConnector`].
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

struct Inner {
    connector: MeshConnector,
    idle_timeout: Duration,
    /// The largest response body read; a longer one fails its request and its connection.
    max_response_body: usize,
    idle: Mutex<Idle>,
}

struct Idle {
    /// Most recently used last: a connection used a moment ago is the likeliest to be open.
    /// Boxed, so that checking one out and back moves a pointer, not hyper's connection state.
    #[expect(
        clippy::vec_box,
        reason = "a `Conn` is moved in and out on every request; a box moves as one pointer"
    )]
    by_authority: FastMap<Authority, Vec<Box<Conn>>>,
    /// When expired connections were last closed.
    swept: Instant,
}

/// One HTTP/1.1 connection, the sending half and the connection's own future together.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: http1::Connection<MeshStream, Full<Bytes>>,
    /// To an HTTP proxy: requests keep their absolute-form target.
    via_proxy: bool,
    /// The connection's future has finished (closed, or `Connection: close` honoured).
    done: bool,
    idle_since: Instant,
}

/// Why a request got no response on a connection.
enum SendError {
    /// The connection was closed before any of the request was written: it can go on
    /// another connection as it is.
    NotSent(Box<Request<Full<Bytes>>>),
    Failed(BoxError),
}

/// A response whose body would not fit the pool's limit: a peer that sends without end
/// cannot fill the memory of the process that called it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the response body is longer than {limit} bytes")]
pub struct ResponseTooLarge {
    pub limit: usize,
}

impl Pool {
    /// A pool whose connections are opened by `connector` and closed after `idle_timeout`
    /// unused, reading response bodies of at most `max_response_body` bytes.
    pub fn new(connector: MeshConnector, idle_timeout: Duration, max_response_body: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                max_response_body,
                idle: Mutex::new(Idle {
                    by_authority: FastMap::default(),
                    swept: Instant::now(),
                }),
            }),
        }
    }

    /// Sends `request` (an absolute `http://` URI, its authority the address to connect to)
    /// and reads its whole response.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<Body>, BoxError> {
        let uri = request.uri().clone();
        let authority = uri
            .authority()
            .cloned()
            .ok_or("the request has no authority to connect to")?;
        let mut request = request.map(Full::new);
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, host_header(&authority)?);
        }
        while let Some(mut conn) = self.checkout(&authority) {
            if !conn.ready().await {
                continue;
            }
            match conn.send(request, self.inner.max_response_body).await {
                Ok(response) => return Ok(self.finish(conn, authority, response)),
                Err(SendError::NotSent(unsent)) => request = *unsent,
                Err(SendError::Failed(e)) => return Err(e),
            }
        }
        let mut conn = self.connect(uri).await?;
        match conn.send(request, self.inner.max_response_body).await {
            Ok(response) => Ok(self.finish(conn, authority, response)),
            Err(SendError::NotSent(_)) => {
                Err("the new connection closed before the request was sent".into())
            }
            Err(SendError::Failed(e)) => Err(e),
        }
    }

    async fn connect(&self, uri: Uri) -> Result<Box<Conn>, BoxError> {
        let mut connector = self.inner.connector.clone();
        let stream = async {
            poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(uri).await
        }
        .await
        .map_err(|e| -> BoxError { Box::new(ConnectError(e)) })?;
        let via_proxy = stream.via_proxy();
        let (sender, conn) = http1::Builder::new()
            .handshake(stream)
            .await
            .map_err(|e| -> BoxError { Box::new(ConnectError(e.into())) })?;
        Ok(Box::new(Conn {
            sender,
            conn,
            via_proxy,
            done: false,
            idle_since: Instant::now(),
        }))
    }

    /// The most recently used idle connection to `authority` that has not expired.
    fn checkout(&self, authority: &Authority) -> Option<Box<Conn>> {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().expect("pool lock is never poisoned");
        self.sweep(&mut idle, now);
        let conns = idle.by_authority.get_mut(authority)?;
        while let Some(conn) = conns.pop() {
            if now.saturating_duration_since(conn.idle_since) < self.inner.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// The response, its connection back in the pool if it can carry another request.
    fn finish(
        &self,
        mut conn: Box<Conn>,
        authority: Authority,
        response: Response<Body>,
    ) -> Response<Body> {
        if conn.done || conn.sender.is_closed() {
            return response;
        }
        let now = Instant::now();
        conn.idle_since = now;
        let mut idle = self.inner.idle.lock().expect("pool lock is never poisoned");
        self.sweep(&mut idle, now);
        let conns = idle.by_authority.entry(authority).or_default();
        if conns.len() >= MAX_IDLE_PER_AUTHORITY {
            conns.remove(0);
        }
        conns.push(conn);
        response
    }

    /// Closes the connections idle longer than the idle timeout, at most once per timeout.
    fn sweep(&self, idle: &mut Idle, now: Instant) {
        let timeout = self.inner.idle_timeout;
        if now.saturating_duration_since(idle.swept) < timeout {
            return;
        }
        idle.swept = now;
        idle.by_authority.retain(|_, conns| {
            conns.retain(|c| now.saturating_duration_since(c.idle_since) < timeout);
            !conns.is_empty()
        });
    }

    /// How many idle connections the pool holds (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.inner.idle.lock().expect("pool lock is never poisoned");
        idle.by_authority.values().map(Vec::len).sum()
    }
}

impl Conn {
    /// Whether the connection can take a request: it has not been closed (by the peer while
    /// it waited, or after its last response) and hyper is ready for the next message.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if Pin::new(&mut self.conn)
                .poll_without_shutdown(cx)
                .is_ready()
            {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Writes the request and reads the whole response (a body of at most `max_body`
    /// bytes), driving the connection meanwhile.
    async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response<Body>, SendError> {
        if !self.via_proxy {
            let origin = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(origin);
        }
        let sending = self.sender.try_send_request(request);
        tokio::pin!(sending);
        let (conn, done) = (&mut self.conn, &mut self.done);
        let head = poll_fn(|cx| {
            if let Poll::Ready(result) = sending.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            if !*done && Pin::new(&mut *conn).poll_without_shutdown(cx).is_ready() {
                // The connection is done: hyper has answered the request by now.
                *done = true;
                return sending.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await;
        let response = match head {
            Ok(response) => response,
            Err(mut e) => {
                return Err(match e.take_message() {
                    Some(unsent) => SendError::NotSent(Box::new(unsent)),
                    None => SendError::Failed(e.into_error().into()),
                });
            }
        };
        let (parts, body) = response.into_parts();
        let body = read_body(body, conn, done, max_body)
            .await
            .map_err(SendError::Failed)?;
        Ok(Response::from_parts(parts, Body::from(body)))
    }
}

/// The whole body (at most `limit` bytes), the connection driven while it arrives. `done`:
/// whether the connection's future has finished, kept up to date.
async fn read_body(
    mut body: Incoming,
    conn: &mut http1::Connection<MeshStream, Full<Bytes>>,
    done: &mut bool,
    limit: usize,
) -> Result<Bytes, BoxError> {
    let mut gathered = super::Gathered::default();
    let mut read = 0usize;
    poll_fn(|cx: &mut Context<'_>| {
        loop {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read = read.saturating_add(data.len());
                        if read > limit {
                            return Poll::Ready(Err(BoxError::from(ResponseTooLarge { limit })));
                        }
                        gathered.push(data);
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(BoxError::from(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if *done {
                // Nothing more will arrive; hyper ends or fails a body before its
                // connection's future finishes, so this is not reached in practice.
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut *conn).poll_without_shutdown(cx) {
                Poll::Ready(_) => *done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await?;
    // One more turn of the connection, so it takes in the end of the message and is ready
    // (or closed, after `Connection: close`) before it goes back to the pool.
    if !*done {
        *done =
            poll_fn(|cx| Poll::Ready(Pin::new(&mut *conn).poll_without_shutdown(cx).is_ready()))
                .await;
    }
    Ok(gathered.into_bytes())
}

/// `Host` for a request to `authority` that did not name one: the host, and the port unless
/// it is HTTP's default.
fn host_header(authority: &Authority) -> Result<HeaderValue, BoxError> {
    let value = match authority.port_u16() {
        Some(80) | None => HeaderValue::from_str(authority.host()),
        Some(_) => HeaderValue::from_str(authority.as_str()),
    };
    value.map_err(|_| format!("invalid authority {authority}").into())
}

impl Service<Request<Bytes>> for Pool {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { pool.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test server answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// 200 `ok`, connection kept.
        KeepAlive,
        /// 200 `ok` with `Connection: close`, then close.
        Close,
        /// 200 `ok` (keep-alive by the headers), then close at once, as a server whose idle
        /// timeout runs out does.
        CloseSilently,
        /// 200 with a chunked body in three writes.
        Chunked,
    }

    /// A raw HTTP/1.1 server: what each request's head said, and how many connections it
    /// accepted.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn server(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        seen.lock().unwrap().push(head);
                        let reply: &[&[u8]] = match answer {
                            Answer::KeepAlive | Answer::CloseSilently => {
                                &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
                            }
                            Answer::Close => &[
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                            ],
                            Answer::Chunked => &[
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n",
                                b"3\r\ntwo\r\n",
                                b"5\r\nthree\r\n0\r\n\r\n",
                            ],
                        };
                        for part in reply {
                            stream.write_all(part).await.unwrap();
                            stream.flush().await.unwrap();
                        }
                        if matches!(answer, Answer::Close | Answer::CloseSilently) {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            accepted,
            heads,
        }
    }

    impl Server {
        /// `http://` the server's address `/`.
        fn root(&self) -> String {
            format!("http://{}/", self.addr)
        }
    }

    fn pool(idle_timeout: Duration) -> Pool {
        Pool::new(
            MeshConnector::new(HttpConnector::new(), None),
            idle_timeout,
            crate::outbound::MAX_RESPONSE_BODY,
        )
    }

    async fn get(pool: &Pool, uri: String) -> Result<String, BoxError> {
        let response = pool
            .send(Request::get(uri).body(Bytes::new()).unwrap())
            .await?;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn one_connection_carries_requests_one_after_another_in_origin_form() {
        let server = server(Answer::KeepAlive).await;
        let pool = pool(Duration::from_secs(30));
        for i in 0..5 {
            let body = get(&pool, format!("http://{}/r/{i}?x=1", server.addr)).await;
            assert_eq!(body.unwrap(), "ok");
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
        let heads = server.heads.lock().unwrap().clone();
        assert!(
            heads[3].starts_with("GET /r/3?x=1 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        // No Host was given: it is the authority's.
        assert!(
            heads[3]
                .to_ascii_lowercase()
                .contains(&format!("host: {}", server.addr)),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_not_used_again() {
        let server = server(Answer::CloseSilently).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..4 {
            let body = get(&pool, server.root()).await;
            assert_eq!(body.unwrap(), "ok");
        }
        // Every request needed a connection of its own, and none failed for it.
        assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connection_close_keeps_the_connection_out_of_the_pool() {
        let server = server(Answer::Close).await;
        let pool = pool(Duration::from_secs(30));
        assert_eq!(get(&pool, server.root()).await.unwrap(), "ok");
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool, server.root()).await.unwrap(), "ok");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_in_several_chunks_arrives_whole_and_the_connection_is_reused() {
        let server = server(Answer::Chunked).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..3 {
            let body = get(&pool, server.root()).await;
            assert_eq!(body.unwrap(), "onetwothree");
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_not_reused() {
        let server = server(Answer::KeepAlive).await;
        let pool = pool(Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(get(&pool, server.root()).await.unwrap(), "ok");
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn through_a_proxy_requests_keep_their_absolute_form() {
        let proxy = server(Answer::KeepAlive).await;
        let pool = Pool::new(
            MeshConnector::via_proxy(HttpConnector::new(), proxy.addr),
            Duration::from_secs(30),
            crate::outbound::MAX_RESPONSE_BODY,
        );
        let body = get(&pool, "http://details:9080/details/0".to_owned()).await;
        assert_eq!(body.unwrap(), "ok");
        let heads = proxy.heads.lock().unwrap().clone();
        assert!(
            heads[0].starts_with("GET http://details:9080/details/0 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        assert!(heads[0].to_ascii_lowercase().contains("host: details:9080"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = get(
            &pool(Duration::from_secs(30)),
            format!("http://127.0.0.1:{port}/"),
        )
        .await
        .unwrap_err();
        assert!(err.is::<ConnectError>(), "{err}");
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_all_go_back() {
        let server = server(Answer::KeepAlive).await;
        let pool = pool(Duration::from_secs(30));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (pool, uri) = (pool.clone(), server.root());
            calls.spawn(async move { get(&pool, uri).await.map_err(|e| e.to_string()) });
        }
        for body in calls.join_all().await {
            assert_eq!(body.unwrap(), "ok");
        }
        let opened = server.accepted.load(Ordering::SeqCst);
        assert_eq!(pool.idle_count(), opened);
        // Now one after another: they reuse what is there.
        for _ in 0..8 {
            get(&pool, server.root()).await.unwrap();
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), opened);
    }
}
