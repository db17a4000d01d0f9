//! TLS on sessions (feature `tls`): rustls, driven from the session's own
//! buffers. An accepted connection first makes its TLS handshake (within
//! [`TlsConfig::handshake_timeout`]); then its handler sees the plaintext
//! and everything it sends is encrypted: a TLS session is a TCP session
//! with the same handler, limits and close reasons. Under WebSocket
//! (`wss`) TLS is the lower layer: the upgrade request is read from the
//! plaintext. Behind a proxy the PROXY header comes first, in the clear.
//!
//! The send queue holds ciphertext, so [`crate::Limits::max_send_queue`]
//! and the watermarks count what goes on the wire. A close sends
//! `close_notify` after what was queued. A handshake that fails (garbage,
//! plaintext HTTP, an old protocol version, no shared cipher) is answered
//! with rustls' alert where it has one and ends with
//! [`crate::CloseReason::HandshakeInvalid`]; one that does not finish in
//! time with [`crate::CloseReason::HandshakeTimeout`]. Both are counted
//! by kind like every close.
//!
//! The crypto provider is rustls' `ring`: it builds with the C compiler a
//! Rust toolchain already needs, where `aws-lc-rs` (rustls' default) also
//! needs cmake, which the README's set-up does not install.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How sessions speak TLS: a server's certificate and key, or a client's
/// trusted roots and the name it expects; the ALPN protocols; the
/// handshake timeout.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub(crate) side: Side,
    pub(crate) handshake_timeout: Duration,
}

#[derive(Clone, Debug)]
pub(crate) enum Side {
    Server(Arc<rustls::ServerConfig>),
    Client(Arc<rustls::ClientConfig>, ServerName<'static>),
}

/// Why a [`TlsConfig`] could not be made.
#[derive(Debug)]
pub struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e.0)
    }
}

/// rustls' ring provider (see the module's last paragraph). rustls marks
/// it deprecated for want of post-quantum key exchange, which only its
/// aws-lc-rs provider has.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = |e: &dyn std::fmt::Display| TlsError(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&e))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

impl TlsConfig {
    /// A server's: the certificate chain (leaf first) and its private key,
    /// from PEM files.
    pub fn server_pem(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<TlsConfig, TlsError> {
        let certs = read_certs(cert_chain.as_ref())?;
        let key = key.as_ref();
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("the certificate and key: {e}")))?;
        Ok(TlsConfig::server(Arc::new(config)))
    }

    /// A server's, from a rustls configuration made by hand.
    pub fn server(config: Arc<rustls::ServerConfig>) -> TlsConfig {
        TlsConfig {
            side: Side::Server(config),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// A client's that trusts the certificates in the PEM file `roots`
    /// (a CA, or a server's own self-signed certificate) and expects the
    /// server to be `server_name` (a DNS name or an IP address).
    pub fn client_pem(roots: impl AsRef<Path>, server_name: &str) -> Result<TlsConfig, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        for cert in read_certs(roots.as_ref())? {
            store
                .add(cert)
                .map_err(|e| TlsError(format!("{}: {e}", roots.as_ref().display())))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        TlsConfig::client(Arc::new(config), server_name)
    }

    /// A client's, from a rustls configuration made by hand.
    pub fn client(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<TlsConfig, TlsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError(format!("server name '{server_name}': {e}")))?;
        Ok(TlsConfig {
            side: Side::Client(config, name),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// The ALPN protocols offered (a client) or accepted (a server), in
    /// order of preference, e.g. `["h2", "http/1.1"]`.
    pub fn alpn<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let list: Vec<Vec<u8>> = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        match &mut self.side {
            Side::Server(c) => Arc::make_mut(c).alpn_protocols = list,
            Side::Client(c, _) => Arc::make_mut(c).alpn_protocols = list,
        }
        self
    }

    /// How long the handshake may take from the connection's start
    /// (default 10 s); then the session ends with
    /// [`crate::CloseReason::HandshakeTimeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether this is a server's configuration.
    pub fn is_server(&self) -> bool {
        matches!(self.side, Side::Server(_))
    }

    /// Checks the settings: a handshake timeout of at least a millisecond.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.handshake_timeout < Duration::from_millis(1) {
            return Err(crate::ConfigError::new(
                crate::Setting::HandshakeTimeout,
                "must be at least 1 ms",
            ));
        }
        Ok(())
    }

    /// A new session's TLS state.
    pub(crate) fn connection(&self) -> Result<rustls::Connection, rustls::Error> {
        Ok(match &self.side {
            Side::Server(c) => rustls::ServerConnection::new(c.clone())?.into(),
            Side::Client(c, name) => rustls::ClientConnection::new(c.clone(), name.clone())?.into(),
        })
    }
}
