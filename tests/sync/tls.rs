//! https:// end to end, on loopback: a TLS-terminating proxy (tokio-rustls, the self-signed
//! certificate of `tests/fixtures/tls/`) in front of a real brain, and in front of a real webhook
//! listener.
//!
//! - Push and pull through `https://127.0.0.1:PORT` work when the certificate is trusted through
//!   the extra CA file (`LIB_BRAIN_CA_FILE`, `[sync] brain_ca_file`), by the library and by
//!   `agent sync`.
//! - Without it they fail with one line that names the certificate and the setting, no panic, and
//!   the outbox keeps every event for the next try.
//! - A CA file that is missing or not PEM is an error naming the file and the setting.
//! - The brain delivers a signed webhook to an `https://` URL, and counts a delivery it cannot
//!   make because it does not trust the listener's certificate as a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lib_agent::brain::server::ServerConfig;
use lib_agent::sync::{self, listener, BrainClient, ClientError};
use lib_agent::tls::{CaFile, ExtraRoots};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support;
use crate::support::brain::{upsert, SECRET};
use crate::support::brain_blocking::BlockingBrain;
use crate::support::device::Device;
use crate::support::lab::Lab;
use crate::support::wait::{wait_until, PATIENCE};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn test_ca() -> CaFile {
    CaFile {
        path: fixture("cert.pem"),
        origin: "test".into(),
    }
}

/// A TLS-terminating proxy on 127.0.0.1 with the fixture certificate: every connection it
/// accepts is decrypted and relayed to `backend` as plain TCP.
struct TlsProxy {
    addr: SocketAddr,
    /// Connections whose handshake completed.
    handshakes: Arc<AtomicUsize>,
}

