//! A mock UPBOND Login 3.0, following `upbond-login3-authorization-code.txt`:
//! - `GET /authorize?audience&scope&response_type=code&client_id&redirect_uri&state`
//!   (+ the `nonce` and PKCE S256 challenge the sidecar adds) answers `302`
//!   to `redirect_uri?code=…&state=…` (the user is taken as signed in);
//! - `POST /oauth/token`, form-encoded, `grant_type=authorization_code` with
//!   `client_id`, `client_secret`, `code`, `redirect_uri` (+ `code_verifier`),
//!   or `grant_type=refresh_token`; answers `access_token`, `refresh_token`,
//!   `id_token`, `token_type`, numeric `expires_in`;
//! - `GET /.well-known/jwks.json`: the RS256 signing key;
//! - no discovery document (404), as the sidecar must then use the
//!   documented endpoints.
//!
//! The issuer is Auth0-style, with a trailing slash. A test can make the
//! next id_tokens fail one verification check ([`Fault`]), and reads every
//! request the mock received.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "upbond-client";
pub const CLIENT_SECRET: &str = "upbond-secret";
pub const AUDIENCE: &str = "https://api.example.com/";

/// One verification check the next id_tokens are built to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Signed by a key the JWKS does not publish, under the published kid.
    Signature,
    Audience,
    Issuer,
    Expired,
    Nonce,
    /// A kid the JWKS does not have.
    UnknownKey,
    /// Two audiences and no `azp`.
    AuthorizedParty,
    /// `iat` an hour ahead.
    NotYetValid,
    /// `alg: none`, no signature.
    AlgorithmNone,
    /// HS256 with the client secret as key (the classic confusion attack).
    AlgorithmHmac,
    /// No id_token in the token answer.
    Missing,
}

/// What `/.well-known/openid-configuration` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// 404, as UPBOND's document describes no discovery.
    Absent,
    /// A document naming this mock's endpoints.
    Served,
    /// 500.
    Failing,
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Query pairs in order.
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// Form pairs in order (POST).
    pub form: Vec<(String, String)>,
}

struct Login {
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
}

struct State {
    issuer: String,
    key: EncodingKey,
    jwk: Value,
    other_key: EncodingKey,
    ec_key: EncodingKey,
    ec_jwk: Value,
    es256: bool,
    discovery: Discovery,
    fault: Fault,
    codes: HashMap<String, Login>,
    seen: Vec<Seen>,
    issued: u64,
    logins: u64,
    expires_in: u64,
    /// Every code, token and id_token handed out.
    secrets: Vec<String>,
}

#[derive(Clone)]
pub struct Upbond {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn rsa_key() -> (EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    (key, jwk)
}

impl Upbond {
    pub async fn start(expires_in: u64) -> Upbond {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (key, mut jwk) = rsa_key();
        jwk["kid"] = json!("upbond-key-1");
        jwk["use"] = json!("sig");
        let (other_key, _) = rsa_key();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec_key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut ec_jwk =
            serde_json::to_value(Jwk::from_encoding_key(&ec_key, Algorithm::ES256).unwrap())
                .unwrap();
        ec_jwk["kid"] = json!("upbond-key-ec");
        let state = Arc::new(Mutex::new(State {
            issuer: format!("http://{addr}/"),
            key,
            jwk,
            other_key,
            ec_key,
            ec_jwk,
            es256: false,
            discovery: Discovery::Absent,
            fault: Fault::None,
            codes: HashMap::new(),
            seen: Vec::new(),
            issued: 0,
            logins: 0,
            expires_in,
            secrets: Vec::new(),
        }));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upbond { addr, state }
    }

