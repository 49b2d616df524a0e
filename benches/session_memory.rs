//! Memory per idle session in the memory store: 100 000 sessions shaped like
//! EMP DR logins (access and refresh tokens, backend URL, a profile, three
//! identity headers), RSS measured before and after.
//!
//! Run: `cargo bench --bench session_memory`

use std::sync::Arc;
use std::time::Duration;

use emp_sidecar::session::memory::MemoryStore;
use emp_sidecar::session::{Identity, Session, SessionKey, SessionStore};
use http::{HeaderName, HeaderValue};

#[path = "shape.rs"]
mod shape;

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

/// Three identity headers, as `[headers.claims]` and the defaults give.
fn session(n: usize) -> Session {
    shape::dr_session(n, |claims| {
        let user = claims["sub"].as_str().unwrap();
        Identity::new(
            HeaderValue::try_from(user).ok(),
            HeaderValue::try_from(format!("{user}@example.com")).ok(),
            vec![(
                HeaderName::from_static("x-auth-request-user"),
                HeaderValue::try_from(user).unwrap(),
            )],
        )
    })
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
