//! The mesh's certificate authority (run by meshd): a root key and certificate, generated on
//! first start and kept in a directory (or supplied by the user), that sign workloads' CSRs
//! into short-lived leaf certificates carrying exactly one SPIFFE URI SAN.
//!
//! The CA decides the identity, never the CSR: a CSR that asks for another identity is
//! refused, and the signed certificate carries only the identity the caller proved.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use mesh_proto::identity::SpiffeId;

/// How long a workload certificate is valid unless configured otherwise (Istio's default).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the generated root is valid.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How far back certificates are valid, for clocks that disagree a little.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long meshd's own serving certificate is valid; meshd re-issues it at half-life.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// File names in the CA directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// Why the CA cannot start or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a usable {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{dir} holds {present} but not {missing}; supply both or neither")]
    HalfPresent {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("the request asks for {requested}, but the caller is {proven}")]
    ForeignIdentity { requested: String, proven: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A root that signs workload certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    cert_ttl: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_ttl", &self.cert_ttl)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh root, kept only in memory.
    pub fn generate(trust_domain: &str, cert_ttl: Duration) -> Result<Self, CaError> {
        let (root_pem, key) = new_root(trust_domain)?;
        Self::from_pem(&root_pem, key, cert_ttl, Path::new("(generated)"))
    }

    /// Loads the root from `dir`, or generates one there on first start. Existing files are
    /// never overwritten: a corrupt or half-present pair is an error to fix by hand.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        cert_ttl: Duration,
    ) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::from_files(&cert_path, &key_path, cert_ttl),
            (false, false) => {
                fs::create_dir_all(dir).map_err(|source| CaError::Write {
                    path: dir.to_owned(),
                    source,
                })?;
                let (root_pem, key) = new_root(trust_domain)?;
                write_private(&key_path, &key.serialize_pem())?;
                fs::write(&cert_path, &root_pem).map_err(|source| CaError::Write {
                    path: cert_path.clone(),
                    source,
                })?;
                tracing::info!("generated a new mesh root CA in {}", dir.display());
                Self::from_pem(&root_pem, key, cert_ttl, &cert_path)
            }
            (true, false) => Err(CaError::HalfPresent {
                dir: dir.to_owned(),
                present: ROOT_CERT_FILE,
                missing: ROOT_KEY_FILE,
            }),
            (false, true) => Err(CaError::HalfPresent {
                dir: dir.to_owned(),
                present: ROOT_KEY_FILE,
                missing: ROOT_CERT_FILE,
            }),
        }
    }

    /// Loads a user-supplied root certificate and key (PEM).
    pub fn from_files(cert: &Path, key: &Path, cert_ttl: Duration) -> Result<Self, CaError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let root_pem = read(cert)?;
        let key_pem = read(key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Corrupt {
            path: key.to_owned(),
            what: "private key",
            reason: e.to_string(),
        })?;
        Self::from_pem(&root_pem, key, cert_ttl, cert)
    }

    fn from_pem(
        root_pem: &str,
        key: KeyPair,
        cert_ttl: Duration,
        path: &Path,
    ) -> Result<Self, CaError> {
        let corrupt = |reason: String| CaError::Corrupt {
            path: path.to_owned(),
            what: "CA certificate",
            reason,
        };
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(root_pem.as_bytes())
            .map_err(|e: rustls_pki_types::pem::Error| corrupt(e.to_string()))?;
        let der: rustls_pki_types::CertificateDer<'static> = der;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| corrupt(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(corrupt("it does not belong to the CA private key".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self {
            issuer,
            root_pem: root_pem.to_owned(),
            cert_ttl,
        })
    }

    /// The root certificate every workload trusts (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn cert_ttl(&self) -> Duration {
        self.cert_ttl
    }

    /// Signs `csr_pem` for `identity`, which the caller has proven, valid from a minute ago
    /// (clock skew) for the configured TTL. The CSR may name no identity or exactly this one;
    /// anything else is refused.
    pub fn sign(&self, csr_pem: &str, identity: &SpiffeId) -> Result<String, CaError> {
        let now = SystemTime::now();
        self.sign_valid(csr_pem, identity, now - CLOCK_SKEW, now + self.cert_ttl)
    }

    /// [`sign`](Self::sign) with an explicit validity (tests make expired certificates so).
    pub fn sign_valid(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let wanted = identity.to_string();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            if requested != wanted {
                return Err(CaError::ForeignIdentity {
                    requested,
                    proven: wanted,
                });
            }
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            wanted
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &fastrand::u64(..).to_be_bytes(),
        ));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(cert.pem())
    }
}

