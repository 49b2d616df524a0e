//! The identity-provider interface: build the authorize URL, exchange a
//! code, refresh a token, fetch the user's claims. One file per provider;
//! the login flow, sessions and token cache use only this interface.

pub mod emp;
mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::config::{Config, ProviderKind};
use crate::metrics::Metrics;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Tokens as the provider issued them.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Duration,
    /// EMP: `oauth2_backend_url`, sent with the first token answer only.
    pub backend_url: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    // Tokens never reach a log, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("backend_url", &self.backend_url)
            .finish_non_exhaustive()
    }
}

/// What the callback brought back (query parameters).
#[derive(Debug, Default, Clone)]
pub struct Callback {
    pub code: String,
    /// EMP: `backend_url`, received after the EMP login, passed on to the token request.
    pub backend_url: Option<String>,
}

/// Per-login values the sidecar generates before sending the user away.
#[derive(Clone)]
pub struct LoginRequest {
    pub state: String,
}

/// Which call an IdP error came from (the `endpoint` metric label too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Refresh,
    Profile,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Token, Endpoint::Refresh, Endpoint::Profile];
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Refresh => "refresh",
            Endpoint::Profile => "profile",
        }
    }
}

/// A failed IdP call, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The IdP answered 4xx: it refused this request (bad code, revoked
    /// refresh token, wrong client id). Not worth retrying.
    #[error(
        "{endpoint:?} refused by the identity provider (HTTP {status}{})",
        describe(code, message)
    )]
    Rejected {
        endpoint: Endpoint,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// The IdP answered 5xx.
    #[error("{endpoint:?}: identity provider error (HTTP {status})")]
    ServerError { endpoint: Endpoint, status: u16 },
    /// No answer in time.
    #[error("{endpoint:?}: identity provider timed out")]
    Timeout { endpoint: Endpoint },
    /// Unreachable (refused, reset, DNS, TLS).
    #[error("{endpoint:?}: identity provider unreachable")]
    Unreachable {
        endpoint: Endpoint,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer we cannot use.
    #[error("{endpoint:?}: unusable answer from the identity provider: {reason}")]
    InvalidResponse { endpoint: Endpoint, reason: String },
}

fn describe(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(c), None) => format!(": {c}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

impl IdpError {
    /// A transient failure: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            IdpError::Rejected { .. } | IdpError::InvalidResponse { .. } => false,
            IdpError::ServerError { .. }
            | IdpError::Timeout { .. }
            | IdpError::Unreachable { .. } => true,
        }
    }
}

pub trait Provider: Send + Sync {
    /// Where to send the browser to log in.
    fn authorize_url(&self, login: &LoginRequest) -> Url;
    /// Exchanges an authorization code. Never retried: the IdP may already
    /// have consumed the code.
    fn exchange<'a>(&'a self, callback: &'a Callback) -> BoxFuture<'a, Result<TokenSet, IdpError>>;
    /// Gets a new access token with a refresh token.
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Result<TokenSet, IdpError>>;
    /// The user's claims (a JSON object) for headers and `/oauth2/userinfo`.
    fn claims<'a>(
        &'a self,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<serde_json::Value, IdpError>>;
}

/// The HTTP client for IdP calls: rustls, bounded time per call.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// Builds the configured provider.
pub fn build(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<dyn Provider>, String> {
    let http = http_client(config.provider.timeout).map_err(|e| e.to_string())?;
    match config.provider.kind {
        ProviderKind::Emp => Ok(Arc::new(emp::Emp::new(&config.provider, http, metrics))),
        // Refused by config validation until these providers exist.
        ProviderKind::Upbond | ProviderKind::Oidc => {
            Err("provider.kind: this provider is not available in this version".into())
        }
    }
}
