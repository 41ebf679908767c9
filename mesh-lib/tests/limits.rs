//! `mesh::Server`'s limits over real loopback sockets, shaped like the attacks they answer:
//! thousands of idle connections, silent and stalled clients, oversized headers, and a
//! listener full of busy connections — and the graceful drain still working beside them.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::{Server, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};

/// Bound on every wait for something the server should do promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// Idle connections the flood tests open.
const FLOOD: usize = 5_000;

/// The flood tests hold thousands of descriptors each: one at a time.
static FLOOD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lets `/hold` requests finish once it is set to true, and hears each one arrive.
#[derive(Clone)]
struct Hold {
    entered: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
}

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<Duration>,
    task: JoinHandle<()>,
    entered: mpsc::UnboundedReceiver<()>,
    release: watch::Sender<bool>,
}

impl Running {
    async fn start(limits: ServerLimits) -> Self {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (release, release_rx) = watch::channel(false);
        let hold = Hold {
            entered: entered_tx,
            release: release_rx,
        };
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/upload",
                axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route(
                "/upload-seen",
                axum::routing::post(
                    |State(hold): State<Hold>, body: axum::body::Body| async move {
                        hold.entered.send(()).unwrap();
                        let body = body.collect().await.map_err(|_| StatusCode::BAD_REQUEST)?;
                        Ok::<_, StatusCode>(body.to_bytes().len().to_string())
                    },
                ),
            )
            .route(
                "/hold",
                get(|State(mut hold): State<Hold>| async move {
                    hold.entered.send(()).unwrap();
                    hold.release
                        .wait_for(|go| *go)
                        .await
                        .expect("the test keeps the release sender until the end");
                    "released"
                }),
            )
            .with_state(hold);
        let server = Server::bind("limits-test", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_limits(limits)
            .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(
            server.serve_with_grace(app, async move { stopped.await.unwrap_or(Duration::ZERO) }),
        );
        Self {
            addr,
            stop,
            task,
            entered,
            release,
        }
    }

    /// Waits until `n` `/hold` requests are in the handler.
    async fn held(&mut self, n: usize) {
        for _ in 0..n {
            timeout(PATIENCE, self.entered.recv())
                .await
                .expect("held request reached the handler")
                .unwrap();
        }
    }

    fn release(&self) {
        self.release.send(true).unwrap();
    }

    /// Shuts down with `grace` and waits for the server to return.
    async fn stop(self, grace: Duration) {
        self.stop.send(grace).unwrap();
        timeout(grace + PATIENCE, self.task)
            .await
            .expect("server stopped")
            .unwrap();
    }
}

/// A `GET` on a new HTTP/1.1 connection.
async fn get_status(addr: SocketAddr, path: &str) -> StatusCode {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = send
        .send_request(
            Request::get(path)
                .header("host", "limits-test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    response.status()
}

/// Sends raw request bytes and reads one response: status and body.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, Vec<u8>) {
    stream.write_all(request).await.unwrap();
    read_response(stream)
        .await
        .expect("a response before the connection closed")
}

/// Reads one HTTP/1.1 response with a `content-length`; `None` if the connection closed
/// (or was reset) before a complete one.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, body))
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: limits-test\r\n\r\n";

/// Waits for the server to close `stream`: a read that returns end of file (or a reset).
/// Panics if data arrives instead, or nothing happens within `PATIENCE`.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    match timeout(PATIENCE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the server kept the connection open for {PATIENCE:?}"),
    }
}

/// Checks the open-file limit leaves room for a flood test's descriptors (both ends of every
/// connection live in this process).
fn assert_descriptors_for(connections: usize) {
    let limit = mesh::raise_nofile_limit().unwrap();
    let needed = 2 * connections as u64 + 1_000;
    assert!(
        limit.soft.is_none_or(|soft| soft >= needed),
        "this test needs an open-file limit of {needed}, the hard limit is {:?}",
        limit.hard
    );
}

