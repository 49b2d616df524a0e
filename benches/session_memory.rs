//! Memory per idle session in the memory store: 100 000 sessions shaped like
//! EMP DR logins (access and refresh tokens, backend URL, a profile, three
//! identity headers), RSS measured before and after.
//!
//! Run: `cargo bench --bench session_memory`

use std::sync::Arc;
use std::time::Duration;

use emp_sidecar::provider::TokenSet;
use emp_sidecar::session::memory::MemoryStore;
use emp_sidecar::session::{Identity, Session, SessionKey, SessionStore, Tokens, random_token};
use http::{HeaderName, HeaderValue};

const SESSIONS: usize = 100_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn session(n: usize) -> Session {
    let user = format!("user{n:06}");
    let set = TokenSet {
        // The mock EMP's token shapes: a prefix and 256 random bits.
        access_token: format!("emp-at-{}", random_token()),
        refresh_token: Some(format!("emp-rt-{}", random_token())),
        expires_in: Duration::from_secs(3600),
        backend_url: Some("https://kr.emp.example.lge.com/".to_string()),
    };
    let claims = serde_json::json!({
        "sub": user,
        "user_id": user,
        "email": format!("{user}@example.com"),
        "name": format!("User {user}"),
        "country": "KR",
    });
    let identity = Identity {
        user: HeaderValue::try_from(user.as_str()).ok(),
        email: HeaderValue::try_from(format!("{user}@example.com")).ok(),
        claim_headers: vec![(
            HeaderName::from_static("x-auth-request-user"),
            HeaderValue::try_from(user.as_str()).unwrap(),
        )],
    };
    let tokens = Tokens::issued(set, tokio::time::Instant::now(), Duration::from_secs(60)).unwrap();
    Session::new(tokens, &claims, identity)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryStore::new(
            1_000_000,
            Duration::from_secs(43_200),
            Duration::from_secs(43_200),
        );
        // Warm the allocator and moka's internals with one session.
        store
            .insert(&SessionKey::generate(), Arc::new(session(0)))
            .await
            .unwrap();
        let before = rss_bytes();
        for n in 0..SESSIONS {
            store
                .insert(&SessionKey::generate(), Arc::new(session(n)))
                .await
                .unwrap();
        }
        let count = store.count();
        let after = rss_bytes();
        assert!(count >= SESSIONS as u64, "store holds {count}");
        let per = (after - before) as f64 / SESSIONS as f64;
        println!("sessions: {count}");
        println!(
            "RSS before: {:.1} MiB, after: {:.1} MiB",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        println!("memory per idle session: {per:.0} bytes (target < 2048)");
    });
}
