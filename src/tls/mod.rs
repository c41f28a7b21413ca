//! TLS on the gateway's own listeners (the data plane's and the admin port's), with Pingora's
//! rustls: one certificate and key per listener, from PEM files, served to every client (ALPN
//! `http/1.1` only), and reloaded when the files change, without a restart: new handshakes get
//! the new certificate, open connections keep theirs. A file that cannot be read or parsed
//! keeps the running certificate (and is logged).

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the files are checked for a change.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: cannot be read or holds no certificate and key ({1})")]
    Files(String, String),
    #[error("{0}: the key does not fit the certificate or is not supported: {1}")]
    Key(String, String),
}

/// A listener's certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn describe(&self) -> String {
        format!("{} and {}", self.cert.display(), self.key.display())
    }

    /// What a change of the files is told by: their inode (a file replaced by a rename, as
    /// certificate tools do), modification and change times (a chmod), and size.
    fn stamp(&self) -> Option<[(u64, i64, SystemTime, u64); 2]> {
        use std::os::unix::fs::MetadataExt;
        let one = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((
                m.ino(),
                m.ctime_nsec() + m.ctime() * 1_000_000_000,
                m.modified().ok()?,
                m.len(),
            ))
        };
        Some([one(&self.cert)?, one(&self.key)?])
    }

    /// The certificate chain and key, ready to sign handshakes.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        pingora::tls::install_default_crypto_provider();
        let (cert, key) = (
            self.cert.to_string_lossy().into_owned(),
            self.key.to_string_lossy().into_owned(),
        );
        let (certs, key) = pingora::tls::load_certs_and_key_files(&cert, &key)
            .map_err(|e| TlsError::Files(self.describe(), e.to_string()))?
            .ok_or_else(|| TlsError::Files(self.describe(), "empty".into()))?;
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| TlsError::Key(self.describe(), "no crypto provider".into()))?;
        let ck = CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| TlsError::Key(self.describe(), e.to_string()))?;
        Ok(Arc::new(ck))
    }
}

/// The certificate served, swapped whole when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: arc_swap::ArcSwap<CertifiedKey>,
}

impl ReloadingCert {
    /// Load the files (an error here stops the start: a listener without its certificate).
    pub fn load(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let first = files.load()?;
        Ok(Arc::new(Self {
            current: arc_swap::ArcSwap::new(first),
            files,
        }))
    }

    /// Check the files every few seconds on a thread of its own (file metadata reads block),
    /// for the life of the process.
    pub fn watch(self: &Arc<Self>, name: &'static str) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tls-{name}"))
            .spawn(move || {
                let mut seen = me.files.stamp();
                // A load that failed is tried again at every check until one succeeds.
                let mut failed = false;
                loop {
                    std::thread::sleep(WATCH_EVERY);
                    let now = me.files.stamp();
                    if now.is_none() || (now == seen && !failed) {
                        continue;
                    }
                    seen = now;
                    failed = !me.reload(name, failed);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(listener = name, error = %e, "certificate changes will not be seen");
        }
    }

    /// Load the files again; the running certificate stays when they are unusable (logged as a
    /// warning the first time, `again` is a retry). Whether the new one was loaded.
    pub fn reload(&self, name: &str, again: bool) -> bool {
        match self.files.load() {
            Ok(ck) => {
                self.current.store(ck);
                tracing::info!(listener = name, files = %self.files.describe(), "TLS certificate reloaded");
                true
            }
            Err(e) if again => {
                tracing::debug!(listener = name, error = %e, "TLS certificate still not reloadable");
                false
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "TLS certificate not reloaded; the running one stays (tried again every 2 s)");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Pingora's TLS settings for a listener serving `cert` over HTTP/1.1 only.
pub fn listener_settings(cert: Arc<ReloadingCert>) -> pingora::listeners::tls::TlsSettings {
    // The paths are left empty: the resolver serves the certificate.
    let mut s = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .expect("TLS settings without files");
    s.set_cert_resolver(cert);
    s.set_alpn(pingora::protocols::ALPN::H1);
    s
}

/// The admin port's acceptor: the same rustls (Pingora's), the same resolver and ALPN.
pub fn acceptor(cert: Arc<ReloadingCert>) -> pingora::tls::TlsAcceptor {
    pingora::tls::install_default_crypto_provider();
    let mut config = pingora::tls::ServerConfig::builder_with_protocol_versions(&[
        &pingora::tls::version::TLS12,
        &pingora::tls::version::TLS13,
    ])
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    pingora::tls::TlsAcceptor::from(Arc::new(config))
}
