//! id_tokens and key sets, differentially: whatever claims are signed with a
//! real key, `verify` accepts exactly those that OpenID Connect Core 3.1.3.7
//! allows (checked here by hand, not by the library); any token string and
//! any JWKS document are refused or verified, never a panic.
//!
//! Input: one mode byte, then the bytes the mode reads:
//! - 0: claims (JSON) signed ES256 with the test key; the rest must hold;
//! - 1: a whole token string against the test key set;
//! - 2: a JWKS document, against a token signed with the test key.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use emp_sidecar::provider::fuzzing::{ACCEPTED, Expect, KeySet, header, verify};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// A P-256 key made for this target only (PKCS#8, base64).
const TEST_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9L6PeVfzAgAdilHlgk6gDYQHC1stn8nCTwv24ozsrGChRANCAATWFtdcPlUBrIe/i9Qo0DvTDXXTauJzIWMGvJ4+KaL2yQXb3OQ9wec0YFdHcaxFMO+P8Ipue4BEiOTJSa3e0O5m";
const ISSUER: &str = "https://issuer.example";
const CLIENT: &str = "client-1";
const NONCE: &str = "nonce-1";
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 60;

struct Fixture {
    key: EcdsaKeyPair,
    jwks: Value,
    keys: KeySet,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let der = STANDARD.decode(TEST_KEY).expect("base64");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("key");
        let point = key.public_key().as_ref().to_vec(); // 0x04 | x | y
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        let keys = KeySet::parse(&jwks).expect("the test JWKS parses");
        Fixture { key, jwks, keys }
    })
}

fn sign(f: &Fixture, claims: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
    let input = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims));
    let sig = f
        .key
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("signs");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn check(token: &str, keys: &KeySet) -> Option<Value> {
    let issuers = [ISSUER.to_string()];
    let expect = Expect {
        issuers: &issuers,
        audiences: &[CLIENT],
        azp: Some(CLIENT),
        nonce: Some(NONCE),
        subject: None,
        require_sub: true,
        leeway_secs: LEEWAY,
        now: NOW,
    };
    let h = header(token, ACCEPTED).ok()?;
    verify(token, &h, keys, &expect).ok()
}

/// What the spec asks of accepted claims, written out by hand.
fn acceptable(c: &Value) -> bool {
    let num = |k: &str| c.get(k).and_then(Value::as_u64);
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == CLIENT,
        Some(Value::Array(a)) => {
            a.iter().any(|x| x == CLIENT)
                && (a.len() == 1 || c.get("azp").and_then(Value::as_str) == Some(CLIENT))
        }
        _ => false,
    };
    let azp_ok = match c.get("azp") {
        None => true,
        Some(v) => v == CLIENT,
    };
    c.get("iss").and_then(Value::as_str) == Some(ISSUER)
        && aud_ok
        && azp_ok
        && num("exp").is_some_and(|e| e.saturating_add(LEEWAY) >= NOW)
        && num("iat").is_some_and(|i| i <= NOW + LEEWAY)
        && c.get("sub").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
        && c.get("nonce").and_then(Value::as_str) == Some(NONCE)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 3 {
        0 => {
            let token = sign(f, rest);
            if let Some(claims) = check(&token, &f.keys) {
                assert!(acceptable(&claims), "accepted: {claims}");
                assert_eq!(serde_json::from_slice::<Value>(rest).ok(), Some(claims));
            }
        }
        1 => {
            let token = String::from_utf8_lossy(rest);
            let _ = check(&token, &f.keys);
        }
        _ => {
            let Ok(doc) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            if let Ok(keys) = KeySet::parse(&doc) {
                let claims = json!({"iss": ISSUER, "aud": CLIENT, "sub": "u", "nonce": NONCE,
                                    "exp": NOW + 600, "iat": NOW});
                let token = sign(f, claims.to_string().as_bytes());
                if check(&token, &keys).is_some() {
                    // Only a set that holds the test key can verify its signature.
                    assert!(doc.to_string().contains(
                        f.jwks["keys"][0]["x"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
});
