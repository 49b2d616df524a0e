//! Header hygiene between client and upstream. A header the proxy owns is
//! always either set or removed, never passed through from the client:
//! hop-by-hop headers (RFC 9110 §7.6.1), the identity headers the sidecar
//! injects (with `_` spellings, which CGI/WSGI apps read alike), the
//! `X-Forwarded-*` family, and the sidecar's own cookies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern one connection, besides those `Connection` lists
/// and every `Proxy-*` header. (`strip_hop_by_hop` keeps one bit for each,
/// and bit 5 for `Upgrade`.)
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-forwarded-access-token");
/// Prefix of the identity headers `/oauth2/auth` answers and the proxy injects.
const X_AUTH_REQUEST_PREFIX: &str = "x-auth-request-";

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has_token(headers, "upgrade")
}

/// Whether every protocol the `Upgrade` header asks for is one of `allowed`
/// (lower-case names; a version after `/` is ignored).
pub fn upgrade_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut any = false;
    for value in headers.get_all(header::UPGRADE) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = protocol.split('/').next().unwrap_or(protocol);
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return false;
            }
            any = true;
        }
    }
    any
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// The comma-separated tokens of every `Connection` header, trimmed.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A header that only concerns one connection by its name alone (those a
/// `Connection` header lists are hop-by-hop too).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers. `Upgrade` (and a `Connection: upgrade`) stay
/// only when `upgrading`, so a protocol switch can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // One pass over the names finds what to remove; most messages carry
    // nothing, or only `Connection: keep-alive`. The fixed names present are
    // bits (bit i: HOP_BY_HOP[i], bit 5: Upgrade), so the usual case
    // allocates nothing; `Proxy-*` and names `Connection` lists are rare.
    const UPGRADE_BIT: u8 = 1 << 5;
    let mut present = 0u8;
    let mut listed: Vec<HeaderName> = Vec::new();
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            if !upgrading {
                present |= UPGRADE_BIT;
            }
        } else if k.as_str().starts_with("proxy-") {
            listed.push(k.clone());
        }
    }
    // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    if present & 1 != 0 {
        for token in connection_tokens(headers) {
            if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue; // options, or a header the pass above caught
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && !is_hop_by_hop(&name)
                && name != header::UPGRADE
                && headers.contains_key(&name)
            {
                listed.push(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
    for name in listed {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Headers a claim may not be mapped to: the proxy manages them.
pub fn is_reserved(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || [
            &header::HOST,
            &header::COOKIE,
            &header::SET_COOKIE,
            &header::AUTHORIZATION,
            &header::CONTENT_LENGTH,
            &header::UPGRADE,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &X_REQUEST_ID,
            &X_FORWARDED_ACCESS_TOKEN,
        ]
        .contains(&name)
}

/// Removes every header a client could use to pose as an authenticated user:
/// `X-Auth-Request-*`, `X-Forwarded-Access-Token` and the configured claim
/// headers, each also when spelled with `_` instead of `-`.
pub fn strip_spoofable(headers: &mut HeaderMap, claim_headers: &[HeaderName]) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_spoofable(k.as_str(), claim_headers))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

fn is_spoofable(name: &str, claim_headers: &[HeaderName]) -> bool {
    // Header names are lower case in a HeaderMap; compare with `_` read as `-`.
    let same = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
    };
    let prefix_len = X_AUTH_REQUEST_PREFIX.len();
    (name.len() > prefix_len && same(&name[..prefix_len], X_AUTH_REQUEST_PREFIX))
        || same(name, X_FORWARDED_ACCESS_TOKEN.as_str())
        || claim_headers.iter().any(|c| same(name, c.as_str()))
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. Unless the client is a
/// trusted proxy, whatever the client sent is replaced, not appended to.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    trust_client: bool,
) {
    let prior = trust_client
        .then(|| joined(headers, &X_FORWARDED_FOR))
        .flatten();
    let xff = match prior {
        Some(prior) => {
            let ip = client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !(trust_client && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(trust_client && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// A client address as a header value; computed once per connection.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// All values of a header joined with ", " (repeated headers are one list).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Removes the sidecar's own cookies (`name` and `name_*`, e.g. the CSRF
/// cookie) from every `Cookie` header; drops the header when nothing is left.
/// Requests that carry none of them are left untouched (no rebuilding).
pub fn strip_own_cookies(headers: &mut HeaderMap, cookie_name: &str) {
    let is_own = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("").trim();
        name == cookie_name
            || name
                .strip_prefix(cookie_name)
                .is_some_and(|rest| rest.starts_with('_'))
    };
    let any_own = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(is_own);
    if !any_own {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_own(p))
        .map(String::from)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-end-to-end"]);
        // The usual upstream answer: only Connection goes.
        let mut h = map(&[
            ("server", "nginx"),
            ("connection", "keep-alive"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["server", "content-length"]);
    }

    #[test]
    fn upgrade_survives_when_upgrading() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        let allowed = ["websocket".to_string()];
        assert!(upgrade_allowed(&h, &allowed));
        for other in ["h2c", "websocket, h2c", "WebSocket/13, TLS/1.2", ""] {
            h.insert(header::UPGRADE, HeaderValue::from_str(other).unwrap());
            assert!(!upgrade_allowed(&h, &allowed), "{other:?}");
        }
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket/13"));
        assert!(upgrade_allowed(&h, &allowed));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn identity_headers_are_stripped_in_both_spellings() {
        let claims = [HeaderName::from_static("x-user-group")];
        let mut h = map(&[
            ("x-auth-request-user", "mallory"),
            ("x_auth_request_email", "m@evil"),
            ("x-forwarded-access-token", "forged"),
            ("x_forwarded_access_token", "forged"),
            ("x-user-group", "admin"),
            ("x_user_group", "admin"),
            ("x-auth-request", "not a prefix match, kept"),
            ("accept", "*/*"),
        ]);
        strip_spoofable(&mut h, &claims);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "x-auth-request"]);
    }

    #[test]
    fn forwarded_headers_replace_client_values_unless_trusted() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let host = HeaderValue::from_static("app.example");
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, &ip_header(ip), "http", Some(&host), false);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");

        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, &ip_header(ip), "http", Some(&host), true);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn own_cookies_are_removed_and_others_kept() {
        let mut h = map(&[
            ("cookie", "_emp_sidecar=abc; theme=dark"),
            ("cookie", "_emp_sidecar_csrf=xyz; _emp_sidecarX=kept"),
        ]);
        strip_own_cookies(&mut h, "_emp_sidecar");
        assert_eq!(h["cookie"], "theme=dark; _emp_sidecarX=kept");

        let mut h = map(&[("cookie", "_emp_sidecar=abc")]);
        strip_own_cookies(&mut h, "_emp_sidecar");
        assert!(!h.contains_key("cookie"));
    }
}
