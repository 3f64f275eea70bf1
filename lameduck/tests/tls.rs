//! `http::tls::TlsConfig`: what a certificate and key must be, replacing
//! them while running, and session resumption that survives a hand-over of
//! the ticket keys (what a zero-downtime restart does). Certificates are
//! made at test time (rcgen); handshakes are real rustls handshakes over an
//! in-memory duplex.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use lameduck::http::tls::TlsConfig;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pem {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Pem {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Pem {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lameduck-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &std::path::Path, pem: &Pem) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    (cert, key)
}

fn client(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One exchange over a fresh connection: the client says hello, the server
/// answers; returns how the client's handshake went and the ALPN protocol.
async fn exchange(
    server: &TlsConfig,
    client: &Arc<ClientConfig>,
) -> (HandshakeKind, Option<Vec<u8>>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(client));
    let served = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.unwrap();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"world").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, a).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    // Reading to the end also takes in the session tickets.
    tls.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"world");
    served.await.unwrap();
    let (_, conn) = tls.get_ref();
    (
        conn.handshake_kind().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    )
}

#[tokio::test]
async fn serves_with_alpn_h2_and_http1() {
    let pem = self_signed();
    let tls = TlsConfig::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
    let (_, alpn) = exchange(&tls, &client(&pem.der, &[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn) = exchange(&tls, &client(&pem.der, &[b"http/1.1"])).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    // A client that offers no ALPN still gets TLS.
    let (kind, alpn) = exchange(&tls, &client(&pem.der, &[])).await;
    assert_eq!(kind, HandshakeKind::Full);
    assert_eq!(alpn, None);
}

/// The point of exporting the keys: a second server (the successor) that
/// imports them resumes a client's session from the first; one that does
/// not, cannot.
#[tokio::test]
async fn session_resumes_on_a_server_that_imported_the_ticket_keys() {
    let pem = self_signed();
    let first = TlsConfig::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
    let client = client(&pem.der, &[b"http/1.1"]);
    let (kind, _) = exchange(&first, &client).await;
    assert_eq!(kind, HandshakeKind::Full);
    let (kind, _) = exchange(&first, &client).await;
    assert_eq!(
        kind,
        HandshakeKind::Resumed,
        "no resumption on the same server"
    );

    let successor = TlsConfig::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
    successor
        .import_ticket_keys(&first.export_ticket_keys())
        .unwrap();
    let (kind, _) = exchange(&successor, &client).await;
    assert_eq!(kind, HandshakeKind::Resumed, "the successor did not resume");
    let (kind, _) = exchange(&successor, &client).await;
    assert_eq!(
        kind,
        HandshakeKind::Resumed,
        "its own tickets did not resume"
    );

    // The client now offers a ticket of that lineage to a server without
    // the keys: a full handshake.
    let stranger = TlsConfig::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
    let (kind, _) = exchange(&stranger, &client).await;
    assert_eq!(kind, HandshakeKind::Full, "resumed without the keys");
}

#[test]
fn ticket_keys_that_are_not_an_export_are_refused() {
    let pem = self_signed();
    let tls = TlsConfig::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
    for bad in [&b""[..], b"\x01", b"\x02garbage", &[1u8; 50]] {
        let e = tls.import_ticket_keys(bad).unwrap_err();
        assert!(e.is_tls(), "{e}");
    }
}

#[test]
fn bad_files_are_named_in_the_error() {
    let d = dir("bad");
    let pem = self_signed();
    let (cert, key) = write(&d, &pem);

    let missing = d.join("missing.pem");
    let e = TlsConfig::from_pem_files(&missing, &key).unwrap_err();
    assert!(e.is_tls() && e.to_string().contains("missing.pem"), "{e}");

    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let e = TlsConfig::from_pem_files(&garbage, &key).unwrap_err();
    assert!(e.to_string().contains("garbage.pem"), "{e}");
    let e = TlsConfig::from_pem_files(&cert, &garbage).unwrap_err();
    assert!(e.to_string().contains("garbage.pem"), "{e}");

    let other = self_signed();
    let other_key = d.join("other-key.pem");
    std::fs::write(&other_key, &other.key).unwrap();
    let e = TlsConfig::from_pem_files(&cert, &other_key).unwrap_err();
    let message = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        message.contains("other-key.pem") && message.contains("does not match"),
        "{message}"
    );

    let key_pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key_pair).unwrap();
    let (old_cert, old_key) = (d.join("expired.pem"), d.join("expired-key.pem"));
    std::fs::write(&old_cert, expired.pem()).unwrap();
    std::fs::write(&old_key, key_pair.serialize_pem()).unwrap();
    let e = TlsConfig::from_pem_files(&old_cert, &old_key).unwrap_err();
    let message = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        message.contains("expired.pem") && message.contains("expired on"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A replacement that fails keeps the running configuration; one that
/// works is used from the next handshake on.
#[tokio::test]
async fn reload_keeps_the_old_config_on_error_and_swaps_on_success() {
    let d = dir("reload");
    let first = self_signed();
    let (cert, key) = write(&d, &first);
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let before = tls.server_config();

    std::fs::write(&cert, "not a certificate").unwrap();
    let e = tls.reload().unwrap_err();
    assert!(e.is_tls() && e.to_string().contains("cert.pem"), "{e}");
    assert!(
        Arc::ptr_eq(&before, &tls.server_config()),
        "replaced by a broken file"
    );
    exchange(&tls, &client(&first.der, &[])).await;

    let second = self_signed();
    write(&d, &second);
    tls.reload().unwrap();
    assert!(!Arc::ptr_eq(&before, &tls.server_config()));
    // The new certificate is served: a client that trusts only it connects.
    exchange(&tls, &client(&second.der, &[])).await;
    let _ = std::fs::remove_dir_all(&d);
}
