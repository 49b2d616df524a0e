//! How the upstream is reached: the connector for the per-worker pool
//! (plain TCP, or TLS through rustls with the system's roots plus an optional
//! CA bundle, `upstream.ca_file`), and the request body wrapper that tells
//! when the request has been sent in full and bounds a stalled upload.
//! Requests go out as HTTP/1.1, as nginx `proxy_pass` does, whatever the
//! client spoke.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::Notify;
use tokio::time::Sleep;
use tokio_rustls::TlsConnector;

use super::pool::{Connector, Pool};
use crate::body::BoxError;
use crate::config::{Problem, UpstreamConfig};

fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: key.into(),
        message,
        source: None,
    }
}

/// Builds one pool; a bad `upstream.ca_file` is reported as a config problem.
pub fn pool(cfg: &UpstreamConfig) -> Result<Arc<Pool>, Problem> {
    let url = &cfg.url;
    let host = url
        .host_str()
        .ok_or_else(|| problem("upstream.url", "has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| problem("upstream.url", "has no port".into()))?;
    let tls = if url.scheme() == "https" {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| problem("upstream.url", format!("invalid TLS server name: {e}")))?;
        Some((tls_connector(cfg)?, name))
    } else {
        None
    };
    let connector = Connector {
        host,
        port,
        tls,
        connect_timeout: cfg.connect_timeout,
    };
    Ok(Pool::new(
        connector,
        cfg.pool_max_idle_per_host,
        cfg.pool_idle_timeout,
    ))
}

fn tls_connector(cfg: &UpstreamConfig) -> Result<TlsConnector, Problem> {
    let mut roots = rustls::RootCertStore::empty();
    // Missing system roots are not fatal: a configured CA bundle may be all
    // the upstream needs.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                problem(
                    "upstream.ca_file",
                    format!("cannot read PEM certificates from {}: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(problem(
                "upstream.ca_file",
                format!("{} holds no certificate", path.display()),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| problem("upstream.ca_file", format!("invalid CA certificate: {e}")))?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| problem("upstream.url", format!("TLS set-up failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// Why the client's request body could not be relayed: the client's fault,
/// told apart from the upstream's by the error chain of the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the request body is malformed")]
    Malformed(#[source] hyper::Error),
    #[error("the request body stalled for longer than server.body_read_timeout")]
    Timeout,
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream. It tells when it has
    /// been sent in full, so the response-header timeout starts then (as
    /// nginx's `proxy_read_timeout` does) and a slow upload is not cut short;
    /// and it bounds the wait for each next piece of it (nginx's
    /// `client_body_timeout`), counted only while the upstream side is
    /// asking for more, so an app that reads slowly is not the client's fault.
    pub struct SentBody {
        #[pin]
        inner: Incoming,
        done: Option<Arc<Notify>>,
        stall: Option<Stall>,
    }
}

/// The body-read timer: armed when a poll finds no data ready.
struct Stall {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The last poll found nothing, so the timer is running.
    waiting: bool,
}

impl SentBody {
    /// The body, and what tells when it has been sent: `None` when there is
    /// nothing to send (no body, the usual case), so nothing to wait for.
    pub fn new(inner: Incoming, read_timeout: Duration) -> (Self, Option<Arc<Notify>>) {
        if inner.is_end_stream() {
            let body = Self {
                inner,
                done: None,
                stall: None,
            };
            return (body, None);
        }
        let notify = Arc::new(Notify::new());
        let stall = Stall {
            timeout: read_timeout,
            timer: Box::pin(tokio::time::sleep(read_timeout)),
            waiting: false,
        };
        let body = Self {
            inner,
            done: Some(notify.clone()),
            stall: Some(stall),
        };
        (body, Some(notify))
    }
}

impl HttpBody for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(stall) = this.stall {
                    stall.waiting = false;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.stall = None;
                Poll::Ready(Some(Err(ClientBodyError::Malformed(e).into())))
            }
            Poll::Ready(None) => {
                *this.stall = None;
                if let Some(done) = this.done.take() {
                    done.notify_one();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(stall) = this.stall else {
                    return Poll::Pending;
                };
                if !stall.waiting {
                    stall.waiting = true;
                    let deadline = tokio::time::Instant::now() + stall.timeout;
                    stall.timer.as_mut().reset(deadline);
                }
                match stall.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.stall = None;
                        Poll::Ready(Some(Err(ClientBodyError::Timeout.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
