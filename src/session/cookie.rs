//! The sidecar's cookies: the session cookie (`session.cookie_name`) and the
//! login cookie (`<cookie_name>_csrf`) that binds `state` to this browser.
//! Values are `<value>.<HMAC-SHA256(secret, "<name>=<value>")>`: the name is
//! under the MAC, so one cookie's value cannot be replayed as another's. The
//! first `session.cookie_secret` signs, every one verifies (rotation).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// How long a login may take from redirect to callback.
pub const LOGIN_COOKIE_TTL: Duration = Duration::from_secs(600);

pub struct Cookies {
    /// One HMAC per secret, keyed once; cloned for each use.
    keys: Vec<HmacSha256>,
    pub session_name: String,
    pub login_name: String,
    secure: bool,
    session_max_age: Duration,
}

impl Cookies {
    pub fn new(secrets: Vec<Secret>, name: &str, secure: bool, lifetime: Duration) -> Self {
        let keys = secrets
            .iter()
            .filter_map(|s| <HmacSha256 as KeyInit>::new_from_slice(s.expose()).ok())
            .collect();
        Self {
            keys,
            session_name: name.to_string(),
            login_name: format!("{name}_csrf"),
            secure,
            session_max_age: lifetime,
        }
    }

    fn mac(key: &HmacSha256, name: &str, value: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(value.as_bytes());
        mac
    }

    fn sign(&self, name: &str, value: &str) -> String {
        let tag = self
            .keys
            .first()
            .map(|k| URL_SAFE_NO_PAD.encode(Self::mac(k, name, value).finalize().into_bytes()))
            .unwrap_or_default();
        format!("{value}.{tag}")
    }

    /// The verified value of cookie `name`, if the request carries one that
    /// any configured secret signed.
    fn read(&self, headers: &HeaderMap, name: &str) -> Option<String> {
        for h in headers.get_all(header::COOKIE) {
            let Ok(text) = h.to_str() else { continue };
            for c in Cookie::split_parse(text).flatten() {
                if c.name() != name {
                    continue;
                }
                let Some((value, tag)) = c.value().rsplit_once('.') else {
                    continue;
                };
                let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
                    continue;
                };
                let valid = self
                    .keys
                    .iter()
                    .any(|k| Self::mac(k, name, value).verify_slice(&tag).is_ok());
                if valid {
                    return Some(value.to_string());
                }
            }
        }
        None
    }

    pub fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        self.read(headers, &self.session_name)
    }

    pub fn login_state(&self, headers: &HeaderMap) -> Option<String> {
        self.read(headers, &self.login_name)
    }

    fn set(&self, name: &str, value: String, max_age: Duration) -> HeaderValue {
        let c = Cookie::build((name.to_string(), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64));
        // Names are validated at start and values are base64 and '.', so the
        // header is always valid; an empty value would just set nothing.
        HeaderValue::try_from(c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn set_session(&self, id: &str) -> HeaderValue {
        self.set(
            &self.session_name,
            self.sign(&self.session_name, id),
            self.session_max_age,
        )
    }

    pub fn set_login(&self, state: &str) -> HeaderValue {
        self.set(
            &self.login_name,
            self.sign(&self.login_name, state),
            LOGIN_COOKIE_TTL,
        )
    }

    pub fn clear_session(&self) -> HeaderValue {
        self.set(&self.session_name, String::new(), Duration::ZERO)
    }

    pub fn clear_login(&self) -> HeaderValue {
        self.set(&self.login_name, String::new(), Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(secrets: &[&[u8]]) -> Cookies {
        Cookies::new(
            secrets.iter().map(|s| Secret::new(s.to_vec())).collect(),
            "_emp",
            true,
            Duration::from_secs(3600),
        )
    }

    fn request_with(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::try_from(format!("other=1; {pair}")).unwrap(),
        );
        h
    }

    #[test]
    fn signed_session_cookie_round_trips_with_the_right_flags() {
        let c = cookies(&[&[7u8; 32]]);
        let set = c.set_session("abc123");
        let text = set.to_str().unwrap();
        for flag in [
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
            "Secure",
            "Max-Age=3600",
        ] {
            assert!(text.contains(flag), "{flag} missing from {text}");
        }
        assert_eq!(c.session_id(&request_with(&set)).as_deref(), Some("abc123"));
    }

    #[test]
    fn tampered_foreign_and_swapped_cookies_are_refused() {
        let c = cookies(&[&[7u8; 32]]);
        let set = c.set_session("abc123");
        let tampered =
            HeaderValue::try_from(set.to_str().unwrap().replace("abc123", "abc124")).unwrap();
        assert_eq!(c.session_id(&request_with(&tampered)), None);
        let foreign = cookies(&[&[9u8; 32]]).set_session("abc123");
        assert_eq!(c.session_id(&request_with(&foreign)), None);
        // A login cookie's value is not a session id, even with a valid MAC.
        let login = c.set_login("abc123");
        let swapped =
            HeaderValue::try_from(login.to_str().unwrap().replacen("_emp_csrf", "_emp", 1))
                .unwrap();
        assert_eq!(c.session_id(&request_with(&swapped)), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("_emp=no-dot-here; _emp=x.%%%"),
        );
        assert_eq!(c.session_id(&h), None);
    }

    #[test]
    fn rotation_first_secret_signs_all_verify() {
        let old = cookies(&[&[1u8; 32]]);
        let rotated = cookies(&[&[2u8; 32], &[1u8; 32]]);
        let from_old = old.set_session("s1");
        assert_eq!(
            rotated.session_id(&request_with(&from_old)).as_deref(),
            Some("s1")
        );
        let from_new = rotated.set_session("s2");
        assert_eq!(old.session_id(&request_with(&from_new)), None);
        assert_eq!(
            cookies(&[&[2u8; 32]])
                .session_id(&request_with(&from_new))
                .as_deref(),
            Some("s2")
        );
    }
}