impl TlsProxy {
    fn start(runtime: &tokio::runtime::Runtime, backend: SocketAddr) -> TlsProxy {
        let certs = CertificateDer::pem_file_iter(fixture("cert.pem"))
            .expect("fixture cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("fixture cert is PEM");
        let key = PrivateKeyDer::from_pem_file(fixture("key.pem")).expect("fixture key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&handshakes);
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // the client refused our certificate
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        TlsProxy { addr, handshakes }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

/// A real brain (SQLite) on 127.0.0.1, plain HTTP, with a TLS proxy in front of it.
struct Brain {
    inner: BlockingBrain,
    proxy: TlsProxy,
    _dir: tempfile::TempDir,
}

impl Brain {
    fn start(webhook_roots: ExtraRoots) -> Brain {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig {
            webhook_roots,
            ..support::brain::config()
        };
        let inner = BlockingBrain::start_with(dir.path(), "127.0.0.1:0", config);
        let proxy = TlsProxy::start(inner.runtime(), inner.addr);
        Brain {
            inner,
            proxy,
            _dir: dir,
        }
    }

    fn https_url(&self) -> String {
        self.proxy.url()
    }

    /// A client that speaks to the brain directly, without TLS.
    fn plain_client(&self) -> BrainClient {
        self.inner.client()
    }

    fn metric(&self, name: &str) -> u64 {
        self.inner.metric(name)
    }
}

#[test]
fn push_and_pull_through_https_work_with_the_configured_ca() {
    let brain = Brain::start(ExtraRoots::none());
    let ca = fixture("cert.pem");
    let mut a = Device::for_brain(&brain.https_url(), Some(&ca));
    let mut b = Device::for_brain(&brain.https_url(), Some(&ca));
    a.write_and_scan("secure.md", "sent over TLS");
    assert_eq!(a.pending(), 1);

    let client = a.client().expect("client with the CA");
    let pushed = sync::push(&mut a.store, &client, 200).expect("push over https");
    assert_eq!(pushed.pushed, 1);
    assert_eq!(a.pending(), 0);

    let client = b.client().expect("client with the CA");
    let pulled = sync::pull(&mut b.store, &client, 200, None).expect("pull over https");
    assert_eq!(pulled.applied, 1);
    let hits = b.store.search("TLS", 10).expect("search");
    assert_eq!(
        hits.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(),
        ["notes/secure.md"]
    );
    assert!(
        brain.proxy.handshakes.load(Ordering::SeqCst) >= 2,
        "both devices went through the TLS proxy"
    );
}

#[test]
fn without_the_ca_the_push_fails_on_the_certificate_and_the_outbox_keeps_its_events() {
    let brain = Brain::start(ExtraRoots::none());
    let mut a = Device::for_brain(&brain.https_url(), None);
    a.write_and_scan("one.md", "first");
    a.write_and_scan("two.md", "second");

    let client = a.client().expect("a client needs no CA to be built");
    let err = sync::push(&mut a.store, &client, 200).expect_err("an untrusted certificate");
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            sync::SyncError::Client(ClientError::Certificate { .. })
        ),
        "{err:?}"
    );
    for part in [
        "certificate",
        "UnknownIssuer",
        "LIB_BRAIN_CA_FILE",
        &brain.https_url(),
    ] {
        assert!(text.contains(part), "{text:?} should name {part:?}");
    }
    assert!(!text.contains('\n'), "one line: {text:?}");
    assert!(
        err.is_retryable(),
        "a certificate can be fixed on the server"
    );
    assert_eq!(a.pending(), 2, "nothing was marked pushed");
    assert!(
        brain
            .plain_client()
            .pull(0, 500, None, None)
            .expect("pull")
            .events
            .is_empty(),
        "nothing reached the brain"
    );
    assert_eq!(brain.proxy.handshakes.load(Ordering::SeqCst), 0);

    // The same device, once the CA is configured, delivers everything it kept.
    a.config.sync.brain_ca_file = Some(test_ca());
    let client = a.client().expect("client with the CA");
    assert_eq!(
        sync::push(&mut a.store, &client, 200).expect("push").pushed,
        2
    );
    assert_eq!(a.pending(), 0);
}

#[test]
fn agent_sync_speaks_https_with_the_ca_and_says_why_without_it() {
    let brain = Brain::start(ExtraRoots::none());
    let lab = Lab::new();
    lab.write_config(&format!(
        "[[library]]\nname = \"notes\"\npath = \"{{root}}/notes\"\n[sync]\nbrain_url = \"{}\"\n",
        brain.https_url()
    ));
    lab.write("notes/a.md", "alpha");
    lab.write("notes/b.md", "beta");
    lab.scan(&[]);
    let ca = fixture("cert.pem");
    let ca = ca.to_str().expect("UTF-8 path");

    let run = lab
        .agent_env(&["sync", "--push"], &[("LIB_SYNC_SECRET", SECRET)])
        .failure();
    run.assert_one_line_error(&["certificate", "UnknownIssuer", "LIB_BRAIN_CA_FILE"]);
    let outbox = lab.db().outbox();
    assert_eq!(outbox.len(), 2);
    assert!(outbox.iter().all(|row| row.pushed_at.is_none()), "kept");

    let summary = lab
        .agent_env(
            &["--json", "sync"],
            &[("LIB_SYNC_SECRET", SECRET), ("LIB_BRAIN_CA_FILE", ca)],
        )
        .success()
        .json();
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["push"]["pushed"], 2, "{summary}");
    assert!(lab.db().outbox().iter().all(|row| row.pushed_at.is_some()));
    assert_eq!(
        brain
            .plain_client()
            .pull(0, 500, None, None)
            .expect("pull")
            .events
            .len(),
        2
    );
}

#[test]
fn an_unusable_ca_file_is_one_line_naming_the_file_and_the_setting() {
    let lab = Lab::new();
    let not_pem = lab.write("not-a-cert.pem", "hello, I am not a certificate\n");
    let missing = lab.path("missing.pem");
    let env_missing = missing.to_str().expect("UTF-8").to_owned();
    // The brain is never reached: the file is checked before anything is sent.
    let config =
        |ca: &str| format!("[sync]\nbrain_url = \"https://127.0.0.1:9\"\nbrain_ca_file = {ca:?}\n");

    lab.write_config(&config("not-a-cert.pem"));
    let run = lab.agent(&["sync"]).failure();
    run.assert_one_line_error(&[
        "sync.brain_ca_file",
        not_pem.to_str().expect("UTF-8"),
        "no PEM certificate",
    ]);

    lab.write_config(&config("missing.pem"));
    lab.agent(&["sync"]).failure().assert_one_line_error(&[
        "sync.brain_ca_file",
        &env_missing,
        "cannot read",
    ]);

    // The environment beats the file, and is named when it is the one at fault.
    lab.write_config(&config("not-a-cert.pem"));
    lab.agent_env(&["sync"], &[("LIB_BRAIN_CA_FILE", &env_missing)])
        .failure()
        .assert_one_line_error(&["environment LIB_BRAIN_CA_FILE", &env_missing, "cannot read"]);

    // A private key is not a CA certificate.
    let key = fixture("key.pem");
    lab.agent_env(
        &["sync"],
        &[("LIB_BRAIN_CA_FILE", key.to_str().expect("UTF-8"))],
    )
    .failure()
    .assert_one_line_error(&["LIB_BRAIN_CA_FILE", "no PEM certificate"]);
}

/// The agent's real webhook listener on 127.0.0.1 (it verifies signatures), a TLS proxy in front.
struct Listener {
    proxy: TlsProxy,
    woken: crossbeam_channel::Receiver<()>,
}

impl Listener {
    fn start(runtime: &tokio::runtime::Runtime, secret: &str) -> Listener {
        let (wake, woken) = crossbeam_channel::bounded(8);
        let app = listener::router(
            secret.to_owned(),
            lib_agent::config::WebhookAuth::Signature,
            wake,
        );
        let tcp = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind listener");
        let addr = tcp.local_addr().expect("listener addr");
        runtime.spawn(async move { axum::serve(tcp, app).await });
        let proxy = TlsProxy::start(runtime, addr);
        Listener { proxy, woken }
    }

