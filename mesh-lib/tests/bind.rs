//! Where a service listens by default: `[::]`, dual-stack, as upstream's `[::]:9080`.

use std::net::{Ipv6Addr, SocketAddr};

use axum::Router;
use axum::routing::get;
use mesh::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get_health(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

/// Whether this machine can use IPv6 loopback at all (containers may have it off).
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[tokio::test]
async fn the_default_bind_takes_ipv4_and_ipv6() {
    let addr = SocketAddr::new(mesh::cli::DEFAULT_BIND, 0);
    let server = Server::bind("bind-test", addr).await.unwrap();
    let port = server.local_addr().port();
    let app = Router::new().route("/health", get(|| async { "healthy" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(app, async move {
        let _ = stopped.await;
    }));

    let v4 = get_health(SocketAddr::from(([127, 0, 0, 1], port))).await;
    assert!(
        v4.starts_with("HTTP/1.1 200") && v4.ends_with("healthy"),
        "{v4}"
    );
    if has_ipv6_loopback() {
        let v6 = get_health(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await;
        assert!(
            v6.starts_with("HTTP/1.1 200") && v6.ends_with("healthy"),
            "{v6}"
        );
    } else {
        eprintln!(
            "skipping the [::1] half: this machine has no IPv6 loopback (the listener fell back to 0.0.0.0)"
        );
    }
    stop.send(()).unwrap();
    serving.await.unwrap();
}
