//! TLS for the HTTP server (feature `tls`): rustls with the *ring* crypto
//! provider, through tokio-rustls.
//!
//! A [`TlsConfig`] is the server's TLS configuration as it is *now*: it can
//! be replaced while the server runs (a renewed certificate takes effect
//! for the next handshake, connections already open keep theirs), and a
//! replacement that fails (a missing file, a key that does not match, an
//! expired certificate) leaves the running configuration in place and says
//! why.
//!
//! Session resumption uses stateless tickets (TLS 1.3 and 1.2) encrypted
//! with keys that this crate holds, not rustls' own: they can be exported
//! and imported, so that a zero-downtime restart hands them to the
//! successor and a client that resumes after the restart still resumes
//! (no full handshake). Keys rotate every 6 hours; a ticket stays valid for
//! 12 (the key before the current one is kept for decryption).
//!
//! ALPN offers `h2` and `http/1.1`.
//!
//! ```no_run
//! # fn main() -> Result<(), lameduck::Error> {
//! use lameduck::http::tls::TlsConfig;
//! let tls = TlsConfig::from_pem_files("/etc/app/cert.pem", "/etc/app/key.pem")?;
//! // Later, on a signal or a file change: the old config stays on error.
//! if let Err(e) = tls.reload() {
//!     eprintln!("certificate not replaced: {e}");
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use crate::error::Error;

/// How often the ticket key rotates.
const ROTATE_EVERY: Duration = Duration::from_secs(6 * 3600);
/// How long a ticket is valid (the previous key still decrypts).
const TICKET_LIFETIME: u32 = 12 * 3600;

/// The server's TLS configuration; cheap to clone (clones share it). See
/// the [module documentation](self).
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<ServerConfig>>,
    ticketer: Arc<Ticketer>,
    files: Mutex<Option<(PathBuf, PathBuf)>>,
    /// Failed handshakes are logged at most once per [`FAILURE_LOG_EVERY`].
    failures: crate::util::LogLimit,
}

