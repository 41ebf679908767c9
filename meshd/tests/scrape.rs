//! meshd's dashboard scrapes each registered workload's admin port: a workload is as hostile
//! as any peer, so a metrics endpoint that answers without end costs meshd at most
//! `MAX_SCRAPE_BYTES` and `SCRAPE_TIMEOUT`, over real sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meshd::dashboard::MAX_SCRAPE_BYTES;
use test_support::{PATIENCE, meshd_config, spec, tempdir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// An admin port whose every answer is a chunked body that never ends: how many bytes it
/// wrote on the first connection whose reader went away, and whether one did.
async fn endless_admin() -> (u16, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (written, hung_up) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (w, h) = (written.clone(), hung_up.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (w, h) = (w.clone(), h.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                if stream.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(start).await.is_err() {
                    return;
                }
                // One 64 KiB chunk of comment lines, written again and again.
                let mut chunk = b"10000\r\n".to_vec();
                chunk.extend(
                    std::iter::repeat_n(b"# metrics\n", 6554)
                        .flatten()
                        .take(65536),
                );
                chunk.extend_from_slice(b"\r\n");
                // Bounded: the test's patience at loopback speed is far beyond any limit.
                let mut sent = 0usize;
                for _ in 0..100_000 {
                    if stream.write_all(&chunk).await.is_err() {
                        if !h.swap(true, Ordering::SeqCst) {
                            w.store(sent, Ordering::SeqCst);
                        }
                        return;
                    }
                    sent += 65536;
                }
            });
        }
    });
    (port, written, hung_up)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_metrics_answer_costs_meshd_at_most_its_scrape_limit() {
    let dir = tempdir("scrape-endless");
    let mut config = meshd_config(
        &dir,
        meshd::daemon::CaSource::Ephemeral,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    );
    config.dashboard = Some("127.0.0.1:0".parse().unwrap());
    let meshd = meshd::daemon::start(config).await.unwrap();
    let (admin_port, written, hung_up) = endless_admin().await;

    // A registered workload whose admin port is the endless one.
    let mut alpha = spec(&meshd, "alpha", "alpha");
    alpha.admin_port = Some(admin_port);
    let mesh = mesh::workload::WorkloadBuilder::new(alpha)
        .start("127.0.0.1:9".parse().unwrap())
        .unwrap();
    assert!(mesh.ready(PATIENCE).await, "alpha never got ready");

    // meshd scrapes within its interval, reads up to its limit and hangs up.
    let deadline = Instant::now() + PATIENCE;
    while !hung_up.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "meshd is still reading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the socket buffers held beyond the limit is all that went unread.
    let read = written.load(Ordering::SeqCst);
    assert!(
        read <= MAX_SCRAPE_BYTES + (8 << 20),
        "meshd let {} MiB through before hanging up",
        read >> 20
    );
    eprintln!(
        "the endless answer wrote {} KiB before meshd hung up",
        read >> 10
    );

    // The dashboard still answers.
    let dashboard = meshd.dashboard.unwrap();
    let graph = mesh::Client::new()
        .get(
            &format!("http://{dashboard}/api/graph"),
            Default::default(),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(graph.status(), http::StatusCode::OK);
    meshd.shutdown().await;
}
