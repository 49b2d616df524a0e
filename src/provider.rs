//! The identity-provider interface: build the authorize URL, finish a login
//! (exchange the code, verify, get the user's claims), refresh a token. One
//! file per provider (`emp.rs`; `oidc.rs` for UPBOND and generic OpenID
//! Connect, with `jwks.rs` verifying id_tokens); the login flow, sessions
//! and token cache use only this interface.

pub mod emp;
mod jwks;
pub mod oidc;
mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use url::Url;

use crate::config::{Config, ProviderKind, Secret};
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
    /// OpenID: the id_token, for the end-session request's `id_token_hint`.
    pub id_token: Option<String>,
    /// A refresh's newer claims: its id_token verified (and userinfo, when
    /// `provider.userinfo` is on). `None`: the claims stay as they are.
    pub claims: Option<Value>,
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

/// What the callback brought back (query parameters), with the secrets of
/// this login that the sidecar kept between redirect and callback.
#[derive(Default, Clone)]
pub struct Callback {
    pub code: String,
    /// EMP: `backend_url`, received after the EMP login, passed on to the token request.
    pub backend_url: Option<String>,
    /// The `nonce` the id_token must carry (OIDC, UPBOND).
    pub nonce: String,
    /// The PKCE `code_verifier` (OIDC, UPBOND).
    pub code_verifier: String,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("backend_url", &self.backend_url)
            .finish_non_exhaustive()
    }
}

/// Per-login values the sidecar generates before sending the user away:
/// `state` (CSRF), `nonce` (binds the id_token to this login) and a PKCE
/// verifier (binds the code to this sidecar). Each is 256 random bits.
#[derive(Clone)]
pub struct LoginRequest {
    pub state: String,
    pub nonce: String,
    pub code_verifier: String,
}

impl LoginRequest {
    pub fn new() -> LoginRequest {
        LoginRequest {
            state: crate::session::random_token(),
            nonce: crate::session::random_token(),
            code_verifier: crate::session::random_token(),
        }
    }

    /// The PKCE S256 `code_challenge`: BASE64URL(SHA-256(verifier)) (RFC 7636 4.2).
    pub fn code_challenge(&self) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(self.code_verifier.as_bytes()))
    }
}

impl Default for LoginRequest {
    fn default() -> Self {
        Self::new()
    }
}

// The metric label enums live with the metrics, which sit below this module.
pub use crate::metrics::{Endpoint, IdTokenFailure};

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
    /// The id_token failed verification.
    #[error("{endpoint:?}: id_token refused ({}): {}", reason.as_str(), reason.describe())]
    InvalidIdToken {
        endpoint: Endpoint,
        reason: IdTokenFailure,
    },
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
            IdpError::Rejected { .. }
            | IdpError::InvalidResponse { .. }
            | IdpError::InvalidIdToken { .. } => false,
            IdpError::ServerError { .. }
            | IdpError::Timeout { .. }
            | IdpError::Unreachable { .. } => true,
        }
    }
}

pub trait Provider: Send + Sync {
    /// Where to send the browser to log in. Async because an OpenID
    /// provider's authorize endpoint comes from its discovery document.
    fn authorize_url<'a>(&'a self, login: &'a LoginRequest)
    -> BoxFuture<'a, Result<Url, IdpError>>;
    /// Finishes a login: exchanges the code (never retried: the IdP may
    /// already have consumed it), verifies what needs verifying, and returns
    /// the tokens with the user's claims (a JSON object) for headers and
    /// `/oauth2/userinfo`.
    fn login<'a>(
        &'a self,
        callback: &'a Callback,
    ) -> BoxFuture<'a, Result<(TokenSet, serde_json::Value), IdpError>>;
    /// Gets a new access token with a refresh token. `subject` is the
    /// session's `sub`; a refreshed id_token must name the same one.
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a str,
        subject: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenSet, IdpError>>;
    /// Checks a bearer token an API client sent (`[bearer]`): its claims
    /// when it is valid for one of `audiences`. The default accepts none.
    fn verify_bearer<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Value, BearerRefusal>> {
        let _ = (token, audiences);
        Box::pin(async {
            Err(BearerRefusal::Invalid(
                "not a token this provider issues".into(),
            ))
        })
    }
    /// Checks a back-channel logout token (OpenID Connect Back-Channel
    /// Logout 1.0, 2.6). Providers that cannot send one (EMP) refuse all.
    fn verify_logout_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<LogoutToken, BearerRefusal>> {
        let _ = token;
        Box::pin(async {
            Err(BearerRefusal::Invalid(
                "this provider sends no logout tokens".into(),
            ))
        })
    }
    /// Where to send the browser after a local sign-out to end its session
    /// at the provider too (RP-Initiated Logout), coming back to
    /// `post_logout` (absolute); `None` when the provider announces no
    /// end-session endpoint (EMP documents none).
    fn end_session<'a>(
        &'a self,
        id_token: Option<&'a str>,
        post_logout: &'a str,
    ) -> BoxFuture<'a, Option<Url>> {
        let _ = (id_token, post_logout);
        Box::pin(async { None })
    }
    /// Uses `secret` for the token calls from now on (`SIGHUP`). Providers
    /// without a client secret (EMP) ignore it.
    fn set_client_secret(&self, secret: Option<&Secret>) -> Result<(), String> {
        let _ = secret;
        Ok(())
    }
}