    /// The issuer, Auth0-style with a trailing slash; also `provider.base_url`.
    pub fn issuer(&self) -> String {
        self.state.lock().unwrap().issuer.clone()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    pub fn set_discovery(&self, d: Discovery) {
        self.state.lock().unwrap().discovery = d;
    }

    /// Signs the next id_tokens with the P-256 key (ES256) instead of RSA.
    pub fn sign_es256(&self, on: bool) {
        self.state.lock().unwrap().es256 = on;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// What must never be logged: codes, tokens and id_tokens issued, and
    /// the nonces, PKCE verifiers and client secret the sidecar sent.
    pub fn secrets(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut all = st.secrets.clone();
        for s in &st.seen {
            for (k, v) in s.query.iter().chain(&s.form) {
                if ["nonce", "code_challenge", "code_verifier", "client_secret"]
                    .contains(&k.as_str())
                {
                    all.push(v.clone());
                }
            }
        }
        all
    }

    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_reply(status: u16, v: Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: pairs(req.uri().query().unwrap_or("")),
        content_type: header("content-type"),
        authorization: header("authorization"),
        form: Vec::new(),
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if seen.method == "POST" {
        seen.form = pairs(&String::from_utf8_lossy(&body));
    }
    let mut st = state.lock().unwrap();
    st.seen.push(seen.clone());
    let resp = match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/authorize") => authorize(&mut st, &seen),
        ("POST", "/oauth/token") => token(&mut st, &seen),
        ("GET", "/.well-known/openid-configuration") => match st.discovery {
            Discovery::Absent => reply(404, "text/plain", "not found"),
            Discovery::Failing => reply(500, "text/plain", "internal error"),
            Discovery::Served => {
                let iss = st.issuer.clone();
                json_reply(
                    200,
                    json!({
                        "issuer": iss,
                        "authorization_endpoint": format!("{iss}authorize"),
                        "token_endpoint": format!("{iss}oauth/token"),
                        "jwks_uri": format!("{iss}.well-known/jwks.json"),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }),
                )
            }
        },
        ("GET", "/.well-known/jwks.json") => {
            json_reply(200, json!({"keys": [st.jwk.clone(), st.ec_jwk.clone()]}))
        }
        _ => reply(404, "text/plain", "not found"),
    };
    Ok(resp)
}

fn authorize(st: &mut State, seen: &Seen) -> Response<Full<Bytes>> {
    let q = &seen.query;
    if get(q, "response_type") != Some("code") || get(q, "client_id") != Some(CLIENT_ID) {
        return json_reply(400, json!({"error": "invalid_request"}));
    }
    let Some(redirect_uri) = get(q, "redirect_uri") else {
        return json_reply(400, json!({"error": "invalid_request"}));
    };
    st.logins += 1;
    let code = format!("upbond-code-{}", st.logins);
    st.codes.insert(
        code.clone(),
        Login {
            nonce: get(q, "nonce").map(String::from),
            challenge: get(q, "code_challenge").map(String::from),
            redirect_uri: redirect_uri.to_string(),
        },
    );
    st.secrets.push(code.clone());
    let mut back = url::Url::parse(redirect_uri).unwrap();
    back.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = get(q, "state") {
        back.query_pairs_mut().append_pair("state", s);
    }
    Response::builder()
        .status(302)
        .header("location", back.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn token(st: &mut State, seen: &Seen) -> Response<Full<Bytes>> {
    let f = &seen.form;
    if !seen
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return json_reply(
            400,
            json!({"error": "invalid_request", "error_description": "form-encoded body expected"}),
        );
    }
    if get(f, "client_id") != Some(CLIENT_ID) || get(f, "client_secret") != Some(CLIENT_SECRET) {
        return json_reply(
            401,
            json!({"error": "access_denied", "error_description": "Unauthorized"}),
        );
    }
    let nonce = match get(f, "grant_type") {
        Some("authorization_code") => {
            let Some(login) = get(f, "code").and_then(|c| st.codes.remove(c)) else {
                return json_reply(
                    403,
                    json!({"error": "invalid_grant", "error_description": "Invalid authorization code"}),
                );
            };
            if get(f, "redirect_uri") != Some(login.redirect_uri.as_str()) {
                return json_reply(
                    403,
                    json!({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}),
                );
            }
            let verifier_ok = match (&login.challenge, get(f, "code_verifier")) {
                (Some(ch), Some(v)) => {
                    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(v.as_bytes())) == *ch
                }
                (None, None) => true,
                _ => false,
            };
            if !verifier_ok {
                return json_reply(
                    403,
                    json!({"error": "invalid_grant", "error_description": "Failed to verify code verifier"}),
                );
            }
            login.nonce
        }
        Some("refresh_token")
            if get(f, "refresh_token").is_some_and(|r| r.starts_with("upbond-rt-")) =>
        {
            None
        }
        _ => return json_reply(403, json!({"error": "invalid_grant"})),
    };
    st.issued += 1;
    let n = st.issued;
    let mut body = json!({
        "access_token": format!("upbond-at-{n}"),
        "refresh_token": format!("upbond-rt-{n}"),
        "token_type": "Bearer",
        "expires_in": st.expires_in,
    });
    if st.fault != Fault::Missing {
        body["id_token"] = json!(id_token(st, nonce.as_deref()));
    }
    for key in ["access_token", "refresh_token", "id_token"] {
        if let Some(v) = body[key].as_str() {
            st.secrets.push(v.to_string());
        }
    }
    json_reply(200, body)
}

fn id_token(st: &State, nonce: Option<&str>) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": st.issuer,
        "sub": "upbond|user-42",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
        "email": "aiko@example.jp",
        "name": "Aiko",
        "wallet_address": "0x42",
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("upbond-key-1".into());
    let mut key = &st.key;
    if st.es256 {
        header = Header::new(Algorithm::ES256);
        header.kid = Some("upbond-key-ec".into());
        key = &st.ec_key;
    }
    match st.fault {
        Fault::None | Fault::Missing => {}
        Fault::Signature => key = &st.other_key,
        Fault::Audience => claims["aud"] = json!("someone-else"),
        Fault::Issuer => claims["iss"] = json!("https://evil.example/"),
        Fault::Expired => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
        }
        Fault::Nonce => claims["nonce"] = json!("a-nonce-from-another-login"),
        Fault::UnknownKey => header.kid = Some("upbond-key-unknown".into()),
        Fault::AuthorizedParty => claims["aud"] = json!([CLIENT_ID, "another-client"]),
        Fault::NotYetValid => claims["iat"] = json!(now + 3600),
        Fault::AlgorithmNone => {
            let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
            let body = URL_SAFE_NO_PAD.encode(claims.to_string());
            return format!("{head}.{body}.");
        }
        Fault::AlgorithmHmac => {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("upbond-key-1".into());
            let k = EncodingKey::from_secret(CLIENT_SECRET.as_bytes());
            return jsonwebtoken::encode(&h, &claims, &k).unwrap();
        }
    }
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}
