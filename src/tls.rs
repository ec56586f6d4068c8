//! TLS for the two HTTP clients: the agent's brain client (`sync::client`) and the brain's webhook
//! delivery (`brain::webhooks`). Both are reqwest on rustls with the ring provider, trusting the
//! web PKI roots (reqwest's `rustls-tls` feature), so an https:// brain with a public certificate
//! (Supabase) works with no setting at all.
//!
//! This module adds what the roots cannot cover: an extra CA file, for a self-hosted brain (or
//! webhook listener) whose certificate comes from a private CA. The file is read and checked
//! once, when the client is built, so a wrong path or a file of the wrong kind is a one-line error
//! at startup naming the file and the setting, not a failed handshake on every request.
//!
//! TLS between the brain and PostgreSQL is another matter, with libpq's settings:
//! `brain::store::postgres::sslmode`.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// An extra CA file and where it was configured, so that errors can name the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    /// Absolute.
    pub path: PathBuf,
    /// The setting that named it, as a user would look for it: `config /etc/agent.toml: line 4:
    /// sync.brain_ca_file`, `environment LIB_BRAIN_CA_FILE`, `flag --webhook-ca-file`.
    pub origin: String,
}

/// Why a CA file cannot be used. Display is one line: the setting, the file, the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: CA file {}: {problem}", .file.origin, .file.path.display())]
pub struct CaFileError {
    pub file: CaFile,
    pub problem: String,
}

/// Certificates trusted on top of the web PKI roots, parsed and checked.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    certs: Vec<reqwest::Certificate>,
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.certs.len())
    }
}

impl ExtraRoots {
    /// No extra roots: the web PKI only.
    pub fn none() -> ExtraRoots {
        ExtraRoots::default()
    }

    /// Reads every certificate of a PEM file (a bundle of several is fine).
    pub fn load(file: &CaFile) -> Result<ExtraRoots, CaFileError> {
        let error = |problem: String| CaFileError {
            file: file.clone(),
            problem,
        };
        let bytes = std::fs::read(&file.path).map_err(|e| error(format!("cannot read: {e}")))?;
        ExtraRoots::from_pem(&bytes).map_err(error)
    }

    /// Every `CERTIFICATE` block of a PEM text. Other blocks (a private key kept in the same
    /// file) are skipped; a text with no certificate at all is refused, since trusting nothing
    /// extra is surely not what the user who named the file meant.
    pub fn from_pem(pem: &[u8]) -> Result<ExtraRoots, String> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file: {e}"))?;
        if ders.is_empty() {
            return Err(
                "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)".to_owned(),
            );
        }
        let mut certs = Vec::with_capacity(ders.len());
        for (i, der) in ders.into_iter().enumerate() {
            // The check rustls makes when the client is built, made here so that a bad
            // certificate is reported with the file's name instead of as "builder error".
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
            let cert = reqwest::Certificate::from_der(&der)
                .map_err(|e| format!("certificate {}: {e}", i + 1))?;
            certs.push(cert);
        }
        Ok(ExtraRoots { certs })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The certificates, to hand to a reqwest client builder (blocking or async) with
    /// `add_root_certificate`; the web PKI roots stay trusted beside them.
    pub fn certificates(&self) -> impl Iterator<Item = reqwest::Certificate> + '_ {
        self.certs.iter().cloned()
    }
}

/// An error and its causes on one line: reqwest's own Display says only "error sending request".
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The TLS error behind a failed request, when the cause is the server's certificate (unknown
/// issuer, wrong name, expired): the one-line reason rustls gives. `None` for every other failure.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            let about_certificate = matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::CertificateExpired
                            | rustls::AlertDescription::CertificateUnknown
                    )
            );
            return about_certificate.then(|| tls.to_string());
        }
        // rustls reports through io::Errors (nested: hyper wraps the one tokio-rustls made),
        // and io::Error's `source()` skips the error it wraps; `get_ref` reaches it.
        next = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => std::error::Error::source(io),
            },
            None => cause.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_no_certificate_is_refused() {
        let err = ExtraRoots::from_pem(b"hello\n").expect_err("no PEM");
        assert!(err.contains("no PEM certificate"), "{err}");
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = ExtraRoots::from_pem(key_only).expect_err("a key is not a CA");
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_certificate_block_that_is_not_a_certificate_is_refused() {
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = ExtraRoots::from_pem(garbage).expect_err("not X.509");
        assert!(err.contains("certificate 1"), "{err}");
    }

    #[test]
    fn the_test_fixture_is_one_usable_certificate() {
        let pem = include_bytes!("../tests/fixtures/tls/cert.pem");
        assert_eq!(ExtraRoots::from_pem(pem).expect("fixture").len(), 1);
        // A key kept in the same file as the certificate is skipped, not an error.
        let mut both = pem.to_vec();
        both.extend_from_slice(include_bytes!("../tests/fixtures/tls/key.pem"));
        assert_eq!(ExtraRoots::from_pem(&both).expect("cert + key").len(), 1);
    }

    #[test]
    fn a_missing_file_names_the_setting_and_the_file() {
        let file = CaFile {
            path: PathBuf::from("/nonexistent/ca.pem"),
            origin: "environment LIB_BRAIN_CA_FILE".into(),
        };
        let err = ExtraRoots::load(&file).expect_err("missing").to_string();
        assert!(
            err.starts_with(
                "environment LIB_BRAIN_CA_FILE: CA file /nonexistent/ca.pem: cannot read"
            ),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