/// A verified back-channel logout token: whose sessions end.
#[derive(Debug, Clone)]
pub struct LogoutToken {
    /// The provider's session: when given, only its sessions end.
    pub sid: Option<String>,
    /// The user: without `sid`, all of their sessions end.
    pub sub: Option<String>,
    /// Used once only.
    pub jti: String,
    /// Unix seconds; the `jti` is remembered until then.
    pub exp: u64,
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone)]
pub enum BearerRefusal {
    /// Forged, expired, for another audience or issuer, unknown, revoked:
    /// `401` with `WWW-Authenticate: Bearer error="invalid_token"`.
    Invalid(String),
    /// The provider could not be asked (discovery, JWKS or profile down):
    /// `503`, the token may well be valid.
    Unavailable(Arc<IdpError>),
}

/// The largest IdP answer read (token, profile, userinfo, discovery,
/// JWKS): real ones are a few kilobytes; a larger one is refused as it
/// streams in, before it can take the sidecar's memory.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// One IdP call: timed, its answer sorted into success (a JSON value) or
/// an [`IdpError`]. Errors never carry the URL, whose query may hold a
/// code or a refresh token, and `secrets` (the code, tokens and client
/// secret the request carried) are cut out of any text the IdP sent back,
/// since some IdPs echo them in their error messages.
pub(crate) async fn call(
    metrics: &Metrics,
    endpoint: Endpoint,
    req: reqwest::RequestBuilder,
    secrets: &[&str],
) -> Result<Value, IdpError> {
    let start = Instant::now();
    let result = async {
        let mut resp = req.send().await.map_err(|e| transport(endpoint, e))?;
        let status = resp.status();
        if status.is_server_error() {
            return Ok::<_, IdpError>((status, Vec::new()));
        }
        let too_large = || IdpError::InvalidResponse {
            endpoint,
            reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(endpoint, e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
    .await;
    metrics.observe_idp(endpoint, start.elapsed().as_secs_f64());
    let (status, body) = result?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| IdpError::InvalidResponse {
            endpoint,
            reason: format!("not JSON: {e}"),
        });
    }
    if status.is_client_error() {
        let (code, message) = error_text(&body, secrets);
        return Err(IdpError::Rejected {
            endpoint,
            status: status.as_u16(),
            code,
            message,
        });
    }
    if status.is_server_error() {
        return Err(IdpError::ServerError {
            endpoint,
            status: status.as_u16(),
        });
    }
    Err(IdpError::InvalidResponse {
        endpoint,
        reason: format!("unexpected HTTP {status}"),
    })
}

/// The code and message of an IdP's error body, secrets cut out, then
/// clipped to [`wire::MAX_MESSAGE`] (clipped first, a secret across the
/// cut would have left its first part behind).
pub fn error_text(body: &[u8], secrets: &[&str]) -> (Option<String>, Option<String>) {
    let (code, message) = wire::error_details(body);
    let clean = |text: Option<String>| text.map(|t| wire::clip(redact(t, secrets)));
    (clean(code), clean(message))
}

/// `text` with every secret (as sent, or form-encoded) replaced by
/// `[redacted]`. Values shorter than 6 bytes are left alone: no secret is
/// that short, and cutting a common word would garble the message.
pub(crate) fn redact(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 6) {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [*secret, encoded.as_str()] {
            if text.contains(form) {
                text = text.replace(form, "[redacted]");
            }
        }
    }
    text
}

