//! Errors of the request path, grouped by who is at fault: the client, the
//! upstream, or the sidecar itself. One exhaustive `match` turns each into its
//! status; the body says only what the caller can act on, plus the request id.

use http::{Response, StatusCode};

pub use crate::body::BoxError;
use crate::body::{self, Body};
use crate::metrics::{ClientErrorKind, UpstreamErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // The client's fault.
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("bad request: {1}")]
    BadRequest(ClientErrorKind, &'static str),
    #[error("bad request: the request body is malformed")]
    ClientBody(#[source] BoxError),
    #[error("the request body was not sent in time")]
    ClientBodyTimeout,
    #[error("no valid session")]
    Unauthenticated,
    #[error("the bearer token is invalid or expired")]
    InvalidToken,
    #[error("this account may not access this resource")]
    Forbidden,

    // The upstream's fault.
    #[error("upstream refused or dropped the connection")]
    UpstreamConnect(#[source] BoxError),
    #[error("upstream connection timed out")]
    UpstreamConnectTimeout,
    #[error("upstream did not answer in time")]
    UpstreamResponseTimeout,
    #[error("upstream sent an invalid response")]
    UpstreamProtocol(#[source] BoxError),

    // The identity provider's fault.
    #[error("the session's token expired and the identity provider cannot refresh it now")]
    IdpUnavailable(#[source] std::sync::Arc<crate::provider::IdpError>),

    // The sidecar's own backing service.
    #[error("the session store is unavailable; please try again in a moment")]
    StoreUnavailable(#[source] crate::session::StoreError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(..) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Unauthenticated | ProxyError::InvalidToken => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamResponseTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::IdpUnavailable(_) | ProxyError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The upstream failure this error counts as, if it is one.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::HeadersTooLarge
            | ProxyError::BadRequest(..)
            | ProxyError::ClientBody(_)
            | ProxyError::ClientBodyTimeout
            | ProxyError::Unauthenticated
            | ProxyError::InvalidToken
            | ProxyError::Forbidden
            | ProxyError::IdpUnavailable(_)
            | ProxyError::StoreUnavailable(_) => None,
            ProxyError::UpstreamConnect(_) => Some(UpstreamErrorKind::Connect),
            ProxyError::UpstreamConnectTimeout => Some(UpstreamErrorKind::ConnectTimeout),
            ProxyError::UpstreamResponseTimeout => Some(UpstreamErrorKind::ResponseTimeout),
            ProxyError::UpstreamProtocol(_) => Some(UpstreamErrorKind::Protocol),
        }
    }

    /// The client fault this error counts as, if it is one.
    pub fn client_kind(&self) -> Option<ClientErrorKind> {
        match self {
            ProxyError::BadRequest(kind, _) => Some(*kind),
            ProxyError::ClientBody(_) => Some(ClientErrorKind::Body),
            ProxyError::ClientBodyTimeout => Some(ClientErrorKind::BodyTimeout),
            ProxyError::HeadersTooLarge
            | ProxyError::Unauthenticated
            | ProxyError::InvalidToken
            | ProxyError::Forbidden
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamResponseTimeout
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::IdpUnavailable(_)
            | ProxyError::StoreUnavailable(_) => None,
        }
    }

    /// A short, stable code for the JSON body.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::HeadersTooLarge => "request_header_fields_too_large",
            ProxyError::BadRequest(..) | ProxyError::ClientBody(_) => "bad_request",
            ProxyError::ClientBodyTimeout => "request_timeout",
            ProxyError::Unauthenticated => "unauthorized",
            ProxyError::InvalidToken => "invalid_token",
            ProxyError::Forbidden => "forbidden",
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamProtocol(_) => "bad_gateway",
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamResponseTimeout => {
                "gateway_timeout"
            }
            ProxyError::IdpUnavailable(_) => "identity_provider_unavailable",
            ProxyError::StoreUnavailable(_) => "session_store_unavailable",
        }
    }

    /// The response the client gets: a small JSON body naming the error and
    /// the request id (our internals and the cause chain stay in the log).
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        });
        let invalid_token = matches!(self, ProxyError::InvalidToken);
        let mut resp = body::response(status, "application/json", body.to_string());
        if invalid_token {
            // RFC 6750 3.1: never a login redirect for an API client.
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

/// The cause chain of an error on one line, for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
