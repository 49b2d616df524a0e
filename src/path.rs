//! Request paths: their normal form, and the forms a path rule is matched
//! against.
//!
//! The rule this module keeps is that the path a decision was made on is the
//! path the upstream receives. Apps resolve a raw path in different ways
//! (Express and Flask route on it undecoded, Tomcat and Spring strip `;`
//! parameters and resolve dot segments, others decode `%2F`), so a decision
//! made on one reading of an ambiguous path and forwarded as another lets a
//! client reach a protected page through a public rule. [`canonical`] gives
//! the one reading the sidecar uses: dot segments resolved (also spelled
//! `%2e` or with `;` parameters, as in `..;`), `\`, `%5C` and `%2F` taken as
//! separators, repeated `/` and lone `;x` segments folded, escaped
//! unreserved characters and `;` decoded.
//! The router then either refuses a path whose raw form differs from it
//! (`routes.path_normalization = "reject"`, the default) or forwards the
//! canonical form itself (`"rewrite"`).
//!
//! Rules are matched against the decoded canonical path. Where an app could
//! still read it in another way (a `;` parameter some servers strip, an
//! escaped `?` or `#` that a decoding hop may take for the end of the path),
//! [`for_each_form`] offers every reading, so a rule that opens a path must
//! hold for all of them and a rule that restricts one applies if any matches.

use std::borrow::Cow;

/// Why a request path cannot be used at all (both policies answer `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be a path starting with '/'")]
    NotAPath,
    #[error("the request path has an invalid percent-escape")]
    InvalidEscape,
}

/// The canonical form of the raw request path (still percent-encoded):
/// borrowed when the raw path is already canonical, which is nearly always.
pub fn canonical(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_plain(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let canonical = canonicalize(raw)?;
    Ok(if canonical == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(canonical)
    })
}

/// One pass over a path that needs no work: it starts with `/`, has no `%`,
/// `\` or `;`, and no segment that is empty or starts with a dot
/// (`/.well-known` takes the long way, to the same result).
fn is_plain(b: &[u8]) -> bool {
    b.first() == Some(&b'/')
        && b.iter().enumerate().all(|(i, &c)| match c {
            b'%' | b'\\' | b';' => false,
            b'/' => !matches!(b.get(i + 1), Some(b'/' | b'.')),
            _ => true,
        })
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Is this segment, without its `;` parameters, a dot segment? Tomcat and
/// Jetty read `..;x` as `..`.
fn dot_segment(seg: &str) -> Option<bool> {
    match seg.split(';').next() {
        Some(".") => Some(false),
        Some("..") => Some(true),
        _ => None,
    }
}

fn canonicalize(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    // First pass: decode escaped unreserved characters, turn every spelling
    // of a separator into `/`, keep other bytes and escapes as they came.
    let mut text = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::InvalidEscape);
            };
            match h << 4 | l {
                0 => return Err(PathError::InvalidEscape),
                b'/' | b'\\' => text.push(b'/'),
                // Decoded, so that a server that decodes before it strips
                // `;` parameters reads the same segments as one that does not.
                v if v == b';' || is_unreserved(v) => text.push(v),
                _ => text.extend_from_slice(&b[i..i + 3]),
            }
            i += 3;
        } else {
            text.push(if c == b'\\' { b'/' } else { c });
            i += 1;
        }
    }
    // Only ASCII was replaced, so the bytes are still UTF-8.
    let text = String::from_utf8(text).map_err(|_| PathError::InvalidEscape)?;
    // Second pass: fold empty segments and resolve dot segments (RFC 3986
    // §5.2.4: a path ending in a dot segment keeps its trailing `/`).
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in text.split('/').skip(1) {
        trailing = false;
        match dot_segment(seg) {
            Some(up) => {
                if up {
                    segments.pop();
                }
                trailing = true;
            }
            // `;x` alone is an empty segment to Tomcat and Jetty: folded
            // like `//`, or `/public/;/../private` would read as `/private`.
            None if seg.is_empty() || seg.starts_with(';') => trailing = true,
            None => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Calls `f` with each reading of a canonical path that a rule is matched
/// against, decoded, and returns whether `f` held for all of them (stopping
/// at the first that fails). A plain path has one reading, itself. A path
/// with `;` parameters is also read without them; one with an escaped `?`
/// or `#` is also read as ending there.
pub fn for_each_form(canonical: &str, mut f: impl FnMut(&str) -> bool) -> bool {
    if !canonical.contains(['%', ';']) {
        return f(canonical);
    }
    let cut = cut_at_escaped_delimiter(canonical);
    let params = canonical.contains(';');
    let mut raw_forms = vec![Cow::Borrowed(canonical)];
    if params {
        raw_forms.push(Cow::Owned(strip_params(canonical)));
    }
    if let Some(cut) = cut {
        raw_forms.push(Cow::Borrowed(cut));
        if params {
            raw_forms.push(Cow::Owned(strip_params(cut)));
        }
    }
    raw_forms.iter().all(|form| f(&decode(form)))
}

/// The decoded path, for matching (invalid UTF-8 becomes U+FFFD).
fn decode(path: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy()
}

/// The path up to its first `%3F` or `%23`, when it has one.
fn cut_at_escaped_delimiter(path: &str) -> Option<&str> {
    let b = path.as_bytes();
    (0..b.len().saturating_sub(2)).find_map(|i| {
        let esc = &b[i..i + 3];
        (esc[0] == b'%' && (esc[1..].eq_ignore_ascii_case(b"3f") || esc[1..] == *b"23"))
            .then(|| &path[..i])
    })
}

/// The path with every segment's `;` parameters removed.
fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;
