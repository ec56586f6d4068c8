//! TLS between the brain and PostgreSQL, with libpq's `sslmode` settings (Supabase requires TLS).
//!
//! tokio-postgres parses `sslmode=disable|prefer|require` itself and negotiates TLS in-protocol
//! (the 8-byte SSLRequest, then the handshake) through a [`MakeTlsConnect`]; it knows nothing of
//! `verify-ca`, `verify-full` or `sslrootcert`. So [`TlsSettings::split_url`] takes those off the
//! URL, hands tokio-postgres a URL it parses (`verify-*` become `require`: TLS or no connection),
//! and [`TlsSettings::connector`] builds the rustls (ring) connector that does the checking:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` (default) | when the server offers it | no (as libpq) |
//! | `require` | always | no; with `sslrootcert`, its chain (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` (default: the web PKI roots) |
//! | `verify-full` | always | chain and host name |
//!
//! An unchecked certificate still encrypts, and the handshake's signatures are still verified;
//! SCRAM channel binding (`tls-server-end-point`) is offered, so a password login through a
//! man in the middle fails even then.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values this brain understands (`allow` is not one: it would try plain first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<SslMode, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode=allow is not supported: use prefer, require or disable".into()),
            other => Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }

    /// The mode tokio-postgres is given: it only decides whether TLS is attempted and required.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=PATH`: a PEM file (a bundle of several is fine).
    File(PathBuf),
    /// `sslrootcert=system`, and the default of `verify-*`: the Mozilla roots built into the binary.
    WebPki,
}

/// The TLS part of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `None` when the URL names none.
    pub root_cert: Option<RootCert>,
}

impl TlsSettings {
    /// Splits `sslmode` and `sslrootcert` off a `postgres://` URL: returns the URL for
    /// tokio-postgres and the settings. Errors are one line and never contain the URL.
    pub fn split_url(url: &str) -> Result<(String, TlsSettings), String> {
        let mut settings = TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
        };
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => settings.mode = SslMode::parse(&percent_decode(value)?)?,
                "sslrootcert" => {
                    let value = percent_decode(value)?;
                    settings.root_cert = Some(match value.as_str() {
                        "" => {
                            return Err("sslrootcert is empty: give the path of a PEM file".into())
                        }
                        "system" => RootCert::WebPki,
                        path => RootCert::File(PathBuf::from(path)),
                    });
                }
                key @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir") => {
                    return Err(format!(
                        "{key} is not supported: the brain does not log in with a client certificate"
                    ));
                }
                _ => kept.push(pair),
            }
        }
        kept.push(match settings.mode.for_tokio_postgres() {
            "disable" => "sslmode=disable",
            "prefer" => "sslmode=prefer",
            _ => "sslmode=require",
        });
        Ok((format!("{base}?{}", kept.join("&")), settings))
    }

    /// The rustls connector for these settings; reads and checks the CA file once, here, so a
    /// wrong path is one error at start naming it rather than a failed handshake per connection.
    pub fn connector(&self) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = || -> Result<Arc<RootCertStore>, String> {
            let mut store = RootCertStore::empty();
            match &self.root_cert {
                Some(RootCert::File(path)) => {
                    let name = path.display();
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("sslrootcert {name}: cannot read: {e}"))?;
                    let certs = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("sslrootcert {name}: not a PEM file: {e}"))?;
                    if certs.is_empty() {
                        return Err(format!(
                            "sslrootcert {name}: holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"
                        ));
                    }
                    for (i, cert) in certs.into_iter().enumerate() {
                        store.add(cert).map_err(|e| {
                            format!(
                                "sslrootcert {name}: certificate {} is not usable as a CA: {e}",
                                i + 1
                            )
                        })?;
                    }
                }
                Some(RootCert::WebPki) | None => {
                    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
            Ok(Arc::new(store))
        };
        let webpki = |roots| {
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("TLS certificate verifier: {e}"))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => {
                Arc::new(Unverified(Arc::clone(&provider)))
            }
            // libpq: with a root certificate at hand, require checks the chain as verify-ca does.
            (SslMode::Disable | SslMode::Prefer, Some(_)) => {
                Arc::new(Unverified(Arc::clone(&provider)))
            }
            (SslMode::Require | SslMode::VerifyCa, _) => Arc::new(ChainOnly(webpki(roots()?)?)),
            (SslMode::VerifyFull, _) => webpki(roots()?)?,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq 17 sends; servers before 17 ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }

    /// What a failed connection needs said about TLS, from the error text tokio-postgres gives:
    /// the fix for a refused or untrusted certificate, or for a server without TLS.
    pub fn hint(&self, error: &tokio_postgres::Error) -> Option<String> {
        if crate::tls::certificate_error(error).is_some() {
            return Some(match (self.mode, &self.root_cert) {
                (_, Some(RootCert::File(path))) => format!(
                    "the server's certificate does not verify against sslrootcert {} (sslmode={})",
                    path.display(),
                    self.mode.as_str()
                ),
                _ => format!(
                    "the server's certificate does not verify against the public web PKI roots \
                     (sslmode={}): name the CA that signed it with sslrootcert=PATH",
                    self.mode.as_str()
                ),
            });
        }
        if crate::tls::one_line(error).contains("server does not support TLS") {
            return Some(format!(
                "the server refused TLS (it answered the SSLRequest with 'N') and sslmode={} \
                 requires it: turn ssl on in the server, or use sslmode=prefer or disable",
                self.mode.as_str()
            ));
        }
        None
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("the database URL has a bad %-escape in its parameters")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a database URL parameter is not UTF-8".to_owned())
}

