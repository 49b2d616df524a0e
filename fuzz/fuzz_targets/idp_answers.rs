//! What an IdP sends back, success or error, EMP or OpenID: any bytes are a
//! token set, a refusal or an error, never a panic; an error text never
//! holds a secret the request carried, and is never longer than the clip.
//!
//! Input: one byte `n`, then `n` bytes of secret (as the code or refresh
//! token the request carried), then the answer body.
#![no_main]

use emp_sidecar::provider::fuzzing::{MAX_MESSAGE, error_text, token_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (secret, body) = rest.split_at(n);
    let secret = String::from_utf8_lossy(secret);

    if let Ok(tokens) = token_answer(body) {
        assert!(!tokens.access_token.is_empty());
    }

    let (code, message) = error_text(body, &[&secret]);
    // A secret that could be rebuilt from the marker or the ellipsis is no
    // test of the redaction.
    let testable = secret.len() >= 6
        && !secret.contains(['[', ']', '…'])
        && !"redacted".contains(secret.as_ref());
    for text in [code, message].into_iter().flatten() {
        assert!(text.len() <= MAX_MESSAGE + '…'.len_utf8(), "{} bytes", text.len());
        if testable {
            assert!(!text.contains(secret.as_ref()), "secret left in {text:?}");
        }
    }
});
