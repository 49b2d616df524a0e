//! UPBOND Login 3.0 and any OpenID Connect provider.
//!
//! One implementation, two flavours:
//! - **oidc**: endpoints and issuer from `{base}/.well-known/openid-configuration`
//!   (read at first use, again after `provider.discovery_refresh`, and after
//!   a failure no sooner than [`RETRY_AFTER_FAILURE`], the last good copy
//!   serving meanwhile); client authentication `client_secret_basic` by default.
//! - **upbond**: the same, but when discovery is unavailable the endpoints
//!   of UPBOND's document are used (`/authorize`, `/oauth/token`,
//!   `/.well-known/jwks.json`); the token request is form-encoded with
//!   `client_secret` (`client_secret_post`); `audience` goes to authorize.
//!
//! Every login sends `state`, a `nonce` and a PKCE S256 challenge. The
//! id_token of the code exchange is verified (see `jwks.rs`) before any of
//! its claims is used; a refreshed id_token is verified too and must name the
//! same subject. Keys are cached; a `kid` the cache does not know makes it
//! re-read the JWKS, at most once per [`JWKS_MIN_REFETCH`], so a provider's
//! key rotation needs no restart and a stream of forged `kid`s cannot turn
//! the sidecar into a JWKS flooder.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use url::Url;

use super::jwks::{self, Expect, KeySet, TokenHeader};
use super::{
    BearerRefusal, BoxFuture, Callback, Endpoint, IdTokenFailure, IdpError, LoginRequest,
    LogoutToken, Provider, TokenSet, call, endpoint, token_set, wire,
};
use crate::config::{ProviderConfig, ProviderKind, Secret, TokenAuthMethod};
use crate::metrics::Metrics;

/// After a failed discovery, the next attempt waits this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The JWKS is re-read for an unknown `kid` at most this often.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// What the sidecar needs of the provider's metadata.
#[derive(Debug)]
struct Metadata {
    /// Accepted `iss` values: the discovery document's `issuer`; without
    /// discovery (UPBOND), the configured base URL with and without its
    /// trailing slash.
    issuers: Vec<String>,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
    userinfo_endpoint: Option<Url>,
    /// OpenID Connect RP-Initiated Logout 1.0, when announced.
    end_session_endpoint: Option<Url>,
    algorithms: Vec<Algorithm>,
}

struct CachedMetadata {
    metadata: Arc<Metadata>,
    until: Instant,
}

struct CachedKeys {
    keys: Arc<KeySet>,
    uri: Option<Url>,
    fetched: Option<Instant>,
}

pub struct Oidc {
    kind: ProviderKind,
    base: Url,
    client_id: String,
    /// Replaced by a reload (`SIGHUP`).
    client_secret: ArcSwap<String>,
    auth_method: TokenAuthMethod,
    redirect_uri: String,
    scope: String,
    audience: String,
    userinfo: bool,
    leeway: Duration,
    discovery_refresh: Duration,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    metadata: RwLock<Option<CachedMetadata>>,
    metadata_turn: tokio::sync::Mutex<()>,
    keys: Mutex<CachedKeys>,
    keys_turn: tokio::sync::Mutex<()>,
}

fn invalid(endpoint: Endpoint, reason: impl Into<String>) -> IdpError {
    IdpError::InvalidResponse {
        endpoint,
        reason: reason.into(),
    }
}

/// The scopes to ask for: the configured ones, or a default, always with `openid`.
fn scopes(kind: ProviderKind, configured: &str) -> String {
    let mut list: Vec<&str> = configured.split_whitespace().collect();
    if list.is_empty() {
        list = match kind {
            // offline_access: UPBOND sends a refresh token only when asked.
            ProviderKind::Upbond => vec!["openid", "profile", "email", "offline_access"],
            _ => vec!["openid", "profile", "email"],
        };
    }
    if !list.contains(&"openid") {
        list.insert(0, "openid");
    }
    list.join(" ")
}

fn client_secret_text(secret: Option<&Secret>) -> Result<String, String> {
    secret
        .map(|s| String::from_utf8(s.expose().to_vec()))
        .transpose()
        .map_err(|_| "provider.client_secret: must be UTF-8 text".to_string())
        .map(Option::unwrap_or_default)
}

