//! The login flow and the one authentication decision.
//!
//! [`Auth::decide`] finds the session for a request (signed cookie → store →
//! a fresh token); the proxy, `/oauth2/auth` and `/oauth2/userinfo` all use
//! it and differ only in how they answer. The flow: `/oauth2/start` (or a
//! browser hitting a protected page) creates a random `state`, nonce and
//! PKCE verifier, seals them with the return URL into a login cookie named
//! after that state (no server memory: any replica can finish the login,
//! several tabs can log in at once) and redirects to the IdP; the callback
//! opens the cookie of its `state`, consumes the state in the session store
//! (single use across replicas), exchanges the code, fetches the claims, and
//! creates the session.

pub mod bearer;
pub mod page;
pub mod redirect;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::config::Config;
use crate::metrics::{BackchannelResult, LoginResult, Metrics};
use crate::provider::{Callback, IdpError, LoginRequest, Provider};
use crate::proxy::Added;
use crate::session::cookie::{Cookies, LOGIN_COOKIE_TTL, MAX_LOGIN_COOKIES};
use crate::session::{
    IdentityRules, Profile, Session, SessionKey, SessionStore, StoreError, Tokens,
};
use crate::token_cache::{Fresh, TokenCache};
use page::ErrorPage;

static X_AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
static X_AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
static X_AUTH_REQUEST_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-auth-request-access-token");

/// The result of looking for a session.
pub enum Decision {
    Authenticated {
        session: Arc<Session>,
        tokens: Arc<Tokens>,
    },
    NeedsLogin,
    /// The session's token expired and the IdP cannot refresh it now.
    IdpUnavailable(Arc<IdpError>),
    /// The session store cannot be reached now.
    StoreUnavailable(StoreError),
}

pub struct Auth {
    provider: Arc<dyn Provider>,
    store: Arc<dyn SessionStore>,
    tokens: Arc<TokenCache>,
    cookies: Cookies,
    metrics: Arc<Metrics>,
    allowed_domains: Vec<String>,
    /// The site's origin (`provider.redirect_url`'s), for absolute URLs.
    public_origin: String,
    identity: IdentityRules,
    inject_authorization: bool,
    inject_access_token: bool,
    /// `headers.backend_url`.
    backend_header: Option<HeaderName>,
    /// `[bearer]`, when enabled.
    bearer: Option<bearer::Bearer>,
}

/// Whether a request is a browser navigation (sent to log in, not refused).
pub fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"))
}

fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(loc) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

impl Auth {
    pub fn new(
        config: &Config,
        provider: Arc<dyn Provider>,
        store: Arc<dyn SessionStore>,
        bearer: Option<bearer::Bearer>,
        metrics: Arc<Metrics>,
    ) -> Auth {
        let tokens = TokenCache::new(
            provider.clone(),
            store.clone(),
            metrics.clone(),
            IdentityRules::new(config),
            config.token.refresh_margin,
            config.provider.timeout,
        );
        Auth {
            provider,
            store,
            tokens,
            cookies: Cookies::new(
                config.session.cookie_secrets.clone(),
                &config.session.cookie_name,
                config.session.cookie_secure,
                config.session.lifetime,
            ),
            metrics,
            allowed_domains: config.routes.allowed_redirect_domains.clone(),
            public_origin: config.provider.redirect_url.origin().ascii_serialization(),
            identity: IdentityRules::new(config),
            inject_authorization: config.headers.authorization,
            inject_access_token: config.headers.access_token,
            backend_header: config.headers.backend_url.clone(),
            bearer,
        }
    }

    /// Applies the secrets of a reloaded configuration (`SIGHUP`): the
    /// cookie secrets and the provider's client secret.
    pub fn set_secrets(&self, config: &Config) -> Result<(), String> {
        self.provider
            .set_client_secret(config.provider.client_secret.as_ref())?;
        self.cookies.set_secrets(&config.session.cookie_secrets);
        Ok(())
    }

    /// Starts the session store's background work.
    pub fn start_store(&self) {
        self.store.start();
    }