    fn https_url(&self) -> String {
        format!("{}/webhook", self.proxy.url())
    }
}

#[test]
fn a_webhook_with_an_https_url_is_delivered_signed_through_tls() {
    let roots = ExtraRoots::load(&test_ca()).expect("fixture CA");
    let brain = Brain::start(roots);
    let hook = Listener::start(brain.inner.runtime(), "hook-secret-0123456");
    let client = brain.plain_client();
    client
        .register_webhook("dev-b", &hook.https_url(), "hook-secret-0123456")
        .expect("register");

    client
        .ingest(&[upsert("dev-a", "notes/x.md", &[("dev-a", 1)], 'a')])
        .expect("ingest");
    // The listener wakes its puller only for a notification whose signature it verified.
    hook.woken
        .recv_timeout(PATIENCE)
        .expect("a signed notification reached the listener through TLS");
    assert_eq!(hook.proxy.handshakes.load(Ordering::SeqCst), 1);
    wait_until("the delivery is counted", PATIENCE, || {
        brain.metric("lib_brain_webhook_deliveries_total") == 1
    });
    assert_eq!(brain.metric("lib_brain_webhook_failures_total"), 0);
}

#[test]
fn a_webhook_behind_an_untrusted_certificate_is_counted_as_failed_not_delivered() {
    let brain = Brain::start(ExtraRoots::none());
    let hook = Listener::start(brain.inner.runtime(), "hook-secret-0123456");
    let client = brain.plain_client();
    client
        .register_webhook("dev-b", &hook.https_url(), "hook-secret-0123456")
        .expect("register");
    client
        .ingest(&[upsert("dev-a", "notes/x.md", &[("dev-a", 1)], 'a')])
        .expect("ingest");
    wait_until("the failed delivery is counted", PATIENCE, || {
        brain.metric("lib_brain_webhook_failures_total") == 1
    });
    assert_eq!(brain.metric("lib_brain_webhook_deliveries_total"), 0);
    assert!(
        hook.woken.try_recv().is_err(),
        "nothing reached the listener"
    );
    assert_eq!(hook.proxy.handshakes.load(Ordering::SeqCst), 0);
}
