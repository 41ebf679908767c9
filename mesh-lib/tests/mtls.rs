//! The data plane against a real meshd over real sockets: mTLS with SPIFFE identities on every
//! connection, PeerAuthentication, refusal of foreign, expired and mismatched certificates,
//! rotation under traffic, and meshd outages.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use mesh::Client;
use mesh::control::pb;
use mesh::identity::{Credentials, SpiffeId};
use meshd::CertificateAuthority;
use meshd::daemon::{self, CaSource};
use rustls_pki_types::ServerName;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TLS 1.3 handshake to `addr` with `certified`'s certificate, requiring `expected`.
async fn handshake(
    certified: &mesh::identity::Certified,
    addr: SocketAddr,
    expected: SpiffeId,
) -> Result<(rustls::ProtocolVersion, SpiffeId), String> {
    let config = mesh::tls::client_config(certified, expected).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("mesh").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // The server checks the client certificate after the client finishes; a request shows
    // whether it was accepted.
    tls.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("no answer: {answer:?}"));
    }
    let (_, conn) = tls.get_ref();
    let version = conn.protocol_version().unwrap();
    let peer = mesh::tls::spiffe_id_of(&conn.peer_certificates().unwrap()[0]).unwrap();
    Ok((version, peer))
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_talk_mtls_1_3_and_see_each_others_spiffe_ids() {
    let dir = tempdir("mtls");
    let meshd = meshd(&dir, Duration::from_secs(3600)).await;
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (beta_addr, beta) = workload(&meshd, "beta", "beta").await;
    sees(&alpha, "beta").await;

    // Through the outbound stack by logical name: the server saw alpha's identity.
    let client = alpha.client();
    assert_eq!(
        whoami(&client, "http://beta:9080/whoami").await.unwrap(),
        "cluster.local/ns/default/sa/alpha"
    );
    assert_eq!(
        whoami(&client, "http://beta.default.svc.cluster.local:9080/whoami")
            .await
            .unwrap(),
        "cluster.local/ns/default/sa/alpha"
    );

    // A raw handshake: TLS 1.3, and the server proves it is beta.
    let (version, peer) = handshake(&alpha.certified().unwrap(), beta_addr, id("beta"))
        .await
        .unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(peer, id("beta"));
    assert_eq!(beta.identity(), &id("beta"));

    // Plaintext is accepted under the default PERMISSIVE mode, with no principal.
    assert_eq!(
        whoami(&Client::new(), &format!("http://{beta_addr}/whoami"))
            .await
            .unwrap(),
        "-"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_s_client_sees_tls_1_3_and_the_spiffe_id() {
    if !has_openssl() {
        return;
    }
    let dir = tempdir("openssl");
    let meshd = meshd(&dir, Duration::from_secs(3600)).await;
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (beta_addr, _) = workload(&meshd, "beta", "beta").await;
    let certified = alpha.certified().unwrap();
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    std::fs::write(
        dir.join("cert.pem"),
        pem("CERTIFICATE", &certified.chain[0]),
    )
    .unwrap();
    std::fs::write(
        dir.join("key.pem"),
        pem("PRIVATE KEY", certified.key().secret_der()),
    )
    .unwrap();
    std::fs::write(
        dir.join("root.pem"),
        pem("CERTIFICATE", &certified.root_ders[0]),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect", &beta_addr.to_string(), "-showcerts"])
                .arg("-cert")
                .arg(dir.join("cert.pem"))
                .arg("-key")
                .arg(dir.join("key.pem"))
                .arg("-CAfile")
                .arg(dir.join("root.pem"))
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let server_cert = &text[text.find("-----BEGIN CERTIFICATE-----").unwrap()
        ..text.find("-----END CERTIFICATE-----").unwrap() + 25];
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    let san = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("server.pem"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout).into_owned();
    assert!(
        san.contains("URI:spiffe://cluster.local/ns/default/sa/beta"),
        "{san}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_expired_and_mismatched_certificates_are_refused() {
    let dir = tempdir("refuse");
    let meshd = meshd(&dir, Duration::from_secs(3600)).await;
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (beta_addr, _) = workload(&meshd, "beta", "beta").await;
    let good = alpha.certified().unwrap();

    // A certificate from another CA, for the same identity.
    let foreign_ca = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let creds = Credentials::new(id("alpha"));
    let req = creds.request().unwrap();
    let cert = foreign_ca.sign(&req.csr_pem, &id("alpha")).unwrap();
    let foreign = creds.install(req, &cert, &anchors(&foreign_ca)).unwrap();
    let err = handshake(&foreign, beta_addr, id("beta"))
        .await
        .unwrap_err();
    assert!(
        err.contains("untrusted")
            || err.contains("UnknownIssuer")
            || err.contains("reset")
            || err.contains("no answer")
            || err.contains("alert"),
        "{err}"
    );

    // An expired certificate from the mesh's own CA (same root as meshd's: reuse its files).
    let ca_dir = tempdir("ca");
    let ca = CertificateAuthority::load_or_create(&ca_dir, TD, Duration::from_secs(3600)).unwrap();
    let creds = Credentials::new(id("alpha"));
    let req = creds.request().unwrap();
    let now = SystemTime::now();
    let cert = ca
        .sign_valid(
            &req.csr_pem,
            &id("alpha"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let expired = creds.install(req, &cert, &anchors(&ca)).unwrap();
    let meshd2 = daemon::start(meshd_config(
        &dir,
        CaSource::Dir(ca_dir.clone()),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap();
    let (gamma_addr, _) = workload(&meshd2, "gamma", "gamma").await;
    let err = handshake(&expired, gamma_addr, id("gamma"))
        .await
        .unwrap_err();
    assert!(!err.is_empty());

    // A valid certificate, but the server is not who the client expects.
    let err = handshake(&good, beta_addr, id("gamma")).await.unwrap_err();
    assert!(err.contains("peer is spiffe://cluster.local/ns/default/sa/beta, expected spiffe://cluster.local/ns/default/sa/gamma"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn meshd_refuses_wrong_tokens_and_foreign_csrs() {
    let dir = tempdir("certify");
    let meshd = meshd(&dir, Duration::from_secs(3600)).await;
    let channel =
        mesh::control::connector::channel(&meshd.url(), meshd.trust_roots(), None).unwrap();
    let mut client = pb::mesh_control_client::MeshControlClient::new(channel);
    let csr_for = |sa: &str| Credentials::new(id(sa)).request().unwrap().csr_pem.clone();
    let ask = |token: &str, sa: &str, csr: String| pb::CertifyRequest {
        token: token.to_owned(),
        namespace: "default".to_owned(),
        service_account: sa.to_owned(),
        csr_pem: csr,
    };
    let status = client
        .certify(ask("token-beta", "alpha", csr_for("alpha")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    let status = client
        .certify(ask("token-alpha", "alpha", csr_for("beta")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("asks for spiffe://cluster.local/ns/default/sa/beta"),
        "{status}"
    );
    let ok = client
        .certify(ask("token-alpha", "alpha", csr_for("alpha")))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.cert_chain_pem.contains("BEGIN CERTIFICATE"));
}

async fn plaintext_is_reset(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    if tcp
        .write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 64];
    matches!(tcp.read(&mut buf).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_resets_plaintext_while_mtls_keeps_working_and_bad_yaml_keeps_the_last_good_config()
{
    let dir = tempdir("strict");
    let meshd = meshd(&dir, Duration::from_secs(3600)).await;
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (beta_addr, _) = workload(&meshd, "beta", "beta").await;
    sees(&alpha, "beta").await;
    assert!(!plaintext_is_reset(beta_addr).await);

    std::fs::write(
        dir.join("strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n",
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !plaintext_is_reset(beta_addr).await {
        assert!(Instant::now() < deadline, "STRICT never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = alpha.client();
    assert_eq!(
        whoami(&client, "http://beta:9080/whoami").await.unwrap(),
        "cluster.local/ns/default/sa/alpha"
    );

    // A truncated file is rejected; STRICT stays in force.
    let version = alpha.snapshot().version;
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuth",
    )
    .unwrap();
    tokio::time::sleep(daemon::CONFIG_POLL_INTERVAL * 5).await;
    assert_eq!(
        alpha.snapshot().version,
        version,
        "a bad file pushed no new snapshot"
    );
    assert!(plaintext_is_reset(beta_addr).await);
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    std::fs::remove_file(dir.join("strict.yaml")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while plaintext_is_reset(beta_addr).await {
        assert!(Instant::now() < deadline, "removing STRICT never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_under_steady_traffic_without_losing_a_request() {
    let dir = tempdir("rotate");
    // 2 s certificates: renewed about every second.
    let meshd = meshd(&dir, Duration::from_secs(2)).await;
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (_, beta) = workload(&meshd, "beta", "beta").await;
    sees(&alpha, "beta").await;
    let client = alpha.client();
    let mut seen_alpha = std::collections::HashSet::new();
    let mut seen_beta = std::collections::HashSet::new();
    let started = Instant::now();
    let mut requests = 0;
    // Bounded: at most 6 s and 3000 requests.
    while started.elapsed() < Duration::from_secs(6) && requests < 3000 {
        assert_eq!(
            whoami(&client, "http://beta:9080/whoami").await.unwrap(),
            "cluster.local/ns/default/sa/alpha",
            "request {requests}"
        );
        requests += 1;
        seen_alpha.insert(alpha.certified().unwrap().not_after);
        seen_beta.insert(beta.certified().unwrap().not_after);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        seen_alpha.len() >= 3 && seen_beta.len() >= 3,
        "rotations: alpha {} beta {}",
        seen_alpha.len(),
        seen_beta.len()
    );
    eprintln!(
        "{requests} requests, all answered, across {} and {} certificates",
        seen_alpha.len(),
        seen_beta.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_survives_meshd_going_away_and_the_mesh_recovers_when_it_returns() {
    let dir = tempdir("outage");
    let ca_dir = tempdir("outage-ca");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = meshd_config(&dir, CaSource::Dir(ca_dir), listen, Duration::from_secs(4));
    let meshd = daemon::start(config.clone()).await.unwrap();
    let (_, alpha) = workload(&meshd, "alpha", "alpha").await;
    let (_, beta) = workload(&meshd, "beta", "beta").await;
    sees(&alpha, "beta").await;
    let client = alpha.client();
    meshd.kill();

    // meshd is gone: requests keep flowing on the last snapshot and certificates.
    for _ in 0..20 {
        assert_eq!(
            whoami(&client, "http://beta:9080/whoami").await.unwrap(),
            "cluster.local/ns/default/sa/alpha"
        );
    }
    let before = beta.certified().unwrap().not_after;

    let meshd = daemon::start(config).await.unwrap();
    // Back: both re-register and renewal resumes.
    let deadline = Instant::now() + PATIENCE;
    while meshd.plane.registered() < 2 || beta.certified().unwrap().not_after == before {
        assert!(
            Instant::now() < deadline,
            "the mesh did not recover after meshd returned: {} registered",
            meshd.plane.registered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alpha.endpoints_of("beta").is_empty());
    assert_eq!(
        whoami(&client, "http://beta:9080/whoami").await.unwrap(),
        "cluster.local/ns/default/sa/alpha"
    );
}
