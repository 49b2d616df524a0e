//! Any Cookie header: never a panic, never a session or a login without our
//! key, and pruning drops only what it found.
#![no_main]

use std::time::Duration;

use emp_sidecar::config::Secret;
use emp_sidecar::session::cookie::Cookies;
use http::header::{COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let cookies = Cookies::new(
        vec![Secret::new(vec![7u8; 32])],
        "_emp",
        true,
        Duration::from_secs(60),
    );
    let mut h = HeaderMap::new();
    h.insert(COOKIE, value);
    assert!(cookies.session_key(&h).is_none());
    let state = String::from_utf8_lossy(data);
    assert!(cookies.login(&h, &state).is_none());
    let dropped = cookies.prune_logins(&h, 0);
    assert!(dropped.len() <= data.len());
});
