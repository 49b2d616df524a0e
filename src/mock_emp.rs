//! A mock EMP, strict where the seed documents are specific: the token
//! endpoint reads its parameters from the query string only, the callback
//! carries a `backend_url` that the token request must pass back, `expires_in`
//! is a string, refresh answers have no `refresh_token`, and the documented
//! errors come back as HTTP 400. Served by `emp-sidecar mock-emp` and
//! `emp-sidecar demo`; tests use the handle to queue errors, slow refreshes
//! down, take the IdP offline and read every request it received.
//!
//! Users whose id is `country-blocked` or `no-agreement` log in, but their
//! code exchange is refused with the matching EMP message.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::session::random_token;

/// Settings of a mock EMP.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// The only accepted `client_id` (the EMP app key).
    pub client_id: String,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            client_id: "demo-app-key".into(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    pub body: String,
    pub authorization: Option<String>,
}

struct Grant {
    user: String,
    redirect_uri: String,
    backend_url: String,
    used: bool,
}

#[derive(Default)]
struct State {
    codes: HashMap<String, Grant>,
    refresh_tokens: HashMap<String, String>,
    access_tokens: HashMap<String, (String, Instant)>,
    queued_errors: VecDeque<(u16, String)>,
    refresh_delay: Duration,
    /// Replaces `options.token_lifetime` for tokens issued from now on.
    token_lifetime: Option<Duration>,
    /// Refresh tokens are single use: each refresh answers a new one.
    rotate: bool,
    down: bool,
    refreshes: usize,
    requests: Vec<Recorded>,
}

struct Shared {
    options: MockOptions,
    addr: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }
}

/// A running mock EMP.
#[derive(Clone)]
pub struct MockEmp {
    shared: Arc<Shared>,
}