/// Opens `FLOOD` connections: most send nothing, the last `with_request` send one request,
/// read the answer and stay open, idle.
async fn flood(addr: SocketAddr, with_request: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i >= FLOOD - with_request {
            let (status, _) = exchange(&mut stream, GET).await;
            assert_eq!(status, 200);
        }
        conns.push(stream);
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_do_not_stop_a_workload() {
    let _one_flood = FLOOD_LOCK.lock().await;
    assert_descriptors_for(FLOOD);
    let server = Running::start(ServerLimits::default()).await;
    let idle = flood(server.addr, 1_000).await;

    let status = timeout(PATIENCE, get_status(server.addr, "/"))
        .await
        .expect("a fresh client is served beside 5,000 idle connections");
    assert_eq!(status, StatusCode::OK);

    drop(idle);
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_evicts_its_longest_idle_connections() {
    let _one_flood = FLOOD_LOCK.lock().await;
    assert_descriptors_for(FLOOD);
    const MAX: usize = 64;
    let server = Running::start(ServerLimits {
        max_connections: MAX,
        ..ServerLimits::default()
    })
    .await;
    // Every connection beyond the 64th, request-making ones included, is admitted by
    // evicting the oldest idle one.
    let idle = flood(server.addr, 1_000).await;
    let status = timeout(PATIENCE, get_status(server.addr, "/"))
        .await
        .expect("a fresh client is served by a full listener");
    assert_eq!(status, StatusCode::OK);

    // All but the newest (at most MAX - 1 besides the fresh client) were closed.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let mut readers = JoinSet::new();
    for mut stream in idle {
        let closed_tx = closed_tx.clone();
        readers.spawn(async move {
            let mut buf = [0u8; 64];
            if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                let _ = closed_tx.send(());
            }
        });
    }
    let must_close = FLOOD - (MAX - 1);
    let deadline = Instant::now() + PATIENCE;
    for seen in 0..must_close {
        tokio::time::timeout_at(deadline, closed.recv())
            .await
            .unwrap_or_else(|_| panic!("only {seen} of {must_close} idle connections closed"))
            .unwrap();
    }
    readers.shutdown().await;
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn request_heads_above_60_kib_get_431_and_large_cookies_pass() {
    let server = Running::start(ServerLimits::default()).await;
    let request = |header_bytes: usize| {
        format!(
            "GET / HTTP/1.1\r\nhost: limits-test\r\ncookie: {}\r\n\r\n",
            "c".repeat(header_bytes)
        )
    };

    for (size, want) in [(16 * 1024, 200), (58 * 1024, 200), (100 * 1024, 431)] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Refused after 60 KiB, the rest of a larger head may meet a closed connection.
        let _ = stream.write_all(request(size).as_bytes()).await;
        let (status, _) = read_response(&mut stream)
            .await
            .expect("a response before the connection closed");
        assert_eq!(status, want, "HTTP/1.1 with a {size}-byte cookie");
    }

    // HTTP/2: the same limit as SETTINGS_MAX_HEADER_LIST_SIZE (hyper's default is 16 KiB,
    // which a 16 KiB cookie exceeds).
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (size, want) in [(16 * 1024, 200), (100 * 1024, 431)] {
        let response = send
            .send_request(
                Request::get(format!("http://{}/", server.addr))
                    .header("cookie", "c".repeat(size))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), want, "HTTP/2 with a {size}-byte cookie");
        response.into_body().collect().await.unwrap();
    }

    server.stop(Duration::from_secs(5)).await;
}

