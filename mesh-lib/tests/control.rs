//! The control plane's own channel as an attacker meets it, over real sockets: meshd speaks
//! TLS 1.3 only (openssl sees it; a plaintext gRPC client is refused), a workload sends its
//! token only inside TLS to a meshd its out-of-band root vouches for, renewals and watches are
//! authenticated by the workload's certificate, and a registration is bound to what that
//! certificate proves (service, address, count).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh::control::client::{self, ControlError, WorkloadSpec};
use mesh::control::pb::mesh_control_client::MeshControlClient;
use mesh::control::{connector, pb};
use mesh::identity::{Credentials, TrustRoots};
use meshd::CertificateAuthority;
use meshd::daemon::{self, CaSource, MeshdConfig, RunningMeshd};
use meshd::registration::RegistrationPolicy;
use meshd::server::{PlaneOptions, Tokens};
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const RATINGS_TOKEN: &str = "token-of-ratings";

/// meshd with tokens for bookinfo's accounts and at most `limit` registrations per identity.
async fn bookinfo_meshd(limit: usize) -> RunningMeshd {
    let mut tokens = Tokens::default();
    tokens.insert("default", "bookinfo-ratings", RATINGS_TOKEN);
    tokens.insert("default", "bookinfo-details", "token-of-details");
    daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        trust_domain: TD.to_owned(),
        cert_ttl: Duration::from_secs(3600),
        plane: PlaneOptions {
            registration: RegistrationPolicy {
                max_per_identity: limit,
                ..Default::default()
            },
            registration_grace: Duration::ZERO,
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn ratings_spec(url: String, roots: TrustRoots) -> WorkloadSpec {
    WorkloadSpec {
        control_plane: url,
        roots,
        token: RATINGS_TOKEN.to_owned(),
        token_file: None,
        service: "ratings".to_owned(),
        labels: BTreeMap::new(),
        namespace: "default".to_owned(),
        service_account: "bookinfo-ratings".to_owned(),
        admin_port: None,
    }
}

/// A workload process holding the ratings token, with its first certificate.
async fn ratings_holder(meshd: &RunningMeshd) -> Credentials {
    let credentials = Credentials::new(id("bookinfo-ratings"));
    client::certify(
        &ratings_spec(meshd.url(), meshd.trust_roots()),
        &credentials,
    )
    .await
    .unwrap();
    credentials
}

fn watch_as(service: &str, address: &str, admin_port: u32) -> pb::WatchRequest {
    pb::WatchRequest {
        workload: Some(pb::Workload {
            service: service.to_owned(),
            labels: Default::default(),
            namespace: "default".to_owned(),
            service_account: "bookinfo-ratings".to_owned(),
            address: address.to_owned(),
            admin_port,
            not_ready: false,
        }),
    }
}

fn client_for(
    meshd: &RunningMeshd,
    identity: Option<&Credentials>,
) -> MeshControlClient<tonic::transport::Channel> {
    MeshControlClient::new(
        connector::channel(&meshd.url(), meshd.trust_roots(), identity.cloned()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_completes_tls_1_3_with_meshd_and_refuses_older_versions() {
    if !has_openssl() {
        return;
    }
    let meshd = bookinfo_meshd(4).await;
    let dir = tempdir("meshd-openssl");
    let root = dir.join("root.pem");
    std::fs::write(&root, meshd.root_pem()).unwrap();
    let s_client = |extra: &'static [&'static str]| {
        let (addr, root) = (meshd.addr, root.clone());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string()])
                .args([
                    "-servername",
                    "meshd",
                    "-alpn",
                    "h2",
                    "-verify_return_error",
                ])
                .arg("-CAfile")
                .arg(&root)
                .args(extra)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        })
    };
    let text = s_client(&[]).await.unwrap();
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let text = s_client(&["-tls1_2"]).await.unwrap();
    assert!(
        text.contains("no peer certificate available") && !text.contains("New, TLSv1.2"),
        "TLS 1.2 was accepted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_grpc_client_is_refused() {
    let meshd = bookinfo_meshd(4).await;
    let plaintext = async {
        let mut client = MeshControlClient::connect(format!("http://{}", meshd.addr)).await?;
        let request = pb::CertifyRequest {
            token: RATINGS_TOKEN.to_owned(),
            namespace: "default".to_owned(),
            service_account: "bookinfo-ratings".to_owned(),
            csr_pem: Credentials::new(id("bookinfo-ratings"))
                .request()
                .unwrap()
                .csr_pem,
        };
        client.certify(request).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let result = tokio::time::timeout(PATIENCE, plaintext).await.unwrap();
    assert!(result.is_err(), "meshd answered plaintext gRPC");
    // And the workloads' side refuses to be pointed at plaintext at all.
    let env = [
        ("MESH_CONTROL_PLANE", "http://meshd:15012"),
        ("MESH_TOKEN", "x"),
        ("MESH_CA_FILE", "/run/root.pem"),
    ];
    let err = mesh::workload::WorkloadEnv::from_env(&env, "ratings").unwrap_err();
    assert!(err.to_string().contains("meshd serves TLS only"), "{err}");
    let env = [
        ("MESH_CONTROL_PLANE", "https://meshd:15012"),
        ("MESH_TOKEN", "x"),
    ];
    let err = mesh::workload::WorkloadEnv::from_env(&env, "ratings").unwrap_err();
    assert!(err.to_string().contains("MESH_CA_FILE"), "{err}");
}

/// Accepts one connection, keeps every byte the client sends until it gives up, and closes.
async fn record_one(listener: TcpListener) -> Vec<u8> {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The ClientHello comes first; answering with our end closed makes the client give up.
    let n = stream.read(&mut buf).await.unwrap();
    seen.extend_from_slice(&buf[..n]);
    stream.shutdown().await.unwrap();
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_leaves_before_tls_and_never_to_an_impostor() {
    let ca = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let roots = TrustRoots::from_pem(ca.root_pem()).unwrap();

    // Whatever listens where meshd should be sees a TLS ClientHello, never the token.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let recorder = tokio::spawn(record_one(listener));
    let credentials = Credentials::new(id("bookinfo-ratings"));
    let err = client::certify(&ratings_spec(url, roots.clone()), &credentials)
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Unreachable(_)), "{err}");
    let seen = recorder.await.unwrap();
    assert!(seen.len() > 5, "{seen:?}");
    assert_eq!(seen[0], 0x16, "a TLS handshake record comes first");
    assert_eq!(seen[5], 0x01, "and it is a ClientHello");
    assert!(
        !seen
            .windows(RATINGS_TOKEN.len())
            .any(|w| w == RATINGS_TOKEN.as_bytes()),
        "the token crossed the wire in clear"
    );

    // A TLS server with a certificate from another CA (an on-path impostor) completes no
    // handshake, so it never decrypts a byte of the request.
    let impostor_ca = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let impostor = meshd::listener::server_config(
        Arc::new(impostor_ca),
        meshd::listener::ServingNames::for_meshd("default", "127.0.0.1".parse().unwrap(), &[]),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        match tokio_rustls::TlsAcceptor::from(impostor)
            .accept(stream)
            .await
        {
            Ok(mut tls) => {
                let mut got = Vec::new();
                let _ = tls.read_to_end(&mut got).await;
                Some(got)
            }
            Err(_) => None,
        }
    });
    let err = client::certify(&ratings_spec(url, roots), &credentials)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("invalid peer"),
        "{err}"
    );
    assert_eq!(
        server.await.unwrap(),
        None,
        "the impostor completed a handshake"
    );
    assert!(credentials.current().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ratings_token_registers_only_as_ratings_at_its_own_address_and_within_its_limit() {
    let meshd = bookinfo_meshd(3).await;
    let ratings = ratings_holder(&meshd).await;
    let mut client = client_for(&meshd, Some(&ratings));
    for other in ["details", "reviews", "productpage"] {
        let status = client
            .watch(watch_as(other, "0.0.0.0:9080", 0))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{other}: {status}"
        );
        assert!(
            status.message().contains("may not register as service"),
            "{status}"
        );
    }
    // An address the connection does not come from.
    let status = client
        .watch(watch_as("ratings", "10.1.2.3:9080", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("comes from 127.0.0.1"),
        "{status}"
    );
    // Another account's name on a ratings certificate.
    let mut request = watch_as("details", "0.0.0.0:9080", 0);
    request.workload.as_mut().unwrap().service_account = "bookinfo-details".to_owned();
    let status = client.watch(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Without a certificate on the connection, no watch at all (a token is not enough).
    let status = client_for(&meshd, None)
        .watch(watch_as("ratings", "0.0.0.0:9080", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert_eq!(meshd.plane.registered(), 0);

    // As itself: up to the limit, and meshd derives where to scrape it from the address.
    let mut streams = Vec::new();
    for port in [9080, 9081, 9082] {
        streams.push(
            client
                .watch(watch_as("ratings", &format!("0.0.0.0:{port}"), 15021))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let status = client
        .watch(watch_as("ratings", "0.0.0.0:9083", 15021))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert_eq!(meshd.plane.registered(), 3);
    assert_eq!(
        meshd.plane.metrics_urls(),
        ["http://127.0.0.1:15021/stats/prometheus"]
    );
    let snapshot = streams[0].message().await.unwrap().unwrap();
    assert!(
        snapshot
            .endpoints
            .iter()
            .all(|e| e.service == "ratings" && e.address.starts_with("127.0.0.1:")),
        "{:?}",
        snapshot.endpoints
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_are_authenticated_by_the_certificate_and_foreign_certificates_are_refused() {
    let meshd = bookinfo_meshd(4).await;
    let ratings = ratings_holder(&meshd).await;
    let first = ratings.current().unwrap();
    // The token is not sent again: a renewal with a wrong one still succeeds over mTLS.
    let mut spec = ratings_spec(meshd.url(), meshd.trust_roots());
    spec.token = "not-the-token".to_owned();
    let renewed = client::certify(&spec, &ratings).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert_eq!(renewed.identity, id("bookinfo-ratings"));
    // Without a certificate, the wrong token proves nothing.
    let err = client::certify(&spec, &Credentials::new(id("bookinfo-ratings")))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Refused(_)), "{err}");
    // A certificate speaks only for its identity, whatever token comes with it.
    let mut details = spec.clone();
    details.service_account = "bookinfo-details".to_owned();
    details.token = "token-of-details".to_owned();
    let status = client_for(&meshd, Some(&ratings))
        .certify(pb::CertifyRequest {
            token: details.token.clone(),
            namespace: "default".to_owned(),
            service_account: "bookinfo-details".to_owned(),
            csr_pem: Credentials::new(id("bookinfo-details"))
                .request()
                .unwrap()
                .csr_pem,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // A client certificate from another CA fails the handshake with meshd.
    let foreign_ca = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let foreign = Credentials::new(id("bookinfo-ratings"));
    let request = foreign.request().unwrap();
    let cert = foreign_ca
        .sign(&request.csr_pem, &id("bookinfo-ratings"))
        .unwrap();
    foreign
        .install(
            request,
            &cert,
            &TrustRoots::from_pem(foreign_ca.root_pem())
                .unwrap()
                .load()
                .unwrap(),
        )
        .unwrap();
    let status = client_for(&meshd, Some(&foreign))
        .watch(watch_as("ratings", "0.0.0.0:9080", 0))
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert_eq!(meshd.plane.registered(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_meshd_marks_its_snapshots_incomplete_until_the_window_ends() {
    let meshd = daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::Ephemeral,
        plane: PlaneOptions {
            registration_grace: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!meshd.plane.is_complete());
    let quick = bookinfo_meshd(4).await;
    assert!(quick.plane.is_complete());
    // What a data plane receives says so too.
    let ratings = ratings_holder(&quick).await;
    let mut stream = client_for(&quick, Some(&ratings))
        .watch(watch_as("ratings", "0.0.0.0:9080", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().unwrap().complete);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_ca_rotation_workloads_re_certify_with_their_token() {
    let start = |ca: &Arc<CertificateAuthority>| {
        let mut tokens = Tokens::default();
        tokens.insert("default", "bookinfo-ratings", RATINGS_TOKEN);
        daemon::start(MeshdConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ca: CaSource::Shared(ca.clone()),
            tokens,
            plane: PlaneOptions {
                registration_grace: Duration::ZERO,
                ..Default::default()
            },
            ..Default::default()
        })
    };
    let old_ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let new_ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let dir = tempdir("rotation");
    let roots_file = dir.join("root-cert.pem");
    std::fs::write(&roots_file, old_ca.root_pem()).unwrap();
    let old = start(&old_ca).await.unwrap();
    let credentials = Credentials::new(id("bookinfo-ratings"));
    let mut spec = ratings_spec(old.url(), TrustRoots::from_file(&roots_file));
    client::certify(&spec, &credentials).await.unwrap();
    let anchors = |pem: &str| TrustRoots::from_pem(pem).unwrap().load().unwrap();
    assert!(
        credentials
            .current()
            .unwrap()
            .chains_to(&anchors(old_ca.root_pem()))
    );

    // Both roots trusted during the changeover: the old certificate still chains locally,
    // the new meshd refuses it in the handshake, and the token gets a new one.
    let new = start(&new_ca).await.unwrap();
    spec.control_plane = new.url();
    std::fs::write(
        &roots_file,
        format!("{}{}", old_ca.root_pem(), new_ca.root_pem()),
    )
    .unwrap();
    client::certify(&spec, &credentials).await.unwrap();
    assert!(
        credentials
            .current()
            .unwrap()
            .chains_to(&anchors(new_ca.root_pem()))
    );

    // Only the new root: an old certificate no longer chains, so it is not even presented.
    let stale = Credentials::new(id("bookinfo-ratings"));
    client::certify(
        &ratings_spec(old.url(), roots_file_for(&dir, &old_ca)),
        &stale,
    )
    .await
    .unwrap();
    std::fs::write(&roots_file, new_ca.root_pem()).unwrap();
    client::certify(&spec, &stale).await.unwrap();
    assert!(
        stale
            .current()
            .unwrap()
            .chains_to(&anchors(new_ca.root_pem()))
    );
}

fn roots_file_for(dir: &std::path::Path, ca: &CertificateAuthority) -> TrustRoots {
    let path = dir.join(format!("root-{}.pem", fastrand::u64(..)));
    std::fs::write(&path, ca.root_pem()).unwrap();
    TrustRoots::from_file(path)
}

/// A TLS 1.3 connection to `meshd` that presents no client certificate (what anyone can open).
async fn anonymous_tls(
    meshd: &RunningMeshd,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(meshd.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("meshd").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_succeed_while_thousands_of_anonymous_connections_are_held() {
    // 5,000 connections held by the attacker side of this process, meshd's side beside them.
    let _ = mesh::nofile::raise_nofile_limit();
    const HOSTILE: usize = 5_000;
    const MAX: usize = 256;
    const GRACE: Duration = Duration::from_secs(2);
    let mut tokens = Tokens::default();
    tokens.insert("default", "bookinfo-ratings", RATINGS_TOKEN);
    let meshd = daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        trust_domain: TD.to_owned(),
        cert_ttl: Duration::from_secs(3600),
        listener: meshd::listener::ListenerLimits {
            max_connections: MAX,
            uncertified_grace: GRACE,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let ratings = ratings_holder(&meshd).await;
    let spec = ratings_spec(meshd.url(), meshd.trust_roots());

    let config = Arc::new({
        let mut c = rustls::ClientConfig::builder_with_provider(mesh::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(meshd.trust_roots().load().unwrap().store.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        c
    });
    // Half finish TLS without a certificate and then say nothing; half never say a word.
    let mut held_tls = Vec::new();
    let mut held_tcp = Vec::new();
    for i in 0..HOSTILE {
        if i % 2 == 0 {
            // A handshake meshd already closed (its lobby was full) is still a held socket.
            if let Ok(tls) = anonymous_tls(&meshd, config.clone()).await {
                held_tls.push(tls);
            }
        } else {
            held_tcp.push(tokio::net::TcpStream::connect(meshd.addr).await.unwrap());
        }
    }

    // While they are all held, a renewal (mTLS) and a first certificate (token) both succeed.
    let renewed = client::certify(&spec, &ratings).await;
    assert!(renewed.is_ok(), "renewal failed: {:?}", renewed.err());
    let fresh = Credentials::new(id("bookinfo-ratings"));
    let first = client::certify(&spec, &fresh).await;
    assert!(first.is_ok(), "first certificate failed: {:?}", first.err());
    // The flood was real: meshd finished most of those handshakes, and closes them in turn.
    assert!(
        held_tls.len() > HOSTILE / 4,
        "only {} anonymous handshakes finished",
        held_tls.len()
    );

    // An anonymous connection that nothing pushes out is closed once its grace is over.
    let mut late = anonymous_tls(&meshd, config).await.unwrap();
    let started = std::time::Instant::now();
    // meshd speaks first (its HTTP/2 settings): read until it closes.
    let mut sink = Vec::new();
    let read = tokio::time::timeout(GRACE + PATIENCE, late.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "an anonymous connection stayed open");
    assert!(
        started.elapsed() + Duration::from_millis(100) >= GRACE,
        "closed before its grace: {:?}",
        started.elapsed()
    );
    drop((held_tls, held_tcp));
}