impl MockEmp {
    /// Serves on `listener` from a task on the current runtime.
    pub fn start(listener: TcpListener, options: MockOptions) -> std::io::Result<MockEmp> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            addr,
            state: Mutex::new(State::default()),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(MockEmp { shared })
    }

    /// `http://addr` — the `{{EMPBaseURL}}` to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }

    /// The next token request (code or refresh) is answered with this.
    /// (`{refresh_token}` and `{code}` in `body` become the request's own,
    /// as an IdP that echoes its input would answer.)
    pub fn queue_token_error(&self, status: u16, body: &str) {
        self.shared
            .state()
            .queued_errors
            .push_back((status, body.to_string()));
    }

    /// From now on every refresh answers a new refresh token and the one
    /// presented stops working (single use), as rotating IdPs do.
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.shared.state().rotate = rotate;
    }

    /// Tokens issued from now on live `lifetime`.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.state().token_lifetime = Some(lifetime);
    }

    /// Refresh answers take this long.
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.shared.state().refresh_delay = delay;
    }

    /// While down, the token endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.state().down = down;
    }

    /// Refresh-token grants answered with a new token.
    pub fn refreshes(&self) -> usize {
        self.shared.state().refreshes
    }

    /// Forgets every refresh token (as if revoked).
    pub fn revoke_refresh_tokens(&self) {
        self.shared.state().refresh_tokens.clear();
    }

    /// Every code, access token and refresh token issued so far.
    pub fn issued_secrets(&self) -> Vec<String> {
        let st = self.shared.state();
        st.codes
            .keys()
            .chain(st.access_tokens.keys())
            .chain(st.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// Whether `token` is an access token this mock issued and that has not expired.
    pub fn access_token_valid(&self, token: &str) -> bool {
        self.shared
            .state()
            .access_tokens
            .get(token)
            .is_some_and(|(_, exp)| Instant::now() < *exp)
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json_resp(status: StatusCode, v: serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

/// EMP errors: HTTP 400 with the documented code and message.
fn emp_error(code: &str, message: &str) -> Resp {
    json_resp(
        StatusCode::BAD_REQUEST,
        json!({ "code": code, "message": message }),
    )
}

/// What the login page shows when EMP refuses the authorize request.
fn error_page(message: &str) -> Resp {
    respond(
        StatusCode::BAD_REQUEST,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><title>EMP</title><p role=alert>{}</p>",
            crate::auth::page::escape(message)
        ),
    )
}

fn pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let query = pairs(parts.uri.query().unwrap_or(""));
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: query.clone(),
        body: body.clone(),
        authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    };
    shared.state().requests.push(recorded);
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/authorize") => authorize(shared, &query),
        (&Method::POST, "/login") => login(shared, &pairs(&body)),
        (&Method::POST, "/token") => token(shared, &query, &body).await,
        (&Method::GET, "/profile") => profile(shared, parts.headers.get(header::AUTHORIZATION)),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

fn authorize(shared: &Shared, q: &[(String, String)]) -> Resp {
    if param(q, "response_type") != Some("code") {
        return error_page("LG.OAUTH.EC.4001: Invalid parameter (response_type)");
    }
    if param(q, "client_id") != Some(shared.options.client_id.as_str()) {
        return error_page("app_id is incorrect");
    }
    let Some(redirect_uri) = param(q, "redirect_uri").filter(|r| url::Url::parse(r).is_ok()) else {
        return error_page("Mismatching Redirect URI Error");
    };
    let Some(state) = param(q, "state") else {
        return error_page("LG.OAUTH.EC.4001: Invalid parameter (state)");
    };
    let esc = crate::auth::page::escape;
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LG Account (mock EMP)</title>
<style>body{{font-family:sans-serif;max-width:28rem;margin:4rem auto}}input{{font-size:1rem;padding:.4rem}}</style></head>
<body><h1>LG Account</h1><p>Mock EMP login for <code>{client}</code>. Any user id logs in.</p>
<form method="post" action="/login">
<input type="hidden" name="client_id" value="{client}">
<input type="hidden" name="redirect_uri" value="{redirect}">
<input type="hidden" name="state" value="{state}">
<label>User id <input type="text" name="user_id" autofocus required></label>
<button type="submit">Sign in</button>
</form></body></html>"#,
        client = esc(&shared.options.client_id),
        redirect = esc(redirect_uri),
        state = esc(state),
    );
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}

fn login(shared: &Shared, form: &[(String, String)]) -> Resp {
    let (Some(user), Some(redirect_uri), Some(state)) = (
        param(form, "user_id"),
        param(form, "redirect_uri"),
        param(form, "state"),
    ) else {
        return error_page("LG.OAUTH.EC.4001: Invalid parameter");
    };
    let Ok(mut target) = url::Url::parse(redirect_uri) else {
        return error_page("Mismatching Redirect URI Error");
    };
    let code = random_token();
    let backend_url = format!("http://{}/emp-backend/kr/", shared.addr);
    shared.state().codes.insert(
        code.clone(),
        Grant {
            user: user.to_string(),
            redirect_uri: redirect_uri.to_string(),
            backend_url: backend_url.clone(),
            used: false,
        },
    );
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state)
        .append_pair("backend_url", &backend_url);
    let mut r = respond(StatusCode::FOUND, "text/plain", "");
    if let Ok(loc) = http::HeaderValue::try_from(target.as_str()) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

async fn token(shared: &Shared, q: &[(String, String)], body: &str) -> Resp {
    {
        let mut st = shared.state();
        if st.down {
            return json_resp(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"message": "EMP is down"}),
            );
        }
        if let Some((status, body)) = st.queued_errors.pop_front() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            // Some IdPs echo what they were sent in their error messages.
            let echo = |text: String, name: &str| match param(q, name) {
                Some(value) => text.replace(&format!("{{{name}}}"), value),
                None => text,
            };
            let body = echo(echo(body, "refresh_token"), "code");
            return respond(status, "application/json", body);
        }
    }
    // The DR spec passes every token parameter in the query string.
    if param(q, "grant_type").is_none() && !body.is_empty() {
        return emp_error(
            "LG.OAUTH.EC.4001",
            "Invalid parameter: expected in the query string",
        );
    }
    if param(q, "client_id") != Some(shared.options.client_id.as_str()) {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "App_id Fail");
    }
    match param(q, "grant_type") {
        Some("authorization_code") => code_grant(shared, q),
        Some("refresh_token") => refresh_grant(shared, q).await,
        _ => emp_error("LG.OAUTH.EC.4001", "Invalid parameter: grant_type"),
    }
}