fn short_timeouts() -> ServerLimits {
    ServerLimits {
        first_byte_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = Running::start(short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    closed_by_server(&mut stream).await;
    assert!(opened.elapsed() >= Duration::from_millis(200));
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stalled_request_head_is_closed_after_the_header_read_timeout() {
    let limits = ServerLimits {
        // Far beyond the test's patience: only the header timer can close these.
        first_byte_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..short_timeouts()
    };
    let server = Running::start(limits).await;

    // The first request of a connection.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: lim")
        .await
        .unwrap();
    let started = Instant::now();
    closed_by_server(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A later request on a kept-alive connection: the timer starts at its first byte.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (status, _) = exchange(&mut stream, GET).await;
    assert_eq!(status, 200);
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    closed_by_server(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(200));

    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let server = Running::start(short_timeouts()).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Taken before the request: the server's idle time starts after its response, so at
    // least the idle timeout passes from here on.
    let asked = Instant::now();
    let (status, body) = exchange(&mut stream, GET).await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    closed_by_server(&mut stream).await;
    // Not the 200 ms header timer: an idle kept-alive connection is not a stalled head.
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "closed after {:?}",
        asked.elapsed()
    );

    // HTTP/2: GOAWAY, then the connection ends.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let asked = Instant::now();
    let response = send
        .send_request(
            Request::get(format!("http://{}/", server.addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    timeout(PATIENCE, conn)
        .await
        .expect("the server closed the idle HTTP/2 connection")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(1));

    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_full_of_busy_connections_refuses_until_they_finish() {
    const MAX: usize = 4;
    let mut server = Running::start(ServerLimits {
        max_connections: MAX,
        ..ServerLimits::default()
    })
    .await;
    let mut busy = Vec::new();
    for _ in 0..MAX {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /hold HTTP/1.1\r\nhost: limits-test\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    server.held(MAX).await;

    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    // The server may close before or after this write lands.
    let _ = refused.write_all(GET).await;
    closed_by_server(&mut refused).await;

    server.release();
    for stream in &mut busy {
        let (status, body) = read_response(stream).await.expect("held response");
        assert_eq!((status, &body[..]), (200, &b"released"[..]));
    }
    for _ in 0..2 * MAX {
        assert_eq!(get_status(server.addr, "/").await, StatusCode::OK);
    }

    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let mut server = Running::start(ServerLimits::default()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let (status, _) = exchange(&mut idle, GET).await;
    assert_eq!(status, 200);
    let mut holding = TcpStream::connect(server.addr).await.unwrap();
    holding
        .write_all(b"GET /hold HTTP/1.1\r\nhost: limits-test\r\n\r\n")
        .await
        .unwrap();
    server.held(1).await;

    let Running {
        addr,
        stop,
        task,
        release,
        ..
    } = server;
    stop.send(Duration::from_secs(30)).unwrap();
    closed_by_server(&mut idle).await;
    assert!(!task.is_finished(), "a request is still in flight");
    release.send(true).unwrap();
    let (status, body) = read_response(&mut holding).await.expect("held response");
    assert_eq!((status, &body[..]), (200, &b"released"[..]));
    closed_by_server(&mut holding).await;
    timeout(PATIENCE, task)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn zero_grace_drops_requests_in_flight_at_once() {
    let mut server = Running::start(ServerLimits::default()).await;
    let mut holding = TcpStream::connect(server.addr).await.unwrap();
    holding
        .write_all(b"GET /hold HTTP/1.1\r\nhost: limits-test\r\n\r\n")
        .await
        .unwrap();
    server.held(1).await;
    let Running {
        stop,
        task,
        release: _never_released,
        ..
    } = server;
    stop.send(Duration::ZERO).unwrap();
    closed_by_server(&mut holding).await;
    timeout(PATIENCE, task)
        .await
        .expect("server stopped")
        .unwrap();
}

/// The head of an upload whose body is `length` bytes.
fn upload_head(length: usize) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nhost: limits-test\r\ncontent-length: {length}\r\n\r\n")
        .into_bytes()
}

/// Reads until the server closes `stream`, within `PATIENCE`: what it sent before.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {PATIENCE:?}"
    );
    seen
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_fails_and_its_connection_closes() {
    const BODY_TIMEOUT: Duration = Duration::from_millis(300);
    let limits = ServerLimits {
        body_read_timeout: BODY_TIMEOUT,
        // Far beyond the test's patience: only the body timer can close these.
        first_byte_timeout: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    };
    let server = Running::start(limits).await;

    // 100,000 bytes announced, ten sent.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = upload_head(100_000);
    request.extend_from_slice(b"0123456789");
    stream.write_all(&request).await.unwrap();
    let started = Instant::now();
    let answered = read_until_closed(&mut stream).await;
    assert!(started.elapsed() >= BODY_TIMEOUT, "{:?}", started.elapsed());
    let answered = String::from_utf8_lossy(&answered);
    assert!(
        answered.is_empty() || answered.starts_with("HTTP/1.1 4"),
        "{answered}"
    );

    // The timer is for silence, not for the whole body: a slow, steady upload arrives.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&upload_head(8)).await.unwrap();
    for byte in b"steadily" {
        tokio::time::sleep(BODY_TIMEOUT / 3).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let (status, body) = read_response(&mut stream)
        .await
        .expect("the upload's answer");
    assert_eq!((status, &body[..]), (200, &b"8"[..]));

    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_do_not_fill_a_listener() {
    const MAX: usize = 4;
    // The default body timeout (15 s) is far beyond the test's patience: only eviction
    // frees these.
    let mut server = Running::start(ServerLimits {
        max_connections: MAX,
        ..ServerLimits::default()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..MAX {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = String::from_utf8(upload_head(100_000)).unwrap();
        let head = head.replace("/upload", "/upload-seen");
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    // Every connection is in a handler that waits for its body: none is idle.
    server.held(MAX).await;
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    let mut request = upload_head(2);
    request.extend_from_slice(b"ok");
    let (status, body) = exchange(&mut fresh, &request).await;
    assert_eq!((status, &body[..]), (200, &b"2"[..]));
    for _ in 0..2 * MAX {
        let status = timeout(PATIENCE, get_status(server.addr, "/"))
            .await
            .expect("a fresh client is served beside stalled uploads");
        assert_eq!(status, StatusCode::OK);
    }
    // Stalled uploads made room and were closed.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    for mut stream in stalled {
        let closed_tx = closed_tx.clone();
        tokio::spawn(async move {
            read_until_closed(&mut stream).await;
            let _ = closed_tx.send(());
        });
    }
    timeout(PATIENCE, closed.recv())
        .await
        .expect("an evicted stalled upload was closed");

    server.stop(Duration::from_secs(5)).await;
}