/// `prefer` and `require` without a root certificate: any certificate is taken (libpq's
/// behaviour), but the handshake signatures are still checked, so the session is encrypted to
/// the holder of the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS hook: one connector per connection, named for the host it connects to.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: Arc::clone(&self.config),
            // An IP address is a name too (rustls checks it against the IP SANs).
            server_name: ServerName::try_from(host.to_owned())?,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.server_name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tls_server_end_point(cert))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// RFC 5929 `tls-server-end-point`: the hash of the server's certificate, with the hash of its
/// signature algorithm (SHA-256 for MD5 and SHA-1). `None` for an algorithm whose hash is not
/// fixed by its identifier (RSASSA-PSS, Ed25519): SCRAM then runs without channel binding,
/// as libpq does when it cannot compute one.
fn tls_server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }
    let (certificate, _) = der(cert.as_ref(), 0x30)?;
    let (_tbs, rest) = der_any(certificate)?;
    let (algorithm, _) = der(rest, 0x30)?;
    let (oid, _) = der(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let bits = match oid {
        [prefix @ .., last] if prefix == RSA => match last {
            0x04 | 0x05 | 0x0b => 256, // md5, sha1, sha256 WithRSAEncryption
            0x0c => 384,
            0x0d => 512,
            _ => return None,
        },
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            0x02 => 256,
            0x03 => 384,
            0x04 => 512,
            _ => return None,
        },
        _ if oid == ECDSA_SHA1 => 256,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(cert.as_ref()).to_vec(),
        384 => Sha384::digest(cert.as_ref()).to_vec(),
        _ => Sha512::digest(cert.as_ref()).to_vec(),
    })
}

/// One DER element with the given tag: (its contents, what follows it).
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    der_any(input)
}

fn der_any(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_and_the_root_file_come_off_the_url() {
        let (url, s) = TlsSettings::split_url(
            "postgres://u:pw@db.example.com:5432/postgres?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&application_name=b",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:pw@db.example.com:5432/postgres?application_name=b&sslmode=require"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(RootCert::File("/etc/ca x.pem".into())));

        let (url, s) = TlsSettings::split_url("postgres://h/db").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert_eq!(s.mode, SslMode::Prefer);
        let (url, s) = TlsSettings::split_url("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(
            (url.as_str(), s.mode),
            ("postgres://h/db?sslmode=disable", SslMode::Disable)
        );
        let (_, s) = TlsSettings::split_url("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(s.root_cert, Some(RootCert::WebPki));
    }

    #[test]
    fn unsupported_settings_are_refused_in_one_line_without_the_url() {
        for (url, expected) in [
            (
                "postgres://u:secret@h/db?sslmode=allow",
                "sslmode=allow is not supported",
            ),
            (
                "postgres://u:secret@h/db?sslmode=verify",
                "sslmode=verify is not one of",
            ),
            (
                "postgres://u:secret@h/db?sslcert=/c.pem",
                "sslcert is not supported",
            ),
        ] {
            let err = TlsSettings::split_url(url).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn a_root_file_that_is_missing_or_holds_no_certificate_is_named() {
        let settings = |path: &str| TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File(path.into())),
        };
        let err = settings("/nonexistent/root.crt").connector().err().unwrap();
        assert!(
            err.starts_with("sslrootcert /nonexistent/root.crt: cannot read"),
            "{err}"
        );
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/key.pem");
        let err = settings(key).connector().err().unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let cert = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/cert.pem");
        assert!(settings(cert).connector().is_ok());
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
        // The fixture is signed ecdsa-with-SHA256: the binding is the SHA-256 of its DER.
        let pem = include_bytes!("../../../../tests/fixtures/tls/cert.pem");
        let cert = CertificateDer::pem_slice_iter(pem).next().unwrap().unwrap();
        assert_eq!(
            tls_server_end_point(&cert),
            Some(Sha256::digest(cert.as_ref()).to_vec())
        );
        assert_eq!(
            tls_server_end_point(&CertificateDer::from(vec![0x30, 0x00])),
            None
        );
        assert_eq!(
            tls_server_end_point(&CertificateDer::from(vec![0x30, 0x85])),
            None
        );
    }
}