/// A new access token for `user` and its lifetime.
fn issue_access_token(shared: &Shared, st: &mut State, user: &str) -> (String, Duration) {
    let at = format!("emp-at-{}", random_token());
    let lifetime = st.token_lifetime.unwrap_or(shared.options.token_lifetime);
    st.access_tokens
        .insert(at.clone(), (user.to_string(), Instant::now() + lifetime));
    (at, lifetime)
}

fn code_grant(shared: &Shared, q: &[(String, String)]) -> Resp {
    let mut st = shared.state();
    let Some(grant) = param(q, "code").and_then(|c| st.codes.get_mut(c)) else {
        return emp_error("LG.OAUTH.EC.4001", "OAuth2 processing error: unknown code");
    };
    if grant.used {
        return emp_error(
            "LG.OAUTH.EC.4001",
            "OAuth2 processing error: code already used",
        );
    }
    grant.used = true;
    if param(q, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return emp_error("LG.OAUTH.EC.4001", "Mismatching Redirect URI");
    }
    if param(q, "backend_url") != Some(grant.backend_url.as_str()) {
        return emp_error("LG.OAUTH.EC.4001", "Invalid parameter: backend_url");
    }
    let user = grant.user.clone();
    let backend = grant.backend_url.clone();
    match user.as_str() {
        "country-blocked" => {
            return emp_error(
                "LG.OAUTH.EC.4030",
                "This service is not currently supported in your country.",
            );
        }
        "no-agreement" => {
            return emp_error(
                "LG.OAUTH.EC.4031",
                "The user didn't agree to the terms of a third party agreement",
            );
        }
        _ => {}
    }
    let (at, lifetime) = issue_access_token(shared, &mut st, &user);
    let rt = format!("emp-rt-{}", random_token());
    st.refresh_tokens.insert(rt.clone(), user);
    json_resp(
        StatusCode::OK,
        json!({
            "access_token": at,
            "expires_in": lifetime.as_secs().to_string(),
            "refresh_token": rt,
            "oauth2_backend_url": backend,
        }),
    )
}

async fn refresh_grant(shared: &Shared, q: &[(String, String)]) -> Resp {
    let delay = shared.state().refresh_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = shared.state();
    let Some(user) = param(q, "refresh_token")
        .and_then(|rt| st.refresh_tokens.get(rt))
        .cloned()
    else {
        return emp_error(
            "LG.OAUTH.EC.4001",
            "OAuth2 processing error: invalid refresh_token",
        );
    };
    st.refreshes += 1;
    let (at, lifetime) = issue_access_token(shared, &mut st, &user);
    if st.rotate {
        if let Some(old) = param(q, "refresh_token") {
            st.refresh_tokens.remove(old);
        }
        let rt = format!("emp-rt-{}", random_token());
        st.refresh_tokens.insert(rt.clone(), user);
        return json_resp(
            StatusCode::OK,
            json!({
                "access_token": at,
                "expires_in": lifetime.as_secs().to_string(),
                "refresh_token": rt,
            }),
        );
    }
    // As documented: no refresh_token in a refresh answer.
    json_resp(
        StatusCode::OK,
        json!({
            "access_token": at,
            "expires_in": lifetime.as_secs().to_string(),
        }),
    )
}

fn profile(shared: &Shared, auth: Option<&http::HeaderValue>) -> Resp {
    let token = auth
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let st = shared.state();
    match token.and_then(|t| st.access_tokens.get(t)) {
        Some((user, exp)) if Instant::now() < *exp => json_resp(
            StatusCode::OK,
            json!({
                "sub": user,
                "user_id": user,
                "email": format!("{user}@example.com"),
                "name": format!("User {user}"),
                "country": "KR",
            }),
        ),
        _ => json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"code": "LG.OAUTH.EC.4010", "message": "invalid access token"}),
        ),
    }
}