    /// Whether the session store can serve now (`/ready`).
    pub async fn store_ready(&self) -> bool {
        self.store.ready().await
    }

    /// The one authentication decision, for a request that arrived at
    /// `now` (read once a request: clock reads are not free under a
    /// hypervisor, benches/README.md).
    pub async fn decide(&self, headers: &HeaderMap, now: std::time::Instant) -> Decision {
        let Some(key) = self.cookies.session_key(headers) else {
            return Decision::NeedsLogin;
        };
        // A session at hand costs no future (the usual case).
        let found = match self.store.get_now(&key) {
            Some(found) => Ok(found),
            None => self.store.get(&key).await,
        };
        let session = match found {
            Ok(Some(session)) => session,
            Ok(None) => return Decision::NeedsLogin,
            Err(e) => return Decision::StoreUnavailable(e),
        };
        match self.tokens.fresh(&key, &session, now.into()).await {
            Fresh::Valid(tokens) => Decision::Authenticated { session, tokens },
            Fresh::Ended => Decision::NeedsLogin,
            Fresh::Unavailable(e) => Decision::IdpUnavailable(e),
            Fresh::StoreUnavailable(e) => Decision::StoreUnavailable(e),
        }
    }

    /// Whether the request carries a bearer token to check (`[bearer]` on).
    pub fn has_bearer(&self, headers: &HeaderMap) -> bool {
        self.bearer.is_some() && bearer::token(headers).is_some()
    }

    /// Checks the request's bearer token (see [`bearer`]).
    pub async fn bearer(
        &self,
        headers: &HeaderMap,
    ) -> Result<Arc<bearer::Verified>, crate::provider::BearerRefusal> {
        match (&self.bearer, bearer::token(headers)) {
            (Some(b), Some(token)) => b.check(token).await,
            _ => Err(crate::provider::BearerRefusal::Invalid(
                "no bearer token".into(),
            )),
        }
    }

