//! The session the memory benchmarks store: shaped like an EMP DR login
//! (the mock EMP's token shapes, a backend URL, a five-field profile).

use std::time::Duration;

use emp_sidecar::provider::TokenSet;
use emp_sidecar::session::{Identity, Session, Tokens, random_token};

/// Session number `n`, its identity headers made by `identity` from its claims.
pub fn dr_session(n: usize, identity: impl Fn(&serde_json::Value) -> Identity) -> Session {
    let user = format!("user{n:06}");
    let set = TokenSet {
        // The mock EMP's token shapes: a prefix and 256 random bits.
        access_token: format!("emp-at-{}", random_token()),
        refresh_token: Some(format!("emp-rt-{}", random_token())),
        expires_in: Duration::from_secs(3600),
        backend_url: Some("https://kr.emp.example.lge.com/".to_string()),
        id_token: None,
        claims: None,
    };
    let claims = serde_json::json!({
        "sub": user,
        "user_id": user,
        "email": format!("{user}@example.com"),
        "name": format!("User {user}"),
        "country": "KR",
    });
    let tokens = Tokens::issued(set, tokio::time::Instant::now(), Duration::from_secs(60)).unwrap();
    let identity = identity(&claims);
    Session::new(tokens, &claims, identity)
}
