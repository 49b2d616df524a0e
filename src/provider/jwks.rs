//! An OpenID provider's signing keys and id_token verification, on the
//! `jsonwebtoken` crate (aws-lc-rs underneath, as for rustls). This file is
//! pure: fetching and caching the key set live in `oidc.rs`.
//!
//! Only asymmetric algorithms are accepted and only public keys are read
//! from the JWKS: `none` and HMAC (whose "key" would be public data) never
//! verify anything. A key's own `alg`, when it names one, must match the
//! token's.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::IdTokenFailure;

/// The algorithms an id_token may be signed with.
pub const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The usable signature keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document. Keys that cannot verify signatures here
    /// (encryption keys, symmetric keys, unknown types or curves) are left
    /// out, not fatal: providers publish those alongside.
    pub fn parse(doc: &Value) -> Result<KeySet, String> {
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS document has no \"keys\" array")?;
        let keys = list
            .iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter_map(|jwk| {
                // A key for an algorithm we do not verify with is left out.
                let alg = match jwk.common.key_algorithm {
                    Some(a) => Some(Algorithm::try_from(a).ok()?),
                    None => None,
                };
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key: DecodingKey::from_jwk(&jwk).ok()?,
                })
            })
            .collect();
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a token names by `kid`; without a `kid`, the only key of
    /// the token's family (several would be a guess).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.key.family() == alg.family());
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }

    pub fn has_key_for(&self, header: &TokenHeader) -> bool {
        self.find(header.kid.as_deref(), header.alg).is_some()
    }
}

/// What verification needs from the token's header before a key is chosen.
#[derive(Debug, Clone)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Reads the JOSE header. `alg` must be one of `allowed` (a subset of
/// [`ACCEPTED`]); `none`, HMAC and unknown names are refused here.
pub fn header(token: &str, allowed: &[Algorithm]) -> Result<TokenHeader, IdTokenFailure> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenFailure::Malformed);
    };
    let raw = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| IdTokenFailure::Malformed)?;
    let json: Value = serde_json::from_slice(&raw).map_err(|_| IdTokenFailure::Malformed)?;
    let name = json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(IdTokenFailure::Malformed)?;
    let alg = name
        .parse::<Algorithm>()
        .ok()
        .filter(|a| allowed.contains(a) && ACCEPTED.contains(a))
        .ok_or(IdTokenFailure::Algorithm)?;
    let kid = json.get("kid").and_then(Value::as_str).map(String::from);
    Ok(TokenHeader { alg, kid })
}

/// What the token must say.
pub struct Expect<'a> {
    /// `iss` must be one of these (one, unless discovery was unavailable).
    pub issuers: &'a [String],
    /// `aud` must name one of these (id_token: the client id; bearer
    /// tokens: `bearer.audiences`).
    pub audiences: &'a [&'a str],
    /// id_tokens: the party they must have been issued to (`azp`, required
    /// with several audiences). `None` for access tokens, whose `azp` is
    /// the calling client's.
    pub azp: Option<&'a str>,
    /// At login: the nonce sent with the authorize request.
    pub nonce: Option<&'a str>,
    /// At refresh: the session's subject.
    pub subject: Option<&'a str>,
    /// `sub` must be there (a logout token may name only a `sid`).
    pub require_sub: bool,
    pub leeway_secs: u64,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// Verifies signature and claims (OpenID Connect Core 3.1.3.7) and returns
/// the claims. The signature is checked first: no claim of an unsigned or
/// forged token is looked at.
pub fn verify(
    token: &str,
    header: &TokenHeader,
    keys: &KeySet,
    expect: &Expect<'_>,
) -> Result<Value, IdTokenFailure> {
    let key = keys
        .find(header.kid.as_deref(), header.alg)
        .ok_or(IdTokenFailure::UnknownKey)?;
    if key.alg.is_some_and(|a| a != header.alg) || key.key.family() != header.alg.family() {
        return Err(IdTokenFailure::Algorithm);
    }
    let mut v = Validation::new(header.alg);
    v.set_issuer(expect.issuers);
    v.set_audience(expect.audiences);
    if expect.require_sub {
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    } else {
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
    }
    v.validate_nbf = true;
    v.leeway = expect.leeway_secs;
    let claims = jsonwebtoken::decode::<Value>(token, &key.key, &v)
        .map_err(|e| failure(e.kind()))?
        .claims;
    // The library checks exp against the system clock; `now` is the caller's.
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let exp = number("exp").ok_or(IdTokenFailure::Malformed)?;
    if exp.saturating_add(expect.leeway_secs) < expect.now {
        return Err(IdTokenFailure::Expired);
    }
    let iat = number("iat").ok_or(IdTokenFailure::Malformed)?;
    if iat > expect.now.saturating_add(expect.leeway_secs) {
        return Err(IdTokenFailure::NotYetValid);
    }
    // When there, `sub` is a non-empty string.
    let sub = claims.get("sub");
    if (expect.require_sub || sub.is_some())
        && sub.and_then(Value::as_str).is_none_or(str::is_empty)
    {
        return Err(IdTokenFailure::Malformed);
    }
    // Several audiences: the token must have been issued to us (azp).
    let audiences = match claims.get("aud") {
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    };
    if let Some(party) = expect.azp {
        match claims.get("azp") {
            Some(Value::String(azp)) if azp != party => {
                return Err(IdTokenFailure::AuthorizedParty);
            }
            None if audiences > 1 => return Err(IdTokenFailure::AuthorizedParty),
            Some(Value::String(_)) | None => {}
            Some(_) => return Err(IdTokenFailure::Malformed),
        }
    }
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(IdTokenFailure::Nonce);
    }
    if let Some(subject) = expect.subject
        && claims.get("sub").and_then(Value::as_str) != Some(subject)
    {
        return Err(IdTokenFailure::Subject);
    }
    Ok(claims)
}

