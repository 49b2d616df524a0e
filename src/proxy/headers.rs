//! Header hygiene between client and upstream. A header the proxy owns is
//! always either set or removed, never passed through from the client:
//! hop-by-hop headers (RFC 9110 §7.6.1), the identity headers the sidecar
//! injects (with `_` spellings, which CGI/WSGI apps read alike), the
//! `X-Forwarded-*` family, and the sidecar's own cookies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Added;

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

/// Whether any `Connection` header lists `token` (any case).
pub fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
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

/// The headers the proxy sets on every forwarded request from the
/// connection, never the client's: `Host`, `X-Forwarded-*`, `X-Request-Id`.
fn is_forwarding(name: &HeaderName) -> bool {
    [
        &header::HOST,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REQUEST_ID,
    ]
    .contains(&name)
}

/// Headers a claim may not be mapped to: the proxy manages them.
pub fn is_reserved(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || is_forwarding(name)
        || [
            &header::COOKIE,
            &header::SET_COOKIE,
            &header::AUTHORIZATION,
            &header::CONTENT_LENGTH,
            &header::UPGRADE,
            &X_FORWARDED_ACCESS_TOKEN,
        ]
        .contains(&name)
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

/// Everything that decides the header lines of a request sent upstream:
/// the client's headers, which pass through [`UpstreamHead::write`]'s
/// filter, and the lines the proxy sets itself.
pub struct UpstreamHead<'a> {
    /// The client's headers, as hyper parsed them (nothing removed).
    pub headers: &'a HeaderMap,
    /// The request switches protocols (an allowed `Upgrade`).
    pub upgrading: bool,
    /// The configured claim headers and the backend URL header: a client
    /// could pose with them, so the client's never pass.
    pub claim_headers: &'a [HeaderName],
    /// The session cookie's name: it and `name_*` never reach the app.
    pub cookie_name: &'a str,
    /// `server.trust_forwarded_headers`: the client's `X-Forwarded-*` are
    /// extended or kept instead of replaced.
    pub trust_forwarded: bool,
    pub host: &'a HeaderValue,
    pub client_ip: &'a HeaderValue,
    pub proto: &'static str,
    /// The host the client addressed (`Host` or HTTP/2 `:authority`).
    pub client_host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    /// The identity of the session or bearer token.
    pub added: Added<'a>,
}

impl UpstreamHead<'_> {
    /// Appends the header lines (`name: value\r\n` each) to `out`:
    /// - `Host` first, then the client's headers in their order except the
    ///   ones the proxy owns: hop-by-hop headers (RFC 9110 §7.6.1: the fixed
    ///   ones, every `Proxy-*`, those `Connection` lists; `Upgrade` unless
    ///   upgrading), the identity headers the sidecar injects (also spelled
    ///   with `_`, which CGI/WSGI apps read alike), `Host`, `X-Request-Id`,
    ///   `X-Forwarded-*`, and `Authorization` when the session's token
    ///   replaces it;
    /// - the client's cookies in one `Cookie` line, without the sidecar's
    ///   own (`name` and `name_*`, e.g. the CSRF cookie); none left, no line;
    /// - `X-Forwarded-For` (the client's address; appended to the client's
    ///   list when trusted), `-Proto` and `-Host` (the client's kept when
    ///   trusted), `X-Request-Id`, `Connection: upgrade` when upgrading, and
    ///   the identity headers.
    ///
    /// Written straight from the client's header map, which is never
    /// modified: no removals and inserts that hash, shift and grow it
    /// (benches/README.md, issue 15).
    pub fn write(&self, out: &mut Vec<u8>) {
        let h = self.headers;
        // The rare cases that need the whole head first: names `Connection`
        // lists, and the client's forwarding headers when trusted.
        let listed: Vec<&str> = match h.get(header::CONNECTION) {
            None => Vec::new(),
            Some(_) => connection_tokens(h)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case("close")
                        && !t.eq_ignore_ascii_case("keep-alive")
                        && !t.eq_ignore_ascii_case("upgrade")
                })
                .collect(),
        };
        let unlisted =
            |name: &HeaderName| !listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()));
        let trusted = |name: &HeaderName| {
            (self.trust_forwarded && unlisted(name))
                .then(|| joined(h, name))
                .flatten()
        };
        line(out, header::HOST.as_str(), self.host.as_bytes());
        let mut cookies = Cookies::default();
        for (name, value) in h {
            if name == header::COOKIE {
                cookies.add(out, value.as_bytes(), self.cookie_name);
                continue;
            }
            cookies.end(out);
            if self.passes(name) && unlisted(name) {
                line(out, name.as_str(), value.as_bytes());
            }
        }
        cookies.end(out);
        let ip = self.client_ip.as_bytes();
        match trusted(&X_FORWARDED_FOR) {
            Some(prior) => {
                out.extend_from_slice(b"x-forwarded-for: ");
                out.extend_from_slice(prior.as_bytes());
                out.extend_from_slice(b", ");
                out.extend_from_slice(ip);
                out.extend_from_slice(b"\r\n");
            }
            None => line(out, X_FORWARDED_FOR.as_str(), ip),
        }
        match trusted(&X_FORWARDED_PROTO) {
            Some(proto) => line(out, X_FORWARDED_PROTO.as_str(), proto.as_bytes()),
            None => line(out, X_FORWARDED_PROTO.as_str(), self.proto.as_bytes()),
        }
        match (trusted(&X_FORWARDED_HOST), self.client_host) {
            (Some(host), _) => line(out, X_FORWARDED_HOST.as_str(), host.as_bytes()),
            (None, Some(host)) => line(out, X_FORWARDED_HOST.as_str(), host.as_bytes()),
            (None, None) => {}
        }
        line(out, X_REQUEST_ID.as_str(), self.request_id.as_bytes());
        if self.upgrading {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        out.extend_from_slice(self.added.token_lines);
        out.extend_from_slice(self.added.claim_lines);
        if let Some((name, value)) = self.added.backend_url {
            line(out, name.as_str(), value.as_bytes());
        }
    }

    /// Whether a client's header other than `Cookie` goes upstream (those
    /// `Connection` lists are the caller's to check).
    fn passes(&self, name: &HeaderName) -> bool {
        if name == header::UPGRADE {
            self.upgrading
        } else if name == header::AUTHORIZATION {
            !self.added.authorization
        } else {
            !is_hop_by_hop(name)
                && !is_forwarding(name)
                && !is_spoofable(name.as_str(), self.claim_headers)
        }
    }
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The client's `Cookie` headers (consecutive in a header map's order) as
/// one line, without the sidecar's own cookies.
#[derive(Default)]
struct Cookies {
    /// Where the open line starts in `out`, and whether it has a pair yet.
    open: Option<(usize, bool)>,
}