    /// Identity headers for the upstream of a bearer-token request: the
    /// claim headers, and the token as `X-Forwarded-Access-Token`; the
    /// client's `Authorization` (the token) goes on as it is.
    pub fn added_bearer<'a>(&self, verified: &'a bearer::Verified) -> Added<'a> {
        Added {
            token_lines: verified.headers.lines(false, self.inject_access_token),
            claim_lines: &verified.profile.identity.claim_lines,
            ..Added::default()
        }
    }

    /// `/oauth2/auth` for a bearer token: 202 with its identity headers.
    pub fn bearer_auth_response(&self, verified: &bearer::Verified) -> Response<Body> {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::ACCEPTED;
        let h = resp.headers_mut();
        let identity = &verified.profile.identity;
        if let Some(u) = &identity.user {
            h.insert(X_AUTH_REQUEST_USER.clone(), u.clone());
        }
        if let Some(e) = &identity.email {
            h.insert(X_AUTH_REQUEST_EMAIL.clone(), e.clone());
        }
        h.insert(
            X_AUTH_REQUEST_ACCESS_TOKEN.clone(),
            verified.headers.access.clone(),
        );
        for (name, value) in &identity.claim_headers {
            h.insert(name.clone(), value.clone());
        }
        resp
    }

    /// Identity headers for the upstream of an authenticated request,
    /// written into its head after the request's own headers, whose
    /// versions of them never pass (`proxy::headers::UpstreamHead`); the
    /// client's `Authorization` neither, when the session's token replaces it.
    pub fn added<'a>(&'a self, profile: &'a Profile, tokens: &'a Tokens) -> Added<'a> {
        Added {
            token_lines: tokens
                .headers
                .lines(self.inject_authorization, self.inject_access_token),
            authorization: self.inject_authorization,
            claim_lines: &profile.identity.claim_lines,
            backend_url: self
                .backend_header
                .as_ref()
                .zip(tokens.backend_header.as_ref()),
        }
    }

    /// `/oauth2/auth`: 202 with the identity headers nginx copies with
    /// `auth_request_set`.
    pub fn auth_request_response(&self, session: &Session, tokens: &Tokens) -> Response<Body> {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::ACCEPTED;
        let h = resp.headers_mut();
        let profile = session.profile();
        if let Some(u) = &profile.identity.user {
            h.insert(X_AUTH_REQUEST_USER.clone(), u.clone());
        }
        if let Some(e) = &profile.identity.email {
            h.insert(X_AUTH_REQUEST_EMAIL.clone(), e.clone());
        }
        h.insert(
            X_AUTH_REQUEST_ACCESS_TOKEN.clone(),
            tokens.headers.access.clone(),
        );
        for (name, value) in &profile.identity.claim_headers {
            h.insert(name.clone(), value.clone());
        }
        // `headers.backend_url`: EMP's `oauth2_backend_url` for this session.
        if let (Some(name), Some(value)) = (&self.backend_header, &tokens.backend_header) {
            h.insert(name.clone(), value.clone());
        }
        resp
    }

    /// A logged-in user the authorization rules refuse: `403`, a page for
    /// a browser navigation (never a login: that would loop), JSON otherwise.
    pub fn forbidden<B>(
        &self,
        req: &http::Request<B>,
        session: &Session,
        request_id: &str,
    ) -> Response<Body> {
        if is_browser_navigation(req.method(), req.headers()) {
            let profile = session.profile();
            let who = profile
                .identity
                .email
                .as_ref()
                .or(profile.identity.user.as_ref())
                .and_then(|v| v.to_str().ok());
            return page::forbidden(who, request_id);
        }
        let body = serde_json::json!({
            "error": "forbidden",
            "message": "this account may not access this resource",
            "request_id": request_id,
        });
        body::response(StatusCode::FORBIDDEN, "application/json", body.to_string())
    }

    /// `/oauth2/userinfo`: the session's claims, and EMP's backend URL as
    /// `oauth2_backend_url` (unless a claim of that name is there).
    pub fn userinfo_response(&self, session: &Session, tokens: &Tokens) -> Response<Body> {
        let profile = session.profile();
        let with_backend = tokens.backend_url.as_ref().and_then(|url| {
            let mut claims: serde_json::Value = serde_json::from_str(&profile.claims).ok()?;
            claims
                .as_object_mut()?
                .entry("oauth2_backend_url")
                .or_insert_with(|| serde_json::Value::String(url.clone()));
            Some(claims.to_string())
        });
        let text = with_backend.unwrap_or_else(|| profile.claims.to_string());
        body::response(StatusCode::OK, "application/json", text)
    }

    /// Sends the browser to the IdP; afterwards it returns to `rd` (or `/`
    /// when `rd` is not a safe place to return to).
    pub async fn start(
        &self,
        headers: &HeaderMap,
        rd: Option<&str>,
        request_id: &str,
    ) -> Response<Body> {
        let return_to = rd
            .and_then(|rd| redirect::safe_return(rd, &self.allowed_domains))
            .unwrap_or_else(|| "/".to_string());
        let login = LoginRequest::new();
        let url = match self.provider.authorize_url(&login).await {
            Ok(url) => url,
            Err(e) => {
                // Only an OpenID provider's discovery can fail here.
                tracing::warn!(request_id, error = %crate::error::chain(&e), "cannot start a login: the identity provider is unavailable");
                let (status, _, explanation) = failure_kind(&e);
                return ErrorPage {
                    status,
                    title: "Sign-in unavailable",
                    explanation,
                    idp_code: None,
                    idp_message: None,
                    request_id,
                }
                .render();
            }
        };
        let pending = Cookies::new_login(login.state, login.nonce, login.code_verifier, return_to);
        let Some(cookie) = self.cookies.set_login(&pending) else {
            tracing::error!(request_id, "cannot seal a login cookie");
            return ErrorPage {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                title: "Sign-in unavailable",
                explanation: "The sign-in could not be started.",
                idp_code: None,
                idp_message: None,
                request_id,
            }
            .render();
        };
        let mut resp = redirect(url.as_str());
        // Room for this login: the oldest logins in progress go first.
        for drop in self.cookies.prune_logins(headers, MAX_LOGIN_COOKIES - 1) {
            resp.headers_mut().append(header::SET_COOKIE, drop);
        }
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        resp
    }

    /// The callback route.
    pub async fn callback(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Response<Body> {
        let state = query_param(uri, "state").filter(|s| !s.is_empty());
        let mut resp = self
            .finish_login(uri, headers, state.as_deref(), request_id)
            .await;
        // The login cookie is single use, whatever the outcome.
        if let Some(state) = &state {
            resp.headers_mut()
                .append(header::SET_COOKIE, self.cookies.clear_login(state));
        }
        resp
    }

    async fn finish_login(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        state: Option<&str>,
        request_id: &str,
    ) -> Response<Body> {
        let page = |status, title, explanation, code: Option<&str>, message: Option<&str>| {
            ErrorPage {
                status,
                title,
                explanation,
                idp_code: code,
                idp_message: message,
                request_id,
            }
            .render()
        };
        // The session store could not be reached: nothing the user did.
        let unavailable = || {
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "The sign-in cannot be completed right now. Please try again in a moment.",
                None,
                None,
            )
        };
        // 1. The state must be one this browser was sent away with (its
        // sealed login cookie), and unused on every replica.
        let pending = state.and_then(|s| self.cookies.login(headers, s));
        let first_use = match &pending {
            Some(p) => match self.store.consume_state(&p.state, LOGIN_COOKIE_TTL).await {
                Ok(first) => first,
                Err(e) => {
                    tracing::warn!(request_id, error = %e, "cannot record a login's state");
                    return unavailable();
                }
            },
            None => false,
        };
        let Some(pending) = pending.filter(|_| first_use) else {
            self.metrics.login(LoginResult::InvalidState);
            tracing::warn!(
                request_id,
                "login callback with a missing, foreign or used state"
            );
            return page(
                StatusCode::FORBIDDEN,
                "Sign-in could not be verified",
                "This sign-in link was already used, has expired, or was started in another browser.",
                None,
                None,
            );
        };
        // 2. The IdP may send the user back with an error instead of a code.
        if let Some(error) = query_param(uri, "error") {
            self.metrics.login(LoginResult::Denied);
            let description = query_param(uri, "error_description");
            tracing::warn!(request_id, idp_error = %error, "the identity provider refused the sign-in");
            return page(
                StatusCode::FORBIDDEN,
                "Sign-in was refused",
                "The identity provider did not sign you in.",
                Some(&error),
                description.as_deref(),
            );
        }
        let Some(code) = query_param(uri, "code").filter(|c| !c.is_empty()) else {
            self.metrics.login(LoginResult::Rejected);
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in incomplete",
                "The identity provider sent no authorization code.",
                None,
                None,
            );
        };
        let callback = Callback {
            code,
            backend_url: query_param(uri, "backend_url").filter(|b| !b.is_empty()),
            nonce: pending.nonce.clone(),
            code_verifier: pending.code_verifier.clone(),
        };
        // 3. Exchange the code (once: the IdP may have consumed it), verify, get the claims.
        let (set, claims) = match self.provider.login(&callback).await {
            Ok(ok) => ok,
            Err(e) => return self.login_failed(e, request_id),
        };
        let Some(tokens) = Tokens::issued(set, Instant::now(), self.tokens.margin()) else {
            self.metrics.login(LoginResult::Rejected);
            return page(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider issued an access token that cannot be used.",
                None,
                None,
            );
        };
        // 4. A new session (a new id: no fixation), replacing any previous one.
        if let Some(old) = self.cookies.session_key(headers) {
            // A failure here leaves the old session to expire on its own.
            let _ = self.store.remove(&old).await;
        }
        let identity = self.identity.identity(&claims);
        let key = SessionKey::generate();
        let session = Arc::new(Session::new(tokens, &claims, identity));
        if let Err(e) = self.store.insert(&key, session).await {
            tracing::warn!(request_id, error = %e, "cannot store the new session");
            return unavailable();
        }
        self.metrics.login(LoginResult::Success);
        tracing::info!(request_id, "login succeeded");
        let mut resp = redirect(&pending.return_to);
        resp.headers_mut()
            .append(header::SET_COOKIE, self.cookies.set_session(&key));
        resp
    }

    fn login_failed(&self, e: IdpError, request_id: &str) -> Response<Body> {
        tracing::warn!(request_id, error = %crate::error::chain(&e), "login failed at the identity provider");
        let (status, result, explanation) = failure_kind(&e);
        self.metrics.login(result);
        let (code, message) = match &e {
            IdpError::Rejected { code, message, .. } => (code.as_deref(), message.as_deref()),
            // The reason, for the user and for whoever reads the request id's log line.
            IdpError::InvalidIdToken { reason, .. } => {
                (Some(reason.as_str()), Some(reason.describe()))
            }
            _ => (None, None),
        };
        ErrorPage {
            status,
            title: "Sign-in failed",
            explanation,
            idp_code: code,
            idp_message: message,
            request_id,
        }
        .render()
    }

    /// Ends the session on the server and clears the cookies, then returns
    /// the browser to `rd` (when safe) or `/`.
    pub async fn sign_out(&self, headers: &HeaderMap, rd: Option<&str>) -> Response<Body> {
        let mut id_token = None;
        if let Some(key) = self.cookies.session_key(headers) {
            // The id_token, for the provider's end-session request.
            if let Ok(Some(session)) = self.store.get(&key).await {
                id_token = session.tokens().id_token.clone();
            }
            if let Err(e) = self.store.remove(&key).await {
                // The cookie goes anyway; the record expires on its own.
                tracing::warn!(error = %e, "cannot end the session in the store");
            }
        }
        let target = rd
            .and_then(|rd| redirect::safe_return(rd, &self.allowed_domains))
            .unwrap_or_else(|| "/".to_string());
        // Then the provider's session (OpenID RP-Initiated Logout), which
        // sends the browser back to the same checked target.
        let absolute = if target.starts_with('/') {
            format!("{}{target}", self.public_origin)
        } else {
            target.clone()
        };
        let location = match self
            .provider
            .end_session(id_token.as_deref(), &absolute)
            .await
        {
            Some(url) => url.to_string(),
            None => target,
        };
        let mut resp = redirect(&location);
        resp.headers_mut()
            .append(header::SET_COOKIE, self.cookies.clear_session());
        for drop in self.cookies.prune_logins(headers, 0) {
            resp.headers_mut().append(header::SET_COOKIE, drop);
        }
        resp
    }

    /// `POST /oauth2/backchannel_logout` (OpenID Connect Back-Channel
    /// Logout 1.0): a verified, unused logout token ends the sessions of
    /// its `sid` (or, without one, of its `sub`) on every replica. `200`
    /// when done; `400` for a missing, invalid or replayed token; `503`
    /// when the provider's keys or the store cannot be reached.
    pub async fn backchannel_logout(&self, body: bytes::Bytes) -> Response<Body> {
        let answer = |status: StatusCode, description: &str| {
            let mut resp = if status == StatusCode::OK {
                Response::new(body::empty())
            } else {
                let json = serde_json::json!({
                    "error": if status == StatusCode::BAD_REQUEST { "invalid_request" } else { "temporarily_unavailable" },
                    "error_description": description,
                });
                body::response(status, "application/json", json.to_string())
            };
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        };
        let Some(token) = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
        else {
            self.metrics.backchannel(BackchannelResult::Invalid);
            return answer(StatusCode::BAD_REQUEST, "no logout_token");
        };
        let logout = match self.provider.verify_logout_token(&token).await {
            Ok(t) => t,
            Err(crate::provider::BearerRefusal::Invalid(why)) => {
                tracing::warn!(reason = %why, "back-channel logout token refused");
                self.metrics.backchannel(BackchannelResult::Invalid);
                return answer(StatusCode::BAD_REQUEST, &why);
            }
            Err(crate::provider::BearerRefusal::Unavailable(e)) => {
                tracing::warn!(error = %crate::error::chain(&*e), "cannot check a back-channel logout token");
                self.metrics.backchannel(BackchannelResult::Unavailable);
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot reach the provider's keys",
                );
            }
        };
        // Each token once (its jti), on every replica, as long as it is valid.
        let now = jsonwebtoken::get_current_timestamp();
        let keep = std::time::Duration::from_secs(logout.exp.saturating_sub(now).clamp(60, 86_400));
        match self
            .store
            .consume_state(&format!("logout-jti:{}", logout.jti), keep)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.backchannel(BackchannelResult::Replayed);
                return answer(
                    StatusCode::BAD_REQUEST,
                    "this logout token was used already",
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a logout token");
                self.metrics.backchannel(BackchannelResult::Unavailable);
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable",
                );
            }
        }
        let name = match (&logout.sid, &logout.sub) {
            (Some(sid), _) => crate::session::logout_name("sid", sid),
            (None, Some(sub)) => crate::session::logout_name("sub", sub),
            (None, None) => return answer(StatusCode::BAD_REQUEST, "neither sid nor sub"),
        };
        match self.store.end_sessions_of(&name).await {
            Ok(ended) => {
                tracing::info!(ended, by_sid = logout.sid.is_some(), "back-channel logout");
                self.metrics.backchannel(BackchannelResult::Accepted);
                answer(StatusCode::OK, "")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot end sessions for a back-channel logout");
                self.metrics.backchannel(BackchannelResult::Unavailable);
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable",
                )
            }
        }
    }

    /// Sessions held now; read at each scrape for `emp_sidecar_sessions_active`.
    pub fn sessions_active(&self) -> u64 {
        self.store.count()
    }
}