fn failure(kind: &ErrorKind) -> IdTokenFailure {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => IdTokenFailure::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => IdTokenFailure::Algorithm,
        ErrorKind::ExpiredSignature => IdTokenFailure::Expired,
        ErrorKind::ImmatureSignature => IdTokenFailure::NotYetValid,
        ErrorKind::InvalidIssuer => IdTokenFailure::Issuer,
        ErrorKind::InvalidAudience => IdTokenFailure::Audience,
        ErrorKind::InvalidSubject => IdTokenFailure::Subject,
        _ => IdTokenFailure::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn ec_key() -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
        jwk["kid"] = json!("ec-1");
        (key, jwk)
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn claims() -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({"iss": "https://op.example", "aud": "client", "sub": "u1", "exp": now + 300, "iat": now, "nonce": "n1"})
    }

    fn check(token: &str, keys: &KeySet) -> Result<Value, IdTokenFailure> {
        let issuers = ["https://op.example".to_string()];
        let h = header(token, ACCEPTED)?;
        verify(
            token,
            &h,
            keys,
            &Expect {
                issuers: &issuers,
                audiences: &["client"],
                azp: Some("client"),
                nonce: Some("n1"),
                subject: None,
                require_sub: true,
                leeway_secs: 30,
                now: jsonwebtoken::get_current_timestamp(),
            },
        )
    }

    #[test]
    fn each_claim_check_refuses_its_own_failure() {
        // Leeway is 30 s: 60 s off fails, 20 s off passes, whatever second the check runs in.
        let now = jsonwebtoken::get_current_timestamp();
        let (key, jwk) = ec_key();
        let keys =
            KeySet::parse(&json!({"keys": [jwk, {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}]}))
                .unwrap();
        assert_eq!(keys.len(), 1, "the symmetric key is never used");
        let good = sign(&key, Some("ec-1"), &claims());
        assert_eq!(check(&good, &keys).unwrap()["sub"], "u1");
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            sign(&key, Some("ec-1"), &c)
        };
        let cases = [
            (
                with("iss", json!("https://evil.example")),
                IdTokenFailure::Issuer,
            ),
            (with("aud", json!("other")), IdTokenFailure::Audience),
            (
                with("aud", json!(["client", "other"])),
                IdTokenFailure::AuthorizedParty,
            ),
            (with("azp", json!("other")), IdTokenFailure::AuthorizedParty),
            (with("exp", json!(now - 60)), IdTokenFailure::Expired),
            (with("iat", json!(now + 60)), IdTokenFailure::NotYetValid),
            (with("nbf", json!(now + 60)), IdTokenFailure::NotYetValid),
            (with("nonce", json!("n2")), IdTokenFailure::Nonce),
            (with("iat", json!("yesterday")), IdTokenFailure::Malformed),
            (
                sign(&key, Some("ec-2"), &claims()),
                IdTokenFailure::UnknownKey,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(check(&token, &keys), Err(want));
        }
        // Inside the leeway both ways.
        assert!(check(&with("exp", json!(now - 20)), &keys).is_ok());
        assert!(check(&with("iat", json!(now + 20)), &keys).is_ok());
        let mut multi = claims();
        multi["aud"] = json!(["client", "other"]);
        multi["azp"] = json!("client");
        assert!(check(&sign(&key, Some("ec-1"), &multi), &keys).is_ok());
    }

    #[test]
    fn forged_unsigned_and_symmetric_tokens_are_refused() {
        let (key, jwk) = ec_key();
        let keys = KeySet::parse(&json!({"keys": [jwk]})).unwrap();
        let good = sign(&key, Some("ec-1"), &claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged = claims();
        forged["sub"] = json!("admin");
        let body = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert_eq!(
            check(&format!("{head}.{body}.{sig}"), &keys),
            Err(IdTokenFailure::Signature)
        );
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(
            check(&format!("{none}.{body}."), &keys),
            Err(IdTokenFailure::Algorithm)
        );
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(check(&hs, &keys), Err(IdTokenFailure::Algorithm));
        assert_eq!(check("not.a.jwt", &keys), Err(IdTokenFailure::Malformed));
        assert_eq!(check("two.parts", &keys), Err(IdTokenFailure::Malformed));
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_fitting_key() {
        let (key, jwk) = ec_key();
        let (_, other) = ec_key();
        let one = KeySet::parse(&json!({"keys": [jwk.clone()]})).unwrap();
        let token = sign(&key, None, &claims());
        assert!(check(&token, &one).is_ok());
        let two = KeySet::parse(&json!({"keys": [jwk, other]})).unwrap();
        assert_eq!(check(&token, &two), Err(IdTokenFailure::UnknownKey));
    }
}