/// How often a failed handshake may be logged: plain-text bytes on the TLS
/// port, scanners and clients that give up are common, and each is one
/// connection a client can open at will.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &*lock(&self.inner.files))
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Load a certificate chain and its private key from PEM files.
    ///
    /// # Errors
    ///
    /// [`Error::is_tls`], naming the file: unreadable, no certificate or
    /// key in it, a key that does not match the certificate, a certificate
    /// that has expired or is not valid yet.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let ticketer = Arc::new(Ticketer::new()?);
        let config = load_files(&cert, &key, &ticketer)?;
        Ok(TlsConfig {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(config)),
                ticketer,
                files: Mutex::new(Some((cert, key))),
                failures: crate::util::LogLimit::default(),
            }),
        })
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM bytes.
    ///
    /// # Errors
    ///
    /// As for [`from_pem_files`](Self::from_pem_files).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, Error> {
        let ticketer = Arc::new(Ticketer::new()?);
        let config = build(cert, key, "certificate", "key", &ticketer)?;
        Ok(TlsConfig {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(config)),
                ticketer,
                files: Mutex::new(None),
                failures: crate::util::LogLimit::default(),
            }),
        })
    }

    /// Read the files given to [`from_pem_files`](Self::from_pem_files)
    /// again and use them from the next handshake on.
    ///
    /// # Errors
    ///
    /// As for [`from_pem_files`](Self::from_pem_files); the configuration
    /// in use is kept. Also when the configuration was not made from files.
    pub fn reload(&self) -> Result<(), Error> {
        let files = lock(&self.inner.files).clone();
        match files {
            Some((cert, key)) => self.replace_pem_files(cert, key),
            None => Err(Error::tls(
                "reload",
                "this configuration was not loaded from files",
            )),
        }
    }

    /// Use another certificate and key from the next handshake on.
    ///
    /// # Errors
    ///
    /// As for [`from_pem_files`](Self::from_pem_files); the configuration
    /// in use is kept.
    pub fn replace_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), Error> {
        let (cert, key) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let config = load_files(&cert, &key, &self.inner.ticketer)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *lock(&self.inner.files) = Some((cert, key));
        tracing::info!(target: "lameduck", "TLS certificate replaced");
        Ok(())
    }

    /// The configuration for the next handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.inner.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The session-ticket keys, to hand to a successor (they are secret:
    /// pass them only over a private channel, such as the restart's state
    /// pipe).
    pub fn export_ticket_keys(&self) -> Vec<u8> {
        self.inner.ticketer.export()
    }

    /// Use a predecessor's session-ticket keys, so that tickets it issued
    /// still resume here.
    ///
    /// # Errors
    ///
    /// [`Error::is_tls`] when the bytes are not an export of this version.
    pub fn import_ticket_keys(&self, keys: &[u8]) -> Result<(), Error> {
        self.inner.ticketer.import(keys)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn load_files(cert: &Path, key: &Path, ticketer: &Arc<Ticketer>) -> Result<ServerConfig, Error> {
    let cert_pem = std::fs::read(cert).map_err(|e| Error::tls(cert.display(), e))?;
    let key_pem = std::fs::read(key).map_err(|e| Error::tls(key.display(), e))?;
    build(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
        ticketer,
    )
}

fn build(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
    ticketer: &Arc<Ticketer>,
) -> Result<ServerConfig, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::tls(cert_name, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(Error::tls(cert_name, "no certificate in it"));
    };
    check_validity(leaf, cert_name)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::tls(key_name, format!("no private key in it: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::tls(
                key_name,
                format!("the key does not match the certificate in {cert_name}"),
            ),
            other => Error::tls(key_name, other),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = Arc::clone(ticketer) as Arc<dyn ProducesTickets>;
    Ok(config)
}

/// Refuse a certificate that has expired or is not valid yet: serving it
/// would fail every handshake with a client that checks.
fn check_validity(leaf: &CertificateDer<'_>, name: &str) -> Result<(), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::tls(name, format!("not an X.509 certificate: {e}")))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(Error::tls(
            name,
            format!("the certificate expired on {}", validity.not_after),
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(Error::tls(
            name,
            format!(
                "the certificate is not valid before {}",
                validity.not_before
            ),
        ));
    }
    Ok(())
}

/// Session-ticket encryption with keys this crate holds: ChaCha20-Poly1305,
/// a 16-byte key name and a random 12-byte nonce in front of each ticket.
struct Ticketer {
    keys: Mutex<Keys>,
    rng: SystemRandom,
}

struct Keys {
    current: TicketKey,
    previous: Option<TicketKey>,
    rotated: Instant,
}

#[derive(Clone)]
struct TicketKey {
    name: [u8; 16],
    secret: [u8; 32],
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer").finish_non_exhaustive()
    }
}

const EXPORT_VERSION: u8 = 1;

impl Ticketer {
    fn new() -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let current = TicketKey::generate(&rng)?;
        Ok(Ticketer {
            keys: Mutex::new(Keys {
                current,
                previous: None,
                rotated: Instant::now(),
            }),
            rng,
        })
    }

    fn export(&self) -> Vec<u8> {
        let keys = lock(&self.keys);
        let mut out = vec![EXPORT_VERSION];
        for key in std::iter::once(&keys.current).chain(keys.previous.as_ref()) {
            out.extend_from_slice(&key.name);
            out.extend_from_slice(&key.secret);
        }
        out
    }

    fn import(&self, bytes: &[u8]) -> Result<(), Error> {
        let bad = || Error::tls("ticket keys", "not an export of this version");
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if version != EXPORT_VERSION || rest.is_empty() || rest.len() % 48 != 0 || rest.len() > 96 {
            return Err(bad());
        }
        let mut imported = rest.chunks_exact(48).map(|c| {
            let mut key = TicketKey {
                name: [0; 16],
                secret: [0; 32],
            };
            key.name.copy_from_slice(&c[..16]);
            key.secret.copy_from_slice(&c[16..]);
            key
        });
        let current = imported.next().ok_or_else(bad)?;
        let previous = imported.next();
        *lock(&self.keys) = Keys {
            current,
            previous,
            rotated: Instant::now(),
        };
        Ok(())
    }

    /// The key to encrypt with, rotated when it is old.
    fn current(&self) -> Option<TicketKey> {
        let mut keys = lock(&self.keys);
        if keys.rotated.elapsed() >= ROTATE_EVERY {
            let fresh = TicketKey::generate(&self.rng).ok()?;
            let old = std::mem::replace(&mut keys.current, fresh);
            keys.previous = Some(old);
            keys.rotated = Instant::now();
        }
        Some(keys.current.clone())
    }

    fn find(&self, name: &[u8]) -> Option<TicketKey> {
        let keys = lock(&self.keys);
        std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.name == name)
            .cloned()
    }
}