/// The status, `logins_total` result and page text for a failed IdP call.
fn failure_kind(e: &IdpError) -> (StatusCode, LoginResult, &'static str) {
    match e {
        IdpError::Rejected { .. } => (
            StatusCode::BAD_GATEWAY,
            LoginResult::Rejected,
            "The identity provider refused to complete the sign-in.",
        ),
        IdpError::Timeout { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            LoginResult::IdpError,
            "The identity provider did not answer in time.",
        ),
        IdpError::ServerError { .. }
        | IdpError::Unreachable { .. }
        | IdpError::InvalidResponse { .. } => (
            StatusCode::BAD_GATEWAY,
            LoginResult::IdpError,
            "The identity provider could not be reached or gave an unusable answer.",
        ),
        IdpError::InvalidIdToken { .. } => (
            StatusCode::BAD_GATEWAY,
            LoginResult::InvalidIdToken,
            "The identity provider's answer failed verification, so no session was created.",
        ),
    }
}

/// The `rd` query parameter of a request.
pub fn rd_param(uri: &Uri) -> Option<String> {
    query_param(uri, "rd")
}

static X_AUTH_REQUEST_REDIRECT: HeaderName = HeaderName::from_static("x-auth-request-redirect");

/// Where `/oauth2/start` should return to: `X-Auth-Request-Redirect` when a
/// proxy in front set it (nginx passes `$request_uri` there, which keeps the
/// whole query; `rd=$request_uri` cannot, as nginx does not escape it), else
/// `rd`. Either is checked by [`redirect::safe_return`] before use.
pub fn start_return_to(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    headers
        .get(&X_AUTH_REQUEST_REDIRECT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(String::from)
        .or_else(|| rd_param(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_navigations_are_told_apart_from_api_calls() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        assert!(is_browser_navigation(&Method::GET, &h));
        assert!(!is_browser_navigation(&Method::POST, &h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_browser_navigation(&Method::GET, &h));
        assert!(!is_browser_navigation(&Method::GET, &HeaderMap::new()));
    }
}