impl Oidc {
    pub fn new(
        cfg: &ProviderConfig,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Oidc, String> {
        let client_secret = client_secret_text(cfg.client_secret.as_ref())?;
        Ok(Oidc {
            kind: cfg.kind,
            base: cfg.base_url.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: ArcSwap::from_pointee(client_secret),
            auth_method: cfg.token_auth_method,
            redirect_uri: cfg.redirect_url.to_string(),
            scope: scopes(cfg.kind, &cfg.scope),
            audience: cfg.audience.clone(),
            userinfo: cfg.userinfo,
            leeway: cfg.leeway,
            discovery_refresh: cfg.discovery_refresh,
            http,
            metrics,
            metadata: RwLock::new(None),
            metadata_turn: tokio::sync::Mutex::new(()),
            keys: Mutex::new(CachedKeys {
                keys: Arc::new(KeySet::default()),
                uri: None,
                fetched: None,
            }),
            keys_turn: tokio::sync::Mutex::new(()),
        })
    }

    fn cached_metadata(&self, now: Instant) -> Option<Arc<Metadata>> {
        let guard = self.metadata.read().ok()?;
        let cached = guard.as_ref()?;
        (cached.until > now).then(|| cached.metadata.clone())
    }

    fn store_metadata(&self, metadata: Arc<Metadata>, until: Instant) {
        if let Ok(mut guard) = self.metadata.write() {
            *guard = Some(CachedMetadata { metadata, until });
        }
    }

    /// The provider's metadata: cached, re-read on schedule, the last good
    /// copy kept through a failed re-read.
    async fn metadata(&self) -> Result<Arc<Metadata>, IdpError> {
        if let Some(m) = self.cached_metadata(Instant::now()) {
            return Ok(m);
        }
        let _turn = self.metadata_turn.lock().await;
        if let Some(m) = self.cached_metadata(Instant::now()) {
            return Ok(m);
        }
        match self.discover().await {
            Ok(m) => {
                let m = Arc::new(m);
                self.store_metadata(m.clone(), Instant::now() + self.discovery_refresh);
                Ok(m)
            }
            Err(e) => {
                let retry = Instant::now() + RETRY_AFTER_FAILURE;
                let stale = self
                    .metadata
                    .read()
                    .ok()
                    .and_then(|g| g.as_ref().map(|c| c.metadata.clone()));
                if let Some(stale) = stale {
                    tracing::warn!(error = %crate::error::chain(&e), "OpenID discovery failed; keeping the previous metadata");
                    self.store_metadata(stale.clone(), retry);
                    return Ok(stale);
                }
                if self.kind == ProviderKind::Upbond {
                    tracing::warn!(error = %crate::error::chain(&e), "UPBOND discovery unavailable; using the documented endpoints");
                    let m = Arc::new(self.upbond_defaults());
                    self.store_metadata(m.clone(), retry);
                    return Ok(m);
                }
                tracing::warn!(error = %crate::error::chain(&e), "OpenID discovery failed");
                Err(e)
            }
        }
    }

    fn upbond_defaults(&self) -> Metadata {
        let plain = self.base.as_str().trim_end_matches('/').to_string();
        Metadata {
            issuers: vec![format!("{plain}/"), plain],
            authorization_endpoint: endpoint(&self.base, "/authorize"),
            token_endpoint: endpoint(&self.base, "/oauth/token"),
            jwks_uri: endpoint(&self.base, "/.well-known/jwks.json"),
            userinfo_endpoint: Some(endpoint(&self.base, "/userinfo")),
            // Without discovery nothing says where it would be.
            end_session_endpoint: None,
            // No document to restrict them: the published keys decide.
            algorithms: jwks::ACCEPTED.to_vec(),
        }
    }

    async fn discover(&self) -> Result<Metadata, IdpError> {
        const E: Endpoint = Endpoint::Discovery;
        let url = endpoint(&self.base, "/.well-known/openid-configuration");
        let doc = call(&self.metrics, E, self.http.get(url), &[]).await?;
        let issuer = wire::string(&doc, "issuer").ok_or_else(|| invalid(E, "no issuer"))?;
        // OpenID Connect Discovery 4.3: the issuer must be the one asked
        // (a trailing slash either side is tolerated, as Auth0-style issuers have one).
        if issuer.trim_end_matches('/') != self.base.as_str().trim_end_matches('/') {
            return Err(invalid(
                E,
                format!("the document's issuer {issuer:?} is not provider.base_url"),
            ));
        }
        let url_of = |key: &str| -> Result<Url, IdpError> {
            let text = wire::string(&doc, key).ok_or_else(|| invalid(E, format!("no {key}")))?;
            let url = Url::parse(&text).map_err(|_| invalid(E, format!("{key} is not a URL")))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(invalid(E, format!("{key} is not an http(s) URL")));
            }
            Ok(url)
        };
        let algorithms = match doc.get("id_token_signing_alg_values_supported") {
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|n| n.parse::<Algorithm>().ok())
                .filter(|a| jwks::ACCEPTED.contains(a))
                .collect(),
            // A document without the (required) list: the OIDC default.
            _ => vec![Algorithm::RS256],
        };
        Ok(Metadata {
            issuers: vec![issuer],
            authorization_endpoint: url_of("authorization_endpoint")?,
            token_endpoint: url_of("token_endpoint")?,
            jwks_uri: url_of("jwks_uri")?,
            userinfo_endpoint: url_of("userinfo_endpoint").ok(),
            end_session_endpoint: url_of("end_session_endpoint").ok(),
            algorithms,
        })
    }

    /// The key set that can verify `header`, re-reading the JWKS when the
    /// token names a key the cache does not hold (rate-limited).
    async fn keys_for(
        &self,
        meta: &Metadata,
        header: &TokenHeader,
    ) -> Result<Arc<KeySet>, IdpError> {
        let current = |me: &Self| -> (Arc<KeySet>, bool, bool) {
            match me.keys.lock() {
                Ok(c) => {
                    let same_uri = c.uri.as_ref() == Some(&meta.jwks_uri);
                    let may_fetch =
                        !same_uri || c.fetched.is_none_or(|at| at.elapsed() >= JWKS_MIN_REFETCH);
                    (c.keys.clone(), same_uri, may_fetch)
                }
                Err(_) => (Arc::new(KeySet::default()), false, true),
            }
        };
        let (keys, same_uri, _) = current(self);
        if same_uri && keys.has_key_for(header) {
            return Ok(keys);
        }
        let _turn = self.keys_turn.lock().await;
        let (keys, same_uri, may_fetch) = current(self);
        if same_uri && keys.has_key_for(header) {
            return Ok(keys);
        }
        if !may_fetch {
            // Read moments ago and the key was not there: it does not exist.
            return Ok(keys);
        }
        let doc = call(
            &self.metrics,
            Endpoint::Jwks,
            self.http.get(meta.jwks_uri.clone()),
            &[],
        )
        .await;
        let fetched = doc
            .and_then(|doc| KeySet::parse(&doc).map_err(|reason| invalid(Endpoint::Jwks, reason)));
        let mut cache = self
            .keys
            .lock()
            .map_err(|_| invalid(Endpoint::Jwks, "key cache poisoned"))?;
        cache.fetched = Some(Instant::now());
        match fetched {
            Ok(set) => {
                tracing::info!(keys = set.len(), "read the provider's signing keys");
                cache.keys = Arc::new(set);
                cache.uri = Some(meta.jwks_uri.clone());
                Ok(cache.keys.clone())
            }
            // The provider is down: keep what we have; a token it signed
            // with a known key still verifies.
            Err(e) if same_uri && !cache.keys.is_empty() => {
                tracing::warn!(error = %crate::error::chain(&e), "re-reading the JWKS failed");
                Ok(cache.keys.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies an id_token; a failure is counted by reason.
    async fn verify(
        &self,
        meta: &Metadata,
        endpoint: Endpoint,
        token: &str,
        nonce: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Value, IdpError> {
        let header =
            jwks::header(token, &meta.algorithms).map_err(|r| self.refused(endpoint, r))?;
        let keys = self.keys_for(meta, &header).await?;
        let expect = Expect {
            issuers: &meta.issuers,
            audiences: &[&self.client_id],
            azp: Some(&self.client_id),
            nonce,
            subject,
            require_sub: true,
            leeway_secs: self.leeway.as_secs(),
            now: jsonwebtoken::get_current_timestamp(),
        };
        jwks::verify(token, &header, &keys, &expect).map_err(|r| self.refused(endpoint, r))
    }

    fn refused(&self, endpoint: Endpoint, reason: IdTokenFailure) -> IdpError {
        self.metrics.id_token_failure(reason);
        IdpError::InvalidIdToken { endpoint, reason }
    }

    /// A form-encoded token request with the configured client authentication.
    async fn token_request(
        &self,
        endpoint: Endpoint,
        meta: &Metadata,
        mut form: Vec<(&str, &str)>,
    ) -> Result<Value, IdpError> {
        let client_secret = self.client_secret.load_full();
        let client_secret = client_secret.as_str();
        let mut req = self
            .http
            .post(meta.token_endpoint.clone())
            .header(header::ACCEPT, "application/json");
        match self.auth_method {
            TokenAuthMethod::ClientSecretPost => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", client_secret));
            }
            TokenAuthMethod::ClientSecretBasic => {
                // RFC 6749 2.3.1: both parts form-urlencoded before Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.client_id), Some(enc(client_secret)));
            }
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| invalid(endpoint, format!("cannot encode the request: {e}")))?;
        let req = req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        // Everything but the grant type and the redirect URI is secret.
        let secrets: Vec<&str> = form
            .iter()
            .filter(|(k, _)| !matches!(*k, "grant_type" | "redirect_uri" | "client_id"))
            .map(|(_, v)| *v)
            .chain([client_secret])
            .collect();
        call(&self.metrics, endpoint, req, &secrets).await
    }

    /// Userinfo claims over the id_token's (OpenID Connect Core 5.3.2: its
    /// `sub` must be the id_token's).
    async fn merge_userinfo(
        &self,
        meta: &Metadata,
        access_token: &str,
        claims: &mut Value,
    ) -> Result<(), IdpError> {
        const E: Endpoint = Endpoint::Userinfo;
        let url = meta.userinfo_endpoint.clone().ok_or_else(|| {
            invalid(
                E,
                "provider.userinfo is on but the provider has no userinfo_endpoint",
            )
        })?;
        let info = call(
            &self.metrics,
            E,
            self.http.get(url).bearer_auth(access_token),
            &[access_token],
        )
        .await?;
        let Value::Object(info) = info else {
            return Err(invalid(E, "userinfo is not a JSON object"));
        };
        if info.get("sub") != claims.get("sub") {
            return Err(invalid(
                E,
                "userinfo names another subject than the id_token",
            ));
        }
        if let Value::Object(claims) = claims {
            claims.extend(info);
        }
        Ok(())
    }
}

/// The `events` member a logout token must carry.
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Provider for Oidc {
    fn verify_logout_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<LogoutToken, BearerRefusal>> {
        Box::pin(async move {
            let unavailable = |e| BearerRefusal::Unavailable(Arc::new(e));
            let invalid = |why: &str| BearerRefusal::Invalid(why.to_string());
            let meta = self.metadata().await.map_err(unavailable)?;
            let header = jwks::header(token, &meta.algorithms).map_err(|r| invalid(r.as_str()))?;
            let keys = self.keys_for(&meta, &header).await.map_err(unavailable)?;
            let expect = Expect {
                issuers: &meta.issuers,
                audiences: &[&self.client_id],
                azp: None,
                nonce: None,
                subject: None,
                require_sub: false,
                leeway_secs: self.leeway.as_secs(),
                now: jsonwebtoken::get_current_timestamp(),
            };
            let claims =
                jwks::verify(token, &header, &keys, &expect).map_err(|r| invalid(r.as_str()))?;
            // Back-Channel Logout 1.0, 2.6: an event, no nonce (it could
            // pass for an id_token otherwise), a sid or a sub, a jti.
            if claims.get("nonce").is_some() {
                return Err(invalid("a logout token carries no nonce"));
            }
            if !claims
                .get("events")
                .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
                .is_some_and(Value::is_object)
            {
                return Err(invalid("no back-channel logout event"));
            }
            let sid = wire::string(&claims, "sid");
            let sub = wire::string(&claims, "sub");
            if sid.is_none() && sub.is_none() {
                return Err(invalid("neither sid nor sub"));
            }
            let jti = wire::string(&claims, "jti").ok_or_else(|| invalid("no jti"))?;
            let exp = claims
                .get("exp")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            Ok(LogoutToken { sid, sub, jti, exp })
        })
    }

    fn verify_bearer<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Value, BearerRefusal>> {
        Box::pin(async move {
            let unavailable = |e| BearerRefusal::Unavailable(Arc::new(e));
            let invalid = |r: IdTokenFailure| BearerRefusal::Invalid(r.as_str().to_string());
            let meta = self.metadata().await.map_err(unavailable)?;
            let header = jwks::header(token, &meta.algorithms).map_err(invalid)?;
            let keys = self.keys_for(&meta, &header).await.map_err(unavailable)?;
            // An access token: for one of our audiences, from the issuer,
            // in date; no nonce, and its azp is the calling client's.
            let expect = Expect {
                issuers: &meta.issuers,
                audiences,
                azp: None,
                nonce: None,
                subject: None,
                require_sub: true,
                leeway_secs: self.leeway.as_secs(),
                now: jsonwebtoken::get_current_timestamp(),
            };
            jwks::verify(token, &header, &keys, &expect).map_err(invalid)
        })
    }

    fn end_session<'a>(
        &'a self,
        id_token: Option<&'a str>,
        post_logout: &'a str,
    ) -> BoxFuture<'a, Option<Url>> {
        Box::pin(async move {
            // Discovery down: the local sign-out still happens.
            let mut url = self.metadata().await.ok()?.end_session_endpoint.clone()?;
            {
                let mut q = url.query_pairs_mut();
                if let Some(hint) = id_token {
                    q.append_pair("id_token_hint", hint);
                }
                q.append_pair("post_logout_redirect_uri", post_logout);
                q.append_pair("client_id", &self.client_id);
            }
            Some(url)
        })
    }

    fn set_client_secret(&self, secret: Option<&Secret>) -> Result<(), String> {
        self.client_secret
            .store(Arc::new(client_secret_text(secret)?));
        Ok(())
    }

    fn authorize_url<'a>(
        &'a self,
        login: &'a LoginRequest,
    ) -> BoxFuture<'a, Result<Url, IdpError>> {
        Box::pin(async move {
            let meta = self.metadata().await?;
            let mut url = meta.authorization_endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                if !self.audience.is_empty() {
                    q.append_pair("audience", &self.audience);
                }
                q.append_pair("scope", &self.scope)
                    .append_pair("response_type", "code")
                    .append_pair("client_id", &self.client_id)
                    .append_pair("redirect_uri", &self.redirect_uri)
                    .append_pair("state", &login.state)
                    .append_pair("nonce", &login.nonce)
                    .append_pair("code_challenge", &login.code_challenge())
                    .append_pair("code_challenge_method", "S256");
            }
            Ok(url)
        })
    }

    fn login<'a>(
        &'a self,
        callback: &'a Callback,
    ) -> BoxFuture<'a, Result<(TokenSet, Value), IdpError>> {
        Box::pin(async move {
            let meta = self.metadata().await?;
            let form = vec![
                ("grant_type", "authorization_code"),
                ("code", callback.code.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("code_verifier", callback.code_verifier.as_str()),
            ];
            let answer = self.token_request(Endpoint::Token, &meta, form).await?;
            let set = token_set(Endpoint::Token, &answer)?;
            let Some(id_token) = wire::string(&answer, "id_token") else {
                return Err(self.refused(Endpoint::Token, IdTokenFailure::Missing));
            };
            let mut claims = self
                .verify(
                    &meta,
                    Endpoint::Token,
                    &id_token,
                    Some(&callback.nonce),
                    None,
                )
                .await?;
            if self.userinfo {
                self.merge_userinfo(&meta, &set.access_token, &mut claims)
                    .await?;
            }
            Ok((set, claims))
        })
    }

    fn refresh<'a>(
        &'a self,
        refresh_token: &'a str,
        subject: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenSet, IdpError>> {
        Box::pin(async move {
            let meta = self.metadata().await?;
            let form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ];
            let answer = self.token_request(Endpoint::Refresh, &meta, form).await?;
            let mut set = token_set(Endpoint::Refresh, &answer)?;
            // A refresh answer need not carry an id_token; when it does, it
            // must verify and name the same user (OpenID Connect Core 12.2),
            // and its claims replace the session's (a group removed at the
            // provider is gone from the next refresh on).
            if let Some(id_token) = wire::string(&answer, "id_token") {
                let mut claims = self
                    .verify(&meta, Endpoint::Refresh, &id_token, None, subject)
                    .await?;
                if self.userinfo {
                    self.merge_userinfo(&meta, &set.access_token, &mut claims)
                        .await?;
                }
                set.claims = Some(claims);
            }
            Ok(set)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_always_include_openid() {
        assert_eq!(
            scopes(ProviderKind::Upbond, ""),
            "openid profile email offline_access"
        );
        assert_eq!(scopes(ProviderKind::Oidc, ""), "openid profile email");
        assert_eq!(
            scopes(ProviderKind::Oidc, "email  groups"),
            "openid email groups"
        );
        assert_eq!(
            scopes(ProviderKind::Oidc, "profile openid"),
            "profile openid"
        );
    }
}
