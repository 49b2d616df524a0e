//! The session cookie check alone, on the real CPU (SHA-NI included, which
//! callgrind hides): a cookie this worker verified before (the usual
//! request: found by its whole value, no HMAC) against cookies it has not
//! seen (10 000 sessions in turn, more than it remembers, so each is
//! verified in full: two HMAC-SHA256, base64 both ways, and remembered).
//!
//! Run: `cargo bench --bench session_check`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use emp_sidecar::config::Secret;
use emp_sidecar::session::cookie::{Cookies, SessionKey};
use http::header::{COOKIE, HeaderMap, HeaderValue};

/// A request's headers carrying the cookie `set` sets, after another.
fn request(set: &HeaderValue) -> HeaderMap {
    let pair = set
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair");
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::try_from(format!("theme=dark; {pair}")).expect("valid"),
    );
    h
}

/// Best of 5: nanoseconds per check over `rounds` passes over `requests`.
fn time(cookies: &Cookies, requests: &[HeaderMap], rounds: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for h in requests {
                assert!(black_box(cookies.session_key(black_box(h))).is_some());
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / (rounds * requests.len()) as f64);
    }
    best
}

fn main() {
    let cookies = Cookies::new(
        vec![Secret::new(vec![7u8; 32])],
        "_emp_sidecar",
        false,
        Duration::from_secs(3600),
    );
    let warm = [request(&cookies.set_session(&SessionKey::generate()))];
    let many: Vec<HeaderMap> = (0..10_000)
        .map(|_| request(&cookies.set_session(&SessionKey::generate())))
        .collect();
    let remembered = time(&cookies, &warm, 2_000_000);
    let verified = time(&cookies, &many, 20);
    println!("session cookie check, remembered: {remembered:.0} ns");
    println!("session cookie check, verified in full: {verified:.0} ns");
    println!(
        "saved a request: {:.0} ns ({:.1}x)",
        verified - remembered,
        verified / remembered
    );
}
