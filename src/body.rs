//! The response body type and the guard that closes a request's books: when
//! the response body has been sent in full, or is dropped (client gone), the
//! access-log line is written, metrics are observed and the in-flight counts
//! go down. Streaming bodies pass through untouched, frame by frame.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::activity::ConnActivity;
use crate::metrics::{Metrics, RouteClass};

/// The error of a body (and of anything else that only needs to be an error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response the sidecar sends has this body type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A response the sidecar answers itself: never cached.
pub fn response(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> http::Response<Body> {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The request path kept for the access log: a copy, inline when short.
/// Not a clone of the request's `Uri`: that shares hyper's read buffer, and
/// while the record lives (until the response body is done) hyper cannot
/// reuse the buffer for the next request and allocates a new one
/// (benches/README.md, issue 15).
pub struct LoggedPath(smallvec::SmallVec<[u8; 64]>);

impl LoggedPath {
    pub fn new(path: &str) -> LoggedPath {
        LoggedPath(smallvec::SmallVec::from_slice(path.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Built from a `&str` only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// What the access-log line and the metrics need to know about one request.
pub struct RequestRecord {
    pub start: Instant,
    pub method: Method,
    /// Only its path is logged: the query may carry codes or tokens.
    pub path: LoggedPath,
    pub request_id: http::HeaderValue,
    pub route: RouteClass,
    pub status: u16,
    pub upstream: Option<Duration>,
    pub metrics: Arc<Metrics>,
    pub conn: Option<Arc<ConnActivity>>,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let finished = Instant::now();
        let total = finished.saturating_duration_since(self.start);
        self.metrics
            .observe_request(self.route, self.status, total.as_secs_f64());
        self.metrics.in_flight.dec();
        if let Some(conn) = &self.conn {
            conn.request_done();
        }
        let request_id = self.request_id.to_str().unwrap_or_default();
        let entry = crate::access_log::Entry {
            method: &self.method,
            path: self.path.as_str(),
            status: self.status,
            route: self.route,
            duration: total,
            upstream: self.upstream,
            request_id,
        };
        if crate::access_log::write(&entry, finished) {
            return;
        }
        let upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "emp_sidecar::access",
            method = %self.method,
            path = %self.path.as_str(),
            status = self.status,
            route = self.route.as_str(),
            duration_ms = total.as_secs_f64() * 1000.0,
            upstream_ms,
            request_id = %request_id,
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// A body that carries its request's record until the body is done.
    pub struct Recorded {
        #[pin]
        inner: Body,
        record: Option<RequestRecord>,
    }
}

impl Recorded {
    pub fn new(inner: Body, record: RequestRecord) -> Self {
        Self {
            inner,
            record: Some(record),
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        // End of stream (or an error that ends it): close the record now, not
        // when hyper gets round to dropping the body.
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.record.take();
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
