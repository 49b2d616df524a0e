//! A session as a shared store keeps it: the tokens with wall-clock
//! expiry, the claims, the login time. Serialized as JSON with a format
//! version, then sealed under the session's own key ([`super::seal`]) by
//! the store. Decoding is defensive: another version, a missing field or
//! a token that cannot be a header is "no record", never a panic.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::{IdentityRules, Session, Tokens, now_ms};
use crate::provider::TokenSet;

/// The record format version.
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Record {
    v: u8,
    /// Access token.
    at: String,
    /// Refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// Access token expiry, Unix ms.
    exp: u64,
    /// Access token lifetime as issued, ms.
    lt: u64,
    /// EMP's `oauth2_backend_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bu: Option<String>,
    /// The id_token of the login or the last refresh (OpenID), for the
    /// end-session request's `id_token_hint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    it: Option<String>,
    /// The claims.
    c: Value,
    /// Login time, Unix ms.
    iat: u64,
}

/// Wall-clock Unix ms of a monotonic instant.
fn wall_ms(at: Instant) -> u64 {
    let now = Instant::now();
    if at >= now {
        now_ms() + (at - now).as_millis() as u64
    } else {
        now_ms().saturating_sub((now - at).as_millis() as u64)
    }
}

/// The monotonic instant of a wall-clock Unix ms (the past clamps to now).
fn instant_of(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
}

/// The record of `session`, as bytes to seal.
pub fn encode(session: &Session) -> Vec<u8> {
    let tokens = session.tokens();
    let record = Record {
        v: VERSION,
        at: tokens.access_token.clone(),
        rt: tokens.refresh_token.clone(),
        exp: wall_ms(tokens.expires_at),
        lt: tokens.lifetime.as_millis() as u64,
        bu: tokens.backend_url.clone(),
        it: tokens.id_token.clone(),
        c: serde_json::from_str(&session.profile().claims).unwrap_or(Value::Null),
        iat: session.created_at,
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The session a record holds, at `generation`.
pub fn decode(
    bytes: &[u8],
    rules: &IdentityRules,
    margin: Duration,
    generation: u64,
) -> Option<Session> {
    let r: Record = serde_json::from_slice(bytes).ok()?;
    if r.v != VERSION {
        return None;
    }
    let tokens = tokens_of(
        TokenSet {
            access_token: r.at,
            refresh_token: r.rt,
            expires_in: Duration::from_millis(r.lt),
            backend_url: r.bu,
            id_token: r.it,
            claims: None,
        },
        r.exp,
        margin,
    )?;
    let identity = rules.identity(&r.c);
    Some(Session::restored(tokens, &r.c, identity, r.iat, generation))
}

/// Tokens issued with `set.expires_in` as their lifetime, expiring at
/// `expires_at_ms`.
pub fn tokens_of(set: TokenSet, expires_at_ms: u64, margin: Duration) -> Option<Tokens> {
    let lifetime = set.expires_in;
    let expires_at = instant_of(expires_at_ms);
    let mut tokens = Tokens::issued(set, Instant::now(), margin)?;
    tokens.expires_at = expires_at;
    tokens.refresh_at = expires_at
        .checked_sub(margin.min(lifetime / 2))
        .unwrap_or(expires_at);
    tokens.lifetime = lifetime;
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Identity;

    fn rules() -> IdentityRules {
        IdentityRules::for_tests("/sub")
    }

    #[test]
    fn a_record_round_trips_tokens_claims_and_times() {
        let tokens = Tokens::issued(
            TokenSet {
                access_token: "at".into(),
                refresh_token: Some("rt".into()),
                expires_in: Duration::from_secs(600),
                backend_url: Some("https://kr.emp/".into()),
                id_token: Some("h.p.s".into()),
                claims: None,
            },
            Instant::now(),
            Duration::from_secs(60),
        )
        .unwrap();
        let claims = serde_json::json!({"sub": "alice", "email": "a@x"});
        let s = Session::new(tokens, &claims, Identity::default());
        let back = decode(&encode(&s), &rules(), Duration::from_secs(60), 7).unwrap();
        let (a, b) = (s.tokens(), back.tokens());
        assert_eq!(b.access_token, "at");
        assert_eq!(b.refresh_token.as_deref(), Some("rt"));
        assert_eq!(b.backend_url.as_deref(), Some("https://kr.emp/"));
        assert_eq!(b.id_token.as_deref(), Some("h.p.s"));
        assert_eq!(b.lifetime, Duration::from_secs(600));
        let skew = |x: Instant, y: Instant| if x > y { x - y } else { y - x };
        assert!(skew(a.expires_at, b.expires_at) < Duration::from_millis(5));
        assert!(skew(a.refresh_at, b.refresh_at) < Duration::from_millis(5));
        assert_eq!(back.created_at, s.created_at);
        assert_eq!(back.profile().subject.as_deref(), Some("alice"));
        assert_eq!(back.profile().identity.user.as_ref().unwrap(), "alice");
        assert_eq!(
            back.generation.load(std::sync::atomic::Ordering::Relaxed),
            7
        );
    }

    #[test]
    fn foreign_or_broken_records_are_nothing() {
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"at":"a","exp":1,"lt":1,"c":{},"iat":1}"#,
            br#"{"v":1,"exp":1,"lt":1,"c":{},"iat":1}"#,
            br#"{"v":1,"at":"line\nbreak","exp":1,"lt":1,"c":{},"iat":1}"#,
        ] {
            assert!(decode(bad, &rules(), Duration::ZERO, 1).is_none());
        }
    }
}
