//! The pooled keep-alive client to the upstream app: plain HTTP, or HTTPS
//! through rustls with the system's roots plus an optional CA bundle
//! (`upstream.ca_file`). Requests go out as HTTP/1.1, as nginx `proxy_pass`
//! does, whatever the client spoke.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Notify;

use crate::config::{Problem, UpstreamConfig};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, SentBody>;

/// Builds the client; a bad `upstream.ca_file` is reported as a config problem.
pub fn client(cfg: &UpstreamConfig) -> Result<UpstreamClient, Problem> {
    let mut roots = rustls::RootCertStore::empty();
    // Missing system roots are not fatal: a plain-HTTP upstream (the usual
    // sidecar case) or a configured CA bundle needs none of them.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let problem = |message: String| Problem {
            key: "upstream.ca_file".into(),
            message,
            source: None,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                problem(format!(
                    "cannot read PEM certificates from {}: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(problem(format!("{} holds no certificate", path.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| problem(format!("invalid CA certificate: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Problem {
        key: "upstream.url".into(),
        message: format!("TLS set-up failed: {e}"),
        source: None,
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .build(https))
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream; tells when it has been
    /// sent in full, so the response-header timeout starts then (as nginx's
    /// `proxy_read_timeout` does) and a slow upload is not cut short.
    pub struct SentBody {
        #[pin]
        inner: Incoming,
        done: Option<Arc<Notify>>,
    }
}

impl SentBody {
    pub fn new(inner: Incoming) -> (Self, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        let done = if inner.is_end_stream() {
            notify.notify_one();
            None
        } else {
            Some(notify.clone())
        };
        (Self { inner, done }, notify)
    }
}

impl HttpBody for SentBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(done) = this.done.take()
        {
            done.notify_one();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
