//! LG EMP, as its call-sequence and v1 DR documents describe it:
//! - authorize: `GET {base}/authorize?response_type=code&client_id&redirect_uri&state`;
//! - token: `POST {base}/token` with every parameter in the query string
//!   (`grant_type=authorization_code&code&client_id&redirect_uri&backend_url`),
//!   `backend_url` being the one the callback brought;
//! - refresh: `POST {base}/token?client_id&refresh_token&grant_type=refresh_token`,
//!   answered without a `refresh_token` (the old one stays valid);
//! - `expires_in` as a string or a number; `oauth2_backend_url` in the first answer;
//! - DR services only: `GET {base}/profile` with `Authorization: Bearer`.

use serde_json::Value;
use std::sync::Arc;
use url::Url;

use super::{
    BearerRefusal, BoxFuture, Callback, Endpoint, IdpError, LoginRequest, Provider, TokenSet, call,
    endpoint, token_set,
};
use crate::config::ProviderConfig;
use crate::metrics::Metrics;

pub struct Emp {
    authorize: Url,
    token: Url,
    profile: Option<Url>,
    client_id: String,
    redirect_uri: String,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Emp {
    pub fn new(cfg: &ProviderConfig, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            authorize: endpoint(&cfg.base_url, "/authorize"),
            token: endpoint(&cfg.base_url, "/token"),
            profile: cfg.profile.then(|| endpoint(&cfg.base_url, "/profile")),
            client_id: cfg.client_id.clone(),
            redirect_uri: cfg.redirect_url.to_string(),
            http,
            metrics,
        }
    }

    fn token_url(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.token.clone();
        url.query_pairs_mut().extend_pairs(params);
        url
    }
}

impl Provider for Emp {
    /// EMP's access tokens are opaque: the only check EMP offers is using
    /// one, so a bearer token is accepted when `/profile` answers to it.
    fn verify_bearer<'a>(
        &'a self,
        token: &'a str,
        _audiences: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Value, BearerRefusal>> {
        Box::pin(async move {
            let Some(url) = &self.profile else {
                return Err(BearerRefusal::Invalid(
                    "EMP tokens can be checked only with provider.profile".into(),
                ));
            };
            match self.profile_of(url, token).await {
                Ok(claims) => Ok(claims),
                Err(IdpError::Rejected { status, .. }) => Err(BearerRefusal::Invalid(format!(
                    "the profile endpoint refused the token ({status})"
                ))),
                Err(e) => Err(BearerRefusal::Unavailable(std::sync::Arc::new(e))),
            }
        })
    }

    fn authorize_url<'a>(
        &'a self,
        login: &'a LoginRequest,
    ) -> BoxFuture<'a, Result<Url, IdpError>> {
        let mut url = self.authorize.clone();
        // Url percent-encodes the values as UTF-8, as the DR spec asks of redirect_uri.
        // EMP knows neither nonce nor PKCE: its authorize request is exactly this.
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("state", &login.state);
        Box::pin(std::future::ready(Ok(url)))
    }

    fn login<'a>(
        &'a self,
        callback: &'a Callback,
    ) -> BoxFuture<'a, Result<(TokenSet, Value), IdpError>> {
        Box::pin(async move {
            let set = self.exchange(callback).await?;
            let claims = self.claims(&set).await?;
            Ok((set, claims))
        })
    }

    fn refresh<'a>(
        &'a self,
        refresh_token: &'a str,
        _subject: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenSet, IdpError>> {
        Box::pin(async move {
            let params = [
                ("client_id", self.client_id.as_str()),
                ("refresh_token", refresh_token),
                ("grant_type", "refresh_token"),
            ];
            let req = self.http.post(self.token_url(&params));
            let v = call(&self.metrics, Endpoint::Refresh, req, &[refresh_token]).await?;
            token_set(Endpoint::Refresh, &v)
        })
    }
}

impl Emp {
    async fn exchange(&self, callback: &Callback) -> Result<TokenSet, IdpError> {
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", callback.code.as_str()),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
        ];
        if let Some(backend) = &callback.backend_url {
            params.push(("backend_url", backend.as_str()));
        }
        let req = self.http.post(self.token_url(&params));
        let v = call(&self.metrics, Endpoint::Token, req, &[&callback.code]).await?;
        token_set(Endpoint::Token, &v)
    }

    async fn claims(&self, tokens: &TokenSet) -> Result<Value, IdpError> {
        let Some(url) = &self.profile else {
            // ThinQ Connect services have no profile endpoint.
            return Ok(Value::Object(Default::default()));
        };
        self.profile_of(url, &tokens.access_token).await
    }

    /// `GET {base}/profile` with the access token.
    async fn profile_of(&self, url: &Url, access_token: &str) -> Result<Value, IdpError> {
        let req = self.http.get(url.clone()).bearer_auth(access_token);
        let v = call(&self.metrics, Endpoint::Profile, req, &[access_token]).await?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(IdpError::InvalidResponse {
                endpoint: Endpoint::Profile,
                reason: "profile is not a JSON object".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_with_string_expiry_and_without_refresh_token() {
        let v = serde_json::json!({"access_token": "a", "expires_in": "3600", "oauth2_backend_url": "https://b/"});
        let t = token_set(Endpoint::Token, &v).unwrap();
        assert_eq!(t.expires_in.as_secs(), 3600);
        assert_eq!(t.refresh_token, None);
        assert_eq!(t.backend_url.as_deref(), Some("https://b/"));
        assert!(token_set(Endpoint::Token, &serde_json::json!({"expires_in": 1})).is_err());
    }
}