impl Cookies {
    fn add(&mut self, out: &mut Vec<u8>, value: &[u8], own: &str) {
        let (_, any) = self.open.get_or_insert_with(|| {
            let at = out.len();
            out.extend_from_slice(b"cookie: ");
            (at, false)
        });
        for pair in crate::session::cookie::pairs(value) {
            let pair = pair.trim_ascii();
            if pair.is_empty() || is_own_cookie(pair, own.as_bytes()) {
                continue;
            }
            if *any {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
            *any = true;
        }
    }

    /// Closes the line; takes it back when every cookie was the sidecar's.
    fn end(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            Some((_, true)) => out.extend_from_slice(b"\r\n"),
            Some((at, false)) => out.truncate(at),
            None => {}
        }
    }
}

/// `name=value` where `name` is `own` or `own_*`.
fn is_own_cookie(pair: &[u8], own: &[u8]) -> bool {
    let name = match memchr::memchr(b'=', pair) {
        Some(i) => &pair[..i],
        None => pair,
    }
    .trim_ascii();
    name.strip_prefix(own)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"_"))
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

    /// Every kind of hop-by-hop header, and one end-to-end header.
    const HOPS: [(&str, &str); 10] = [
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
    ];

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = map(&HOPS);
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

    /// The header lines `UpstreamHead::write` writes, as pairs.
    fn written(head: &UpstreamHead<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        head.write(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n") || text.is_empty());
        text.split_terminator("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn all<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    struct Fixture {
        host: HeaderValue,
        ip: HeaderValue,
        client_host: HeaderValue,
        request_id: HeaderValue,
        claims: Vec<HeaderName>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                host: HeaderValue::from_static("app.internal:8080"),
                ip: ip_header("10.1.2.3".parse().unwrap()),
                client_host: HeaderValue::from_static("app.example"),
                request_id: HeaderValue::from_static("rid-1"),
                claims: vec![HeaderName::from_static("x-user-group")],
            }
        }

        fn head<'a>(&'a self, headers: &'a HeaderMap) -> UpstreamHead<'a> {
            UpstreamHead {
                headers,
                upgrading: false,
                claim_headers: &self.claims,
                cookie_name: "_emp_sidecar",
                trust_forwarded: false,
                host: &self.host,
                client_ip: &self.ip,
                proto: "http",
                client_host: Some(&self.client_host),
                request_id: &self.request_id,
                added: Added::default(),
            }
        }
    }

    #[test]
    fn the_upstream_head_carries_no_hop_by_hop_header() {
        let f = Fixture::new();
        let mut pairs = vec![("host", "app.example")];
        pairs.extend(HOPS);
        pairs.push(("content-length", "3"));
        let lines = written(&f.head(&map(&pairs)));
        let names: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "x-end-to-end",
                "content-length",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id"
            ]
        );
        assert_eq!(all(&lines, "host"), ["app.internal:8080"]);
        assert_eq!(all(&lines, "x-request-id"), ["rid-1"]);
        // Upgrading: the client's Upgrade passes, with our Connection.
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let mut head = f.head(&h);
        head.upgrading = true;
        let lines = written(&head);
        assert_eq!(all(&lines, "upgrade"), ["websocket"]);
        assert_eq!(all(&lines, "connection"), ["upgrade"]);
    }

    #[test]
    fn identity_headers_are_stripped_in_both_spellings() {
        let f = Fixture::new();
        let h = map(&[
            ("x-auth-request-user", "mallory"),
            ("x_auth_request_email", "m@evil"),
            ("x-forwarded-access-token", "forged"),
            ("x_forwarded_access_token", "forged"),
            ("x-user-group", "admin"),
            ("x_user_group", "admin"),
            ("x-auth-request", "not a prefix match, kept"),
            ("accept", "*/*"),
            ("authorization", "Bearer client's"),
        ]);
        let lines = written(&f.head(&h));
        let mut client: Vec<&str> = lines[1..lines.len() - 4]
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        client.sort();
        assert_eq!(client, ["accept", "authorization", "x-auth-request"]);
        // The session's token replaces the client's Authorization; the
        // identity headers come last, once each.
        use crate::session::{Identity, TokenHeaders};
        let token = TokenHeaders::new("session").unwrap();
        let group = [(f.claims[0].clone(), HeaderValue::from_static("staff"))];
        let identity = Identity::new(None, None, group.to_vec());
        let mut head = f.head(&h);
        head.added = Added {
            token_lines: token.lines(true, false),
            authorization: true,
            claim_lines: &identity.claim_lines,
            ..Added::default()
        };
        let lines = written(&head);
        assert_eq!(all(&lines, "authorization"), ["Bearer session"]);
        assert_eq!(all(&lines, "x-user-group"), ["staff"]);
        assert_eq!(all(&lines, "x_user_group"), Vec::<&str>::new());
        assert_eq!(lines.last().unwrap().0, "x-user-group");
    }

    #[test]
    fn forwarded_headers_replace_client_values_unless_trusted() {
        let f = Fixture::new();
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-request-id", "client-chosen"),
            ("host", "app.example"),
        ]);
        let lines = written(&f.head(&h));
        assert_eq!(all(&lines, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(all(&lines, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&lines, "x-forwarded-host"), ["app.example"]);
        assert_eq!(all(&lines, "x-request-id"), ["rid-1"]);
        assert_eq!(all(&lines, "host"), ["app.internal:8080"]);

        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let mut head = f.head(&h);
        head.trust_forwarded = true;
        let lines = written(&head);
        assert_eq!(
            all(&lines, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 10.1.2.3"]
        );
        assert_eq!(all(&lines, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&lines, "x-forwarded-host"), ["app.example"]);
        // A trusted client's forwarding header that its Connection lists
        // is hop-by-hop: not extended.
        let h = map(&[
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        let mut head = f.head(&h);
        head.trust_forwarded = true;
        head.client_host = None;
        let lines = written(&head);
        assert_eq!(all(&lines, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(all(&lines, "x-forwarded-host"), Vec::<&str>::new());
    }

    #[test]
    fn own_cookies_are_removed_and_others_kept_in_one_line() {
        let f = Fixture::new();
        let h = map(&[
            ("cookie", "_emp_sidecar=abc; theme=dark"),
            ("accept", "*/*"),
            ("cookie", "_emp_sidecar_csrf=xyz; _emp_sidecarX=kept;;"),
        ]);
        let lines = written(&f.head(&h));
        assert_eq!(all(&lines, "cookie"), ["theme=dark; _emp_sidecarX=kept"]);
        assert_eq!(all(&lines, "accept"), ["*/*"]);

        let h = map(&[("cookie", "_emp_sidecar=abc"), ("accept", "*/*")]);
        let lines = written(&f.head(&h));
        assert_eq!(all(&lines, "cookie"), Vec::<&str>::new());
        assert_eq!(all(&lines, "accept"), ["*/*"]);

        // HTTP/2 clients send cookies in several fields: one line upstream
        // (RFC 9113 §8.2.3).
        let h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        let lines = written(&f.head(&h));
        assert_eq!(all(&lines, "cookie"), ["a=1; b=2"]);
    }
}
