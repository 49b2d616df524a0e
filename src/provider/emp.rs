//! LG EMP, as its call-sequence and v1 DR documents describe it:
//! - authorize: `GET {base}/authorize?response_type=code&client_id&redirect_uri&state`;
//! - token: `POST {base}/token` with every parameter in the query string
//!   (`grant_type=authorization_code&code&client_id&redirect_uri&backend_url`),
//!   `backend_url` being the one the callback brought;
//! - refresh: `POST {base}/token?client_id&refresh_token&grant_type=refresh_token`,
//!   answered without a `refresh_token` (the old one stays valid);
//! - `expires_in` as a string or a number; `oauth2_backend_url` in the first answer;
//! - DR services only: `GET {base}/profile` with `Authorization: Bearer`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use url::Url;

use super::{BoxFuture, Callback, Endpoint, IdpError, LoginRequest, Provider, TokenSet, wire};
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

/// `{base}/name`, keeping any path the base URL has.
fn endpoint(base: &Url, name: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{name}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url
}

impl Emp {
    pub fn new(cfg: &ProviderConfig, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            authorize: endpoint(&cfg.base_url, "authorize"),
            token: endpoint(&cfg.base_url, "token"),
            profile: cfg.profile.then(|| endpoint(&cfg.base_url, "profile")),
            client_id: cfg.client_id.clone(),
            redirect_uri: cfg.redirect_url.to_string(),
            http,
            metrics,
        }
    }

    /// One IdP call: timed, its answer sorted into success (a JSON value) or
    /// an [`IdpError`]. Errors never carry the URL, whose query may hold a
    /// code or a refresh token.
    async fn call(
        &self,
        endpoint: Endpoint,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, IdpError> {
        let start = Instant::now();
        let result = async {
            let resp = req.send().await.map_err(|e| transport(endpoint, e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
            Ok::<_, IdpError>((status, body))
        }
        .await;
        self.metrics
            .observe_idp(endpoint, start.elapsed().as_secs_f64());
        let (status, body) = result?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| IdpError::InvalidResponse {
                endpoint,
                reason: format!("not JSON: {e}"),
            });
        }
        if status.is_client_error() {
            let (code, message) = wire::error_details(&body);
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

    fn token_url(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.token.clone();
        url.query_pairs_mut().extend_pairs(params);
        url
    }
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

/// A token answer: `access_token` is required, the rest is lenient.
fn token_set(endpoint: Endpoint, v: &Value) -> Result<TokenSet, IdpError> {
    let invalid = |reason: String| IdpError::InvalidResponse { endpoint, reason };
    let access_token =
        wire::string(v, "access_token").ok_or_else(|| invalid("no access_token".into()))?;
    Ok(TokenSet {
        access_token,
        refresh_token: wire::string(v, "refresh_token"),
        expires_in: wire::expires_in(v.get("expires_in")).map_err(invalid)?,
        backend_url: wire::string(v, "oauth2_backend_url"),
    })
}

impl Provider for Emp {
    fn authorize_url(&self, login: &LoginRequest) -> Url {
        let mut url = self.authorize.clone();
        // Url percent-encodes the values as UTF-8, as the DR spec asks of redirect_uri.
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("state", &login.state);
        url
    }

    fn exchange<'a>(&'a self, callback: &'a Callback) -> BoxFuture<'a, Result<TokenSet, IdpError>> {
        Box::pin(async move {
            let mut params = vec![
                ("grant_type", "authorization_code"),
                ("code", callback.code.as_str()),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
            ];
            if let Some(backend) = &callback.backend_url {
                params.push(("backend_url", backend.as_str()));
            }
            let v = self
                .call(Endpoint::Token, self.http.post(self.token_url(&params)))
                .await?;
            token_set(Endpoint::Token, &v)
        })
    }

    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Result<TokenSet, IdpError>> {
        Box::pin(async move {
            let params = [
                ("client_id", self.client_id.as_str()),
                ("refresh_token", refresh_token),
                ("grant_type", "refresh_token"),
            ];
            let v = self
                .call(Endpoint::Refresh, self.http.post(self.token_url(&params)))
                .await?;
            token_set(Endpoint::Refresh, &v)
        })
    }

    fn claims<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<Value, IdpError>> {
        Box::pin(async move {
            let Some(url) = &self.profile else {
                // ThinQ Connect services have no profile endpoint.
                return Ok(Value::Object(Default::default()));
            };
            let req = self.http.get(url.clone()).bearer_auth(&tokens.access_token);
            let v = self.call(Endpoint::Profile, req).await?;
            if v.is_object() {
                Ok(v)
            } else {
                Err(IdpError::InvalidResponse {
                    endpoint: Endpoint::Profile,
                    reason: "profile is not a JSON object".into(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path() {
        let base = Url::parse("https://emp.example/lg/v1/").unwrap();
        assert_eq!(
            endpoint(&base, "token").as_str(),
            "https://emp.example/lg/v1/token"
        );
        let base = Url::parse("https://emp.example").unwrap();
        assert_eq!(
            endpoint(&base, "authorize").as_str(),
            "https://emp.example/authorize"
        );
    }

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
