//! HTTPS in the binary: rustls (TLS 1.2 and 1.3, its safe defaults: forward-secret AEAD
//! suites only, no renegotiation, no compression) with the certificate chain and key read
//! from PEM files, and read again when they change on disk.
//!
//! The certificate is served through a resolver that holds the current one: a reload
//! swaps it for new handshakes, and connections already open keep theirs, so renewing a
//! certificate (certbot's `renew`, which replaces the files) needs no restart and cuts
//! off nothing. Files that do not load (a half-written renewal, a key that does not match
//! the chain) leave the running certificate in place, with a warning that says why;
//! they are read again at the next check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// `[tls]` as the server runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain (PEM, the server's certificate first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change.
    pub check_every: Duration,
}

/// A PEM error in words (the library's own names bytes as numbers).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no \"{}\" line (a truncated file?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a \"-----BEGIN\" line is malformed: {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::Base64Decode(why) => format!("a section is not base64: {why}"),
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no section of the expected kind".into(),
        other => other.to_string(),
    }
}

/// Why a certificate and key do not load: which of the two files, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The key file (`false`: the certificate file).
    pub in_key: bool,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads the chain and key and checks that they belong together; the error names the
/// file and what is wrong with it.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, LoadError> {
    let in_cert = |message: String| LoadError {
        in_key: false,
        message,
    };
    let in_key = |message: String| LoadError {
        in_key: true,
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            in_cert(format!(
                "cannot read the certificate file {}: {}",
                cert.display(),
                pem_error(&e)
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            in_cert(format!(
                "the certificate file {} is not valid PEM: {}",
                cert.display(),
                pem_error(&e)
            ))
        })?;
    if chain.is_empty() {
        return Err(in_cert(format!(
            "the certificate file {} holds no certificate (PEM \"BEGIN CERTIFICATE\" blocks)",
            cert.display()
        )));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        in_key(match e {
            rustls::pki_types::pem::Error::Io(io) => {
                format!("cannot read the key file {}: {io}", key.display())
            }
            other => format!(
                "the key file {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {}",
                key.display(),
                pem_error(&other)
            ),
        })
    })?;
    let signer = provider::sign::any_supported_type(&der)
        .map_err(|e| in_key(format!("the key in {} cannot be used: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        in_key(format!(
            "the key in {} does not belong to the first certificate of {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(certified)
}

/// The certificate being served; swapped by [`Certificates::reload_if_changed`].
#[derive(Debug)]
pub struct Certificates {
    settings: TlsSettings,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times and sizes when last read.
    seen: RwLock<Option<(Stamp, Stamp)>>,
}

type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Certificates {
    /// Loads the files once (an error stops the start).
    pub fn new(settings: TlsSettings) -> Result<Arc<Certificates>, String> {
        let seen = stamp(&settings.cert).zip(stamp(&settings.key));
        let key = load(&settings.cert, &settings.key).map_err(|e| e.message)?;
        Ok(Arc::new(Certificates {
            settings,
            current: RwLock::new(Arc::new(key)),
            seen: RwLock::new(seen),
        }))
    }

    /// Reads the files again when their modification time or size changed: `Ok(true)`
    /// when a new certificate is served from now on, `Err` (the running one kept) when
    /// the new files do not load.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.settings.cert).zip(stamp(&self.settings.key));
        if now.is_none() || now == *self.seen.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        let loaded = load(&self.settings.cert, &self.settings.key);
        // Seen either way: a bad pair is reported once, not at every check.
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = now;
        let key = loaded.map_err(|e| e.message)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// The acceptor for the listeners: TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
    pub fn acceptor(self: &Arc<Certificates>) -> tokio_rustls::TlsAcceptor {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Checks the files every `check_every` until `stop` turns true.
    pub async fn watch(self: Arc<Certificates>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(
                    cert = %self.settings.cert.display(),
                    "TLS certificate reloaded; new connections get it"
                ),
                Ok(false) => {}
                Err(why) => tracing::warn!(
                    "TLS certificate files changed but do not load; still serving the previous certificate: {why}"
                ),
            }
        }
    }
}

/// The plain-HTTP listener's router (`[tls] redirect_from`): every request is answered
/// 308 Permanent Redirect to the same host (its port replaced by HTTPS's), path and query
/// over HTTPS, so a method and body are repeated there as they were.
pub fn redirect_router(https_port: u16) -> axum::Router {
    use axum::http::{header, HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()));
        let Some(host) = host else {
            return (
                StatusCode::BAD_REQUEST,
                "a Host header is needed to redirect to HTTPS",
            )
                .into_response();
        };
        // The host without its port ("[::1]:80" keeps its brackets).
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, format!("https://{name}{port}{path}"))],
        )
            .into_response()
    })
}
