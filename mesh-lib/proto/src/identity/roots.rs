//! The roots a workload trusts: the mesh CA's certificate, given to the workload out of band
//! (a mounted file, `MESH_CA_FILE`, like Istio's `istio-ca-root-cert` ConfigMap, or in
//! process by the launcher) and never taken from anything meshd sends. They verify meshd's
//! serving certificate before a bootstrap token leaves the process, the certificates meshd
//! issues, and every peer in the mesh.
//!
//! A file is read when the roots are needed rather than once at start, so a workload that
//! starts before meshd has published its root waits for it, and a replaced file (root
//! rotation) takes effect on the next connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why the trust roots cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read the mesh root certificate {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{what} holds no usable root certificate: {reason}")]
    Invalid { what: String, reason: String },
}

/// Where a workload's trust roots come from.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Loaded(Arc<Anchors>),
    File(PathBuf),
}

/// Parsed roots, ready for rustls and webpki.
#[derive(Debug)]
pub struct Anchors {
    pub store: Arc<RootCertStore>,
    pub ders: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// Roots from PEM text (the launcher hands its meshd's root over in process).
    pub fn from_pem(pem: &str) -> Result<Self, RootsError> {
        Ok(Self {
            source: Source::Loaded(Arc::new(parse(pem, "the given PEM")?)),
        })
    }

    /// Roots read from `path` whenever they are needed.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            source: Source::File(path.into()),
        }
    }

    /// The file the roots come from, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(path) => Some(path),
            Source::Loaded(_) => None,
        }
    }

    /// The roots as they are now.
    pub fn load(&self) -> Result<Arc<Anchors>, RootsError> {
        match &self.source {
            Source::Loaded(anchors) => Ok(anchors.clone()),
            Source::File(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| RootsError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Arc::new(parse(&pem, &path.display().to_string())?))
            }
        }
    }
}

fn parse(pem: &str, what: &str) -> Result<Anchors, RootsError> {
    let invalid = |reason: String| RootsError::Invalid {
        what: what.to_owned(),
        reason,
    };
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if ders.is_empty() {
        return Err(invalid("no PEM certificate found".into()));
    }
    let mut store = RootCertStore::empty();
    for der in &ders {
        store.add(der.clone()).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Anchors {
        store: Arc::new(store),
        ders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_come_from_pem_or_a_file_read_when_needed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root_pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(
            TrustRoots::from_pem(&root_pem)
                .unwrap()
                .load()
                .unwrap()
                .ders
                .len(),
            1
        );
        let path = std::env::temp_dir().join(format!("mesh-roots-{}.pem", fastrand::u64(..)));
        let roots = TrustRoots::from_file(&path);
        let err = roots.load().unwrap_err();
        assert!(
            err.to_string().contains("cannot read the mesh root"),
            "{err}"
        );
        std::fs::write(&path, "not pem").unwrap();
        let err = roots.load().unwrap_err();
        assert!(err.to_string().contains("no usable root"), "{err}");
        std::fs::write(&path, &root_pem).unwrap();
        assert_eq!(roots.load().unwrap().ders.len(), 1);
        std::fs::remove_file(path).unwrap();
    }
}
