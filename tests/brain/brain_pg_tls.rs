//! The brain's PostgreSQL connection over TLS, for real, on loopback.
//!
//! PostgreSQL negotiates TLS inside its protocol: the client sends an 8-byte SSLRequest, the server
//! answers `S` (then the TLS handshake) or `N`. [`PgProxy`] plays that server in front of the real
//! one of `LIB_TEST_DATABASE_URL`: it answers `S`, does the handshake with the self-signed
//! certificate of `tests/fixtures/tls/` (for `localhost` and `127.0.0.1`), and forwards the
//! decrypted stream, the client's startup message first, to the real server in plain. Or it answers
//! `N` and forwards in plain, as a server with `ssl = off` does.
//!
//! - `sslmode=require` through the proxy: every connection is TLS, ingest and pull work.
//! - `verify-full` with `sslrootcert` = the fixture certificate works; without it, or for a host
//!   name the certificate does not name, the brain does not start, with one line that names the
//!   certificate problem; `verify-ca` does not compare the name.
//! - `require` against a server that refuses TLS fails with one line saying so; `prefer` (the
//!   default) goes on in plain there, and after a failed handshake, and uses TLS where it is
//!   offered; `disable` never asks.
//! - The URL's password never appears in any of these errors, nor in the binary's output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::brain::*;

/// The SSLRequest: length 8, then the code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const PASSWORD: &str = "pw-Never-Shown-7x";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `S`, and TLS with the fixture certificate.
    Tls,
    /// `N`, as a server without TLS.
    RefuseTls,
    /// `S`, then the connection closes: a handshake that fails.
    BrokenTls,
}

/// A PostgreSQL-speaking TLS terminator in front of the real test server.
struct PgProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    ssl_requests: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
}

