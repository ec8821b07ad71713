//! Certificates: the configured PEM files, or a self-signed development
//! certificate generated once and kept in the data folder.
//!
//! The development certificate names `localhost`, `127.0.0.1` and `::1`.
//! Clients cannot validate it against a CA; they pin its SHA-256
//! fingerprint (of the DER certificate), which the gateway prints at start.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// A certificate chain and its key, ready for rustls.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// Where it came from, for the start-up line.
    pub origin: String,
}

/// SHA-256 of a DER certificate, lowercase hex (what clients pin).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The default data folder: `$XDG_DATA_HOME/framegate`, else
/// `$HOME/.local/share/framegate`, else `./.framegate`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("framegate");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(h).join(".local/share/framegate");
    }
    PathBuf::from(".framegate")
}

/// Loads `tls.cert`/`tls.key` when configured, else the development
/// certificate in `data_dir/tls/` (generated on first use).
pub fn load_or_generate(tls: &TlsConfig, data_dir: &Path) -> Result<TlsMaterial, String> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => load_pem(cert, key, format!("from {}", cert.display())),
        (None, None) => dev_certificate(data_dir),
        _ => Err("tls.cert and tls.key must be given together".into()),
    }
}

fn load_pem(cert: &Path, key: &Path, origin: String) -> Result<TlsMaterial, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", cert.display()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| format!("no certificate in {}", cert.display()))?;
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    Ok(TlsMaterial {
        certs,
        key,
        fingerprint,
        origin,
    })
}

fn dev_certificate(data_dir: &Path) -> Result<TlsMaterial, String> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("dev-cert.pem"), dir.join("dev-key.pem"));
    let origin = format!("development certificate {}", cert.display());
    if cert.exists() && key.exists() {
        return load_pem(&cert, &key, origin);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| format!("cannot generate a development certificate: {e}"))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    load_pem(&cert, &key, origin)
}

/// Days a WebTransport certificate is valid (from an hour before it is
/// made). Browsers accept a certificate pinned by `serverCertificateHashes`
/// only when its whole validity is at most 14 days.
pub const WEBTRANSPORT_CERT_DAYS: i64 = 13;

/// A fresh self-signed certificate for WebTransport, kept in memory only:
/// ECDSA P-256, valid from an hour ago for [`WEBTRANSPORT_CERT_DAYS`] days,
/// for `localhost`, `127.0.0.1` and `::1` — what Chromium's
/// `serverCertificateHashes` requires.
pub fn webtransport_certificate() -> Result<TlsMaterial, String> {
    let err = |e: rcgen::Error| format!("cannot generate a WebTransport certificate: {e}");
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(err)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = params.not_before + time::Duration::days(WEBTRANSPORT_CERT_DAYS);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "framegate WebTransport");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let der = cert.der().clone();
    Ok(TlsMaterial {
        fingerprint: fingerprint(&der),
        certs: vec![der],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        origin: format!("generated at start, ECDSA P-256, valid {WEBTRANSPORT_CERT_DAYS} days"),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(&TlsConfig::default(), dir.path()).unwrap();
        let b = load_or_generate(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        assert_eq!(a.fingerprint, fingerprint(&b.certs[0]));
    }

    #[test]
    fn webtransport_certificate_fits_server_certificate_hashes() {
        let a = webtransport_certificate().unwrap();
        let b = webtransport_certificate().unwrap();
        assert_ne!(a.fingerprint, b.fingerprint, "fresh at every start");
        assert_eq!(a.fingerprint, fingerprint(&a.certs[0]));
        // The DER holds the P-256 curve OID and ecdsa-with-SHA256.
        let der = a.certs[0].as_ref();
        let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
        assert!(
            has(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
            "prime256v1"
        );
        assert!(
            has(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
            "ecdsa-with-SHA256"
        );
        const { assert!(WEBTRANSPORT_CERT_DAYS <= 14) };
    }

    #[test]
    fn cert_without_key_is_refused() {
        let tls = TlsConfig {
            cert: Some("x.pem".into()),
            key: None,
        };
        assert!(load_or_generate(&tls, Path::new("/nonexistent")).is_err());
    }
}