fn transport(endpoint: Endpoint, e: reqwest::Error) -> IdpError {
    if e.is_timeout() {
        IdpError::Timeout { endpoint }
    } else {
        IdpError::Unreachable {
            endpoint,
            source: e.without_url(),
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/`: how the sidecar reads what
/// an IdP sends. Not an interface; nothing else may use it.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::error_text;
    pub use super::jwks::{ACCEPTED, Expect, KeySet, TokenHeader, header, verify};
    pub use super::wire::MAX_MESSAGE;

    /// A successful token answer as `call` hands it on: JSON, then
    /// the token set (EMP and OpenID alike).
    pub fn token_answer(body: &[u8]) -> Result<super::TokenSet, String> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        super::token_set(super::Endpoint::Token, &v).map_err(|e| e.to_string())
    }
}

/// A token answer: `access_token` is required, the rest is lenient.
pub(crate) fn token_set(endpoint: Endpoint, v: &Value) -> Result<TokenSet, IdpError> {
    let invalid = |reason: String| IdpError::InvalidResponse { endpoint, reason };
    let access_token =
        wire::string(v, "access_token").ok_or_else(|| invalid("no access_token".into()))?;
    Ok(TokenSet {
        access_token,
        refresh_token: wire::string(v, "refresh_token"),
        expires_in: wire::expires_in(v.get("expires_in")).map_err(invalid)?,
        backend_url: wire::string(v, "oauth2_backend_url"),
        id_token: wire::string(v, "id_token"),
        claims: None,
    })
}

/// `{base}{path}` (`path` starting with `/`), keeping any path the base URL
/// has, without its trailing slash: `https://idp/realms/x/` + `/token`.
pub(crate) fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url.set_query(None);
    url
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
        ProviderKind::Upbond | ProviderKind::Oidc => {
            Ok(Arc::new(oidc::Oidc::new(&config.provider, http, metrics)?))
        }
    }
}

/// A provider `[bearer]` checks tokens with, and the audiences it accepts.
pub type BearerIssuer = (Arc<dyn Provider>, Vec<String>);

/// The providers `[bearer]` checks tokens with: the configured one, then
/// one OpenID provider per `bearer.extra_issuers` entry (its own
/// discovery and JWKS), each with the audiences it accepts.
pub fn bearer_issuers(
    config: &Config,
    provider: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
) -> Result<Vec<BearerIssuer>, String> {
    let mut out = vec![(provider, config.bearer.audiences.clone())];
    for (issuer, audience) in &config.bearer.extra_issuers {
        let mut cfg = config.provider.clone();
        cfg.kind = ProviderKind::Oidc;
        cfg.base_url = issuer.clone();
        cfg.client_id = audience.clone();
        cfg.userinfo = false;
        let http = http_client(config.provider.timeout).map_err(|e| e.to_string())?;
        out.push((
            Arc::new(oidc::Oidc::new(&cfg, http, metrics.clone())?),
            vec![audience.clone()],
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One helper builds EMP's and the OIDC providers' URLs; each keeps the
    /// base URL's path, with or without its trailing slash.
    #[test]
    fn endpoints_keep_the_base_path() {
        let cases = [
            (
                "https://emp.example/lg/v1/",
                "/token",
                "https://emp.example/lg/v1/token",
            ),
            (
                "https://emp.example",
                "/authorize",
                "https://emp.example/authorize",
            ),
            (
                "https://auth3.upbond.io/",
                "/oauth/token",
                "https://auth3.upbond.io/oauth/token",
            ),
            (
                "https://idp.example/realms/x",
                "/.well-known/openid-configuration",
                "https://idp.example/realms/x/.well-known/openid-configuration",
            ),
        ];
        for (base, path, want) in cases {
            let base = Url::parse(base).unwrap();
            assert_eq!(endpoint(&base, path).as_str(), want, "{base} + {path}");
        }
    }

    #[test]
    fn secrets_are_cut_from_idp_text_as_sent_and_form_encoded() {
        let rt = "rt/abc+def==";
        let text = format!("refresh_token {rt} (sent as rt%2Fabc%2Bdef%3D%3D) is revoked");
        assert_eq!(
            redact(text, &[rt, "short"]),
            "refresh_token [redacted] (sent as [redacted]) is revoked"
        );
        // Values too short to be secrets are left alone.
        assert_eq!(redact("a short word".into(), &["short"]), "a short word");
    }

    #[test]
    fn a_secret_across_the_clip_is_cut_whole() {
        let rt = "refresh-token-0123456789abcdef0123456789";
        // The token starts 10 bytes before the clip.
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"{}{rt} is revoked"}}"#,
            "x".repeat(wire::MAX_MESSAGE - 10)
        );
        let (code, message) = error_text(body.as_bytes(), &[rt]);
        assert_eq!(code.as_deref(), Some("invalid_grant"));
        let message = message.unwrap();
        assert!(!message.contains("refresh-to"), "{message}");
        assert!(message.contains("x[redacted]"), "{message}");
    }
}