impl PgProxy {
    async fn start(answer: Answer) -> PgProxy {
        let certs = CertificateDer::pem_file_iter(fixture("cert.pem"))
            .expect("fixture cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("fixture cert is PEM");
        let key = PrivateKeyDer::from_pem_file(fixture("key.pem")).expect("fixture key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let backend = backend();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = PgProxy {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            ssl_requests: Arc::default(),
            handshakes: Arc::default(),
        };
        let counters = (
            Arc::clone(&proxy.connections),
            Arc::clone(&proxy.ssl_requests),
            Arc::clone(&proxy.handshakes),
        );
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (connections, ssl_requests, handshakes) = (
                    Arc::clone(&counters.0),
                    Arc::clone(&counters.1),
                    Arc::clone(&counters.2),
                );
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if client.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    if first != SSL_REQUEST {
                        // No SSLRequest: the startup message itself, in plain.
                        if server.write_all(&first).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                        return;
                    }
                    ssl_requests.fetch_add(1, Ordering::SeqCst);
                    if answer == Answer::RefuseTls {
                        if client.write_all(b"N").await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                        return;
                    }
                    if client.write_all(b"S").await.is_err() || answer == Answer::BrokenTls {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return; // the brain refused our certificate
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        proxy
    }

    /// The test database's URL through this proxy, with a password (the server's trust
    /// authentication ignores it) and the given query.
    fn url(&self, host: &str, query: &str) -> String {
        let config = tokio_postgres::Config::from_str(&pg_url()).unwrap();
        format!(
            "postgres://{}:{PASSWORD}@{host}:{}/{}?{query}",
            config.get_user().unwrap_or("postgres"),
            self.addr.port(),
            config.get_dbname().unwrap_or("postgres"),
        )
    }

    fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// The real server's address, from `LIB_TEST_DATABASE_URL`.
fn backend() -> SocketAddr {
    let config = tokio_postgres::Config::from_str(&pg_url()).unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap()
}

fn root_cert() -> String {
    fixture("cert.pem").display().to_string()
}

/// Opens a brain on a fresh schema at `url`, expecting a refusal; returns its message.
async fn refused(url: &str) -> String {
    let schema = TestSchema::new();
    let err = schema
        .open_at(url)
        .await
        .err()
        .unwrap_or_else(|| panic!("connected, but should not have: {url}"))
        .to_string();
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
    assert!(!err.contains('\n'), "{err}");
    eprintln!("refused as expected: {err}");
    err
}

/// Ingest and pull through a brain on `url`: the connection works end to end.
async fn ingest_and_pull(url: &str) {
    let schema = TestSchema::new();
    let store = schema
        .open_at(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let fixture = Fixture::postgres_on(schema, store);
    let brain = fixture.serve().await;
    let batch = many("dev-tls", 3, 1);
    assert_eq!(brain.ingest_ok(&batch).await, (3, 3));
    let pulled = brain.pull_all().await;
    assert_eq!(
        ulids(&pulled),
        batch
            .iter()
            .map(|e| e.event_ulid.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_through_a_tls_proxy_ingests_and_pulls() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let proxy = PgProxy::start(Answer::Tls).await;
        ingest_and_pull(&proxy.url("127.0.0.1", "sslmode=require")).await;
        let connections = PgProxy::count(&proxy.connections);
        assert!(connections >= 2, "the pool and the LISTEN connection");
        assert_eq!(PgProxy::count(&proxy.ssl_requests), connections);
        assert_eq!(
            PgProxy::count(&proxy.handshakes),
            connections,
            "every connection is TLS"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_fixture_ca_works_and_without_it_names_the_certificate_problem() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let proxy = PgProxy::start(Answer::Tls).await;
        let ca = root_cert();
        ingest_and_pull(&proxy.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .await;
        assert!(PgProxy::count(&proxy.handshakes) >= 2);

        // No root named: the web PKI roots, which do not know the fixture's issuer.
        let err = refused(&proxy.url("127.0.0.1", "sslmode=verify-full")).await;
        assert!(
            err.contains("certificate does not verify against the public web PKI roots")
                && err.contains("sslrootcert=PATH")
                && err.contains("UnknownIssuer"),
            "{err}"
        );
        // A host name the certificate does not name (the connection still goes to 127.0.0.1).
        let wrong_name = proxy.url(
            "db.wrong.example",
            &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
        );
        let err = refused(&wrong_name).await;
        assert!(
            err.contains(&format!("does not verify against sslrootcert {ca}"))
                && err.contains("not valid for name \"db.wrong.example\""),
            "{err}"
        );
        // verify-ca checks the chain only.
        ingest_and_pull(&proxy.url(
            "db.wrong.example",
            &format!("hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"),
        ))
        .await;
        // A root file that is not there stops the start before any connection.
        let before = PgProxy::count(&proxy.connections);
        let err = refused(&proxy.url(
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
        ))
        .await;
        assert!(
            err.contains("sslrootcert /nonexistent/root.crt: cannot read"),
            "{err}"
        );
        assert_eq!(PgProxy::count(&proxy.connections), before);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_that_refuses_tls_fails_clearly() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let refusing = PgProxy::start(Answer::RefuseTls).await;
        let err = refused(&refusing.url("127.0.0.1", "sslmode=require")).await;
        assert!(
            err.contains("the server refused TLS") && err.contains("sslmode=require requires it"),
            "{err}"
        );
        let err = refused(&refusing.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", root_cert()),
        ))
        .await;
        assert!(err.contains("the server refused TLS"), "{err}");
        // prefer (the default) asks, hears no, and goes on in plain.
        ingest_and_pull(&refusing.url("127.0.0.1", "sslmode=prefer")).await;
        ingest_and_pull(&refusing.url("127.0.0.1", "application_name=x")).await;
        assert!(PgProxy::count(&refusing.ssl_requests) >= 4);

        // The real server, directly: when its ssl is off it is such a server too.
        let admin = TestSchema::new().admin().await;
        let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if ssl == "off" {
            let config = tokio_postgres::Config::from_str(&pg_url()).unwrap();
            let direct = format!(
                "postgres://{}:{PASSWORD}@{}/{}?sslmode=require",
                config.get_user().unwrap_or("postgres"),
                backend(),
                config.get_dbname().unwrap_or("postgres")
            );
            let err = refused(&direct).await;
            assert!(err.contains("the server refused TLS"), "{err}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_uses_tls_when_offered_and_disable_never_asks() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let proxy = PgProxy::start(Answer::Tls).await;
        ingest_and_pull(&proxy.url("127.0.0.1", "connect_timeout=5")).await;
        let connections = PgProxy::count(&proxy.connections);
        assert_eq!(PgProxy::count(&proxy.handshakes), connections);

        let plain = PgProxy::start(Answer::Tls).await;
        ingest_and_pull(&plain.url("127.0.0.1", "sslmode=disable")).await;
        assert!(PgProxy::count(&plain.connections) >= 2);
        assert_eq!(PgProxy::count(&plain.ssl_requests), 0);

        // A handshake that fails: prefer goes on without TLS (as libpq), require does not.
        let broken = PgProxy::start(Answer::BrokenTls).await;
        ingest_and_pull(&broken.url("127.0.0.1", "sslmode=prefer")).await;
        assert!(PgProxy::count(&broken.ssl_requests) >= 1);
        let err = refused(&broken.url("127.0.0.1", "sslmode=require")).await;
        assert!(err.contains("error performing TLS handshake"), "{err}");
    })
    .await
    .expect("test timed out");
}

/// When the real test server has TLS on (`SHOW ssl`), `sslmode=require` straight to it is TLS
/// with a real PostgreSQL: `pg_stat_ssl` says so for the brain's own sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_to_the_real_server_is_tls_when_it_offers_it() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = TestSchema::new();
        let admin = schema.admin().await;
        let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if ssl != "on" {
            eprintln!("the test server has ssl = {ssl}: nothing to check here");
            return;
        }
        let url = format!(
            "{}{}sslmode=require",
            pg_url(),
            if pg_url().contains('?') { "&" } else { "?" }
        );
        let store = schema.open_at(&url).await.expect("TLS to the real server");
        let rows = admin
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
                 WHERE a.application_name = $1",
                &[&format!("lib brain {}", schema.name)],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "the brain's sessions are listed");
        assert!(rows.iter().all(|r| r.get::<_, bool>(0)), "all of them TLS");
        drop(store);
    })
    .await
    .expect("test timed out");
}

/// The binary: a certificate it cannot verify stops `agent brain prune` with exit status 1 and one
/// line that names the problem and never the password.
#[test]
fn the_binary_reports_a_certificate_problem_in_one_line_without_the_password() {
    require_postgres!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy = runtime.block_on(PgProxy::start(Answer::Tls));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let run = |url: &str| {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_agent"))
                .arg("--config")
                .arg(dir.path().join("agent.toml"))
                .args(["brain", "prune", "--older-than", "1", "--database-url", url])
                .args(["--schema", &test_schema()])
                .env("LIB_LOG", "debug"),
        )
    };
    let out = run(&proxy.url("127.0.0.1", "sslmode=verify-full"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("certificate does not verify") && last.contains(":***@127.0.0.1"),
        "{stderr}"
    );

    // With the CA it runs (and the schema it made is dropped).
    let schema = TestSchema::new();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .args([
                "brain",
                "prune",
                "--older-than",
                "1",
                "--schema",
                &schema.name,
            ])
            .arg("--database-url")
            .arg(proxy.url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={}", root_cert()),
            ))
            .env("LIB_LOG", "debug"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(PgProxy::count(&proxy.handshakes) >= 1);
    drop(runtime);
}