impl TicketKey {
    fn generate(rng: &SystemRandom) -> Result<Self, Error> {
        let mut key = TicketKey {
            name: [0; 16],
            secret: [0; 32],
        };
        rng.fill(&mut key.name)
            .and_then(|()| rng.fill(&mut key.secret))
            .map_err(|_| Error::tls("ticket keys", "the system random generator failed"))?;
        Ok(key)
    }

    fn aead(&self) -> Option<aead::LessSafeKey> {
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &self.secret)
            .ok()
            .map(aead::LessSafeKey::new)
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.current()?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        // name ‖ nonce ‖ ciphertext ‖ tag, sealed where it lies: one buffer,
        // one copy of the plaintext.
        let tag_len = aead::CHACHA20_POLY1305.tag_len();
        let mut out = Vec::with_capacity(16 + nonce.len() + plain.len() + tag_len);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .aead()?
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&key.name),
                &mut out[16 + aead::NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < 16 + aead::NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (name, rest) = cipher.split_at(16);
        let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
        let key = self.find(name)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead()?
            .open_in_place(nonce, aead::Aad::from(&key.name), &mut buf)
            .ok()?
            .len();
        // The plaintext is the front of the buffer: no second copy.
        buf.truncate(plain);
        Some(buf)
    }
}

/// Finish the TLS handshake of an accepted connection, then serve it. The
/// handshake is in flight for the drain (the report names it if it is
/// cut), bounded by the header-read timeout, and closed at once when the
/// server stops accepting.
pub(crate) async fn handshake_then_serve<T, S, B>(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: T,
    peer: crate::http::Peer,
    ctx: Arc<crate::http::conn::Ctx>,
    service: S,
) where
    T: crate::http::conn::Transport,
    S: crate::http::conn::ConnService<B>,
    B: crate::http::conn::ConnBody,
{
    let view = ctx.view.clone();
    let entry = view.register(
        crate::report::Kind::Connection,
        format!("TLS handshake from {peer}"),
    );
    let limit = ctx.timeouts.header_read;
    let handshake = tokio::select! {
        biased;
        () = view.stopping() => {
            tracing::debug!(target: "lameduck", %peer, "TLS handshake still under way when the server stopped accepting; closed");
            return;
        }
        done = tokio::time::timeout(limit, acceptor.accept(stream)) => done,
    };
    drop(entry);
    let allow = |ctx: &crate::http::conn::Ctx| {
        ctx.tls
            .as_ref()
            .map_or(Some(0), |t| t.inner.failures.allow(FAILURE_LOG_EVERY))
    };
    match handshake {
        Ok(Ok(tls)) => crate::http::conn::serve(Box::new(tls), peer, ctx, service).await,
        Ok(Err(e)) => {
            if let Some(held) = allow(&ctx) {
                tracing::info!(target: "lameduck", %peer, error = %e, failures_not_logged = held,
                    "TLS handshake failed; connection closed (logged at most once every 10 s)");
            }
        }
        Err(_) => {
            if let Some(held) = allow(&ctx) {
                tracing::info!(target: "lameduck", %peer, timeout = ?limit, failures_not_logged = held,
                    "TLS handshake not finished within the header-read timeout; connection closed (logged at most once every 10 s)");
            }
        }
    }
}
