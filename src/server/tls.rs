//! TLS termination with rustls: the certificate chain and key come from PEM
//! files; ALPN offers h2 before http/1.1.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Problem, TlsFiles};

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Problem> {
    let problem = |key: &str, message: String| Problem {
        key: key.into(),
        message,
        source: None,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            problem(
                "server.tls_cert",
                format!(
                    "cannot read PEM certificates from {}: {e}",
                    files.cert.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(problem(
            "server.tls_cert",
            format!("{} holds no certificate", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        problem(
            "server.tls_key",
            format!(
                "cannot read a PEM private key from {}: {e}",
                files.key.display()
            ),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| problem("server.tls_cert", format!("TLS set-up failed: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        problem(
            "server.tls_key",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
