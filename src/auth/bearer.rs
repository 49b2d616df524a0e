//! API clients that send their own token (`[bearer]`) instead of a session
//! cookie. A JWT is checked by the provider whose issuer it names (the
//! configured one, or a `bearer.extra_issuers` entry) with the same code as
//! id_tokens: signature from the JWKS, `iss`, `aud` in the accepted
//! audiences, `exp`/`nbf` with leeway; no email or nonce is needed. EMP's
//! tokens are opaque: one is accepted when EMP's `/profile` answers to it.
//! A token is never stored as a session; what it says is cached under a
//! hash of it (never the token itself), until its `exp` (a JWT) or for
//! `bearer.opaque_cache` (EMP, refusals too, so random tokens cannot make
//! the sidecar ask EMP once each), so a client reusing its token costs a
//! map lookup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::metrics::{BearerResult, Metrics};
use crate::provider::{BearerIssuer, BearerRefusal};
use crate::session::{IdentityRules, Profile, TokenHeaders};

/// Verified tokens kept at most.
const CACHE_ENTRIES: u64 = 10_000;
/// A JWT's claims are kept at most this long, whatever its `exp` says.
const MAX_JWT_CACHE: Duration = Duration::from_secs(3600);

/// A token that passed: who it speaks for.
#[derive(Debug)]
pub struct Verified {
    pub profile: Profile,
    /// Its `X-Forwarded-Access-Token` line and header value (the client's
    /// `Authorization` goes upstream as it is).
    pub headers: TokenHeaders,
}

#[derive(Clone)]
enum Entry {
    Accepted(Arc<Verified>, Duration),
    /// An opaque token EMP refused.
    Refused(Duration),
}

struct Ttl;

impl moka::Expiry<[u8; 32], Entry> for Ttl {
    fn expire_after_create(&self, _: &[u8; 32], value: &Entry, _: Instant) -> Option<Duration> {
        Some(match value {
            Entry::Accepted(_, ttl) | Entry::Refused(ttl) => *ttl,
        })
    }
}

pub struct Bearer {
    issuers: Vec<BearerIssuer>,
    /// The issuer each of `issuers` answers for (its base URL).
    base_urls: Vec<String>,
    /// The configured provider speaks EMP: tokens that are no JWT go to
    /// its `/profile`.
    opaque: bool,
    opaque_ttl: Duration,
    cache: moka::sync::Cache<[u8; 32], Entry>,
    identity: IdentityRules,
    metrics: Arc<Metrics>,
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `iss` a JWT names, read without checking anything: only to choose
/// which provider checks it.
fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(String::from)
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl Bearer {
    pub fn new(config: &Config, issuers: Vec<BearerIssuer>, metrics: Arc<Metrics>) -> Bearer {
        let base_urls = std::iter::once(config.provider.base_url.to_string())
            .chain(
                config
                    .bearer
                    .extra_issuers
                    .iter()
                    .map(|(u, _)| u.to_string()),
            )
            .collect();
        Bearer {
            issuers,
            base_urls,
            opaque: config.provider.kind == crate::config::ProviderKind::Emp,
            opaque_ttl: config.bearer.opaque_cache,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(Ttl)
                .build(),
            identity: IdentityRules::new(config),
            metrics,
        }
    }

    /// The provider to check a JWT from `iss` with: the configured
    /// provider answers for its own base URL; extra issuers for theirs.
    fn issuer_for(&self, iss: &str) -> Option<usize> {
        self.base_urls.iter().position(|b| same_issuer(b, iss))
    }

    /// Checks `token`: who it speaks for, or why it is refused.
    pub async fn check(&self, token: &str) -> Result<Arc<Verified>, BearerRefusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.cache.get(&key) {
            Some(Entry::Accepted(v, _)) => {
                self.metrics.bearer(BearerResult::Cached);
                return Ok(v);
            }
            Some(Entry::Refused(_)) => {
                self.metrics.bearer(BearerResult::Invalid);
                return Err(BearerRefusal::Invalid("refused before".into()));
            }
            None => {}
        }
        let result = self.verify(token).await;
        match &result {
            Ok((verified, ttl)) => {
                self.metrics.bearer(BearerResult::Accepted);
                self.cache
                    .insert(key, Entry::Accepted(verified.clone(), *ttl));
            }
            Err((BearerRefusal::Invalid(_), opaque)) => {
                self.metrics.bearer(BearerResult::Invalid);
                if *opaque {
                    self.cache.insert(key, Entry::Refused(self.opaque_ttl));
                }
            }
            Err((BearerRefusal::Unavailable(_), _)) => {
                self.metrics.bearer(BearerResult::Unavailable)
            }
        }
        result.map(|(v, _)| v).map_err(|(e, _)| e)
    }

    /// The verification itself; the error says whether the token was
    /// opaque (whose refusals are cached).
    async fn verify(
        &self,
        token: &str,
    ) -> Result<(Arc<Verified>, Duration), (BearerRefusal, bool)> {
        let headers = TokenHeaders::new(token)
            .ok_or((BearerRefusal::Invalid("not a header value".into()), false))?;
        let (claims, ttl) = match unverified_issuer(token) {
            Some(iss) => {
                let Some(i) = self.issuer_for(&iss) else {
                    return Err((BearerRefusal::Invalid("unknown issuer".into()), false));
                };
                let (provider, audiences) = &self.issuers[i];
                let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
                let claims = provider
                    .verify_bearer(token, &audiences)
                    .await
                    .map_err(|e| (e, false))?;
                let now = jsonwebtoken::get_current_timestamp();
                let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
                let ttl = Duration::from_secs(exp.saturating_sub(now)).min(MAX_JWT_CACHE);
                (claims, ttl)
            }
            None if self.opaque => {
                let (provider, audiences) = &self.issuers[0];
                let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
                let claims = provider
                    .verify_bearer(token, &audiences)
                    .await
                    .map_err(|e| (e, true))?;
                (claims, self.opaque_ttl)
            }
            None => return Err((BearerRefusal::Invalid("not a JWT".into()), false)),
        };
        let identity = self.identity.identity(&claims);
        Ok((
            Arc::new(Verified {
                profile: Profile::new(&claims, identity),
                headers,
            }),
            ttl,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_token_comes_from_a_bearer_authorization_only() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(token(&h), Some("abc.def"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(token(&h), Some("xyz"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(token(&h), None);
    }

    #[test]
    fn the_issuer_is_read_only_to_choose_a_provider() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp.example/","sub":"x"}"#);
        assert_eq!(
            unverified_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp.example/")
        );
        assert_eq!(unverified_issuer("opaque-emp-token"), None);
        assert!(same_issuer("https://idp.example/", "https://idp.example"));
    }
}
