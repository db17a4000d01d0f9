//! tokio-rustls TLS echo server, single-threaded (current_thread), one
//! task per connection with read / write_all on the TLS stream, as
//! tokio-rustls' examples do; ring as the crypto provider, as iocore's.
//!
//! Usage: peer-tokio-rustls 127.0.0.1:PORT CERT.pem KEY.pem
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(2);
    let (cert, key) = (args.next().expect("CERT.pem"), args.next().expect("KEY.pem"));
    let certs = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    iocore_peers::accept_loop(|stream, _| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(stream) = acceptor.accept(stream).await {
                iocore_peers::echo(stream).await;
            }
        }
    })
    .await;
}