/// A server certificate for meshd's own API and its private key, both PEM.
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh key and a server-only certificate for `dns_names` and `ips`, valid for
    /// [`SERVING_CERT_TTL`]. It carries no SPIFFE id and no client-auth usage, so it can never
    /// pass as a workload; workload certificates carry no DNS or IP name, so none can pass as
    /// meshd.
    pub fn sign_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<ServingCert, CaError> {
        let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        let mut names = Vec::new();
        for name in dns_names {
            names.push(SanType::DnsName(
                name.as_str().try_into().map_err(sign_err)?,
            ));
        }
        names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = names;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "meshd");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        let not_after = now + SERVING_CERT_TTL;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &fastrand::u64(..).to_be_bytes(),
        ));
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

fn new_root(trust_domain: &str) -> Result<(String, KeyPair), CaError> {
    let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
    let key = KeyPair::generate().map_err(sign_err)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, "bookinfo mesh root CA");
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + ROOT_TTL;
    let cert = params.self_signed(&key).map_err(sign_err)?;
    Ok((cert.pem(), key))
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(err)?;
    io::Write::write_all(&mut file, contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::identity::Credentials;
    use rustls_pki_types::pem::PemObject;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa)
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-ca-{name}-{}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn signs_the_proven_identity_into_a_uri_san() {
        let ca = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let creds = Credentials::new(id("bookinfo-details"));
        let request = creds.request().unwrap();
        let cert = ca.sign(&request.csr_pem, &id("bookinfo-details")).unwrap();
        let anchors = mesh_proto::identity::TrustRoots::from_pem(ca.root_pem())
            .unwrap()
            .load()
            .unwrap();
        let certified = creds.install(request, &cert, &anchors).unwrap();
        assert_eq!(certified.identity, id("bookinfo-details"));
        let life = certified
            .not_after
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(life > DEFAULT_CERT_TTL - Duration::from_secs(60) && life <= DEFAULT_CERT_TTL);
    }

    #[test]
    fn a_certificate_from_a_root_the_workload_was_not_given_is_not_installed() {
        let ours = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let impostor = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let creds = Credentials::new(id("bookinfo-details"));
        let request = creds.request().unwrap();
        let cert = impostor
            .sign(&request.csr_pem, &id("bookinfo-details"))
            .unwrap();
        let anchors = mesh_proto::identity::TrustRoots::from_pem(ours.root_pem())
            .unwrap()
            .load()
            .unwrap();
        let err = creds.install(request, &cert, &anchors).unwrap_err();
        assert!(
            err.to_string().contains("does not chain to the mesh root"),
            "{err}"
        );
        assert!(creds.current().is_none());
    }

    #[test]
    fn the_serving_certificate_names_meshd_and_cannot_pass_as_a_workload() {
        let ca = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let serving = ca
            .sign_serving(&["meshd".to_owned()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap();
        assert!(mesh_proto::tls::spiffe_id_of(&der).is_err(), "no SPIFFE id");
        let root =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap();
        let err =
            mesh_proto::tls::verify_chain(&der, &[], &[root], rustls_pki_types::UnixTime::now())
                .unwrap_err();
        assert!(err.to_string().contains("RequiredEkuNotFound"), "{err}");
    }

    #[test]
    fn a_csr_for_another_identity_is_refused() {
        let ca = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let request = Credentials::new(id("bookinfo-ratings")).request().unwrap();
        let err = ca
            .sign(&request.csr_pem, &id("bookinfo-details"))
            .unwrap_err();
        assert!(matches!(err, CaError::ForeignIdentity { .. }), "{err}");
        assert!(err.to_string().contains("bookinfo-ratings"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_csr() {
        let ca = CertificateAuthority::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let err = ca
            .sign(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id("x"),
            )
            .unwrap_err();
        assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");
    }

    #[test]
    fn the_root_is_generated_once_and_reloaded() {
        let dir = tempdir("persist");
        let first =
            CertificateAuthority::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        let again =
            CertificateAuthority::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        assert_eq!(first.root_pem(), again.root_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(ROOT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_or_half_present_files_are_errors_and_are_left_alone() {
        let dir = tempdir("corrupt");
        fs::write(dir.join(ROOT_CERT_FILE), "not a certificate").unwrap();
        let err = CertificateAuthority::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
        fs::write(dir.join(ROOT_KEY_FILE), "not a key").unwrap();
        let err = CertificateAuthority::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(
            matches!(
                err,
                CaError::Corrupt {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.join(ROOT_CERT_FILE)).unwrap(),
            "not a certificate"
        );

        // A real key with a certificate that is not its own.
        let other = tempdir("other");
        CertificateAuthority::load_or_create(&other, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        let mine = tempdir("mine");
        CertificateAuthority::load_or_create(&mine, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        fs::copy(other.join(ROOT_CERT_FILE), mine.join(ROOT_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(&mine, "cluster.local", DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not belong to the CA private key"),
            "{err}"
        );
        for d in [dir, other, mine] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}
