//! Where a login may send the browser back to. Only same-site relative paths
//! (`/app?x=1`), unless `routes.allowed_redirect_domains` names the host of
//! an absolute URL. The tricks refused are those from oauth2-proxy's and
//! mod_auth_openidc's open-redirect advisories: protocol-relative `//host`,
//! `/\host` (browsers read `\` as `/`), schemes, tabs, newlines and other
//! control characters (browsers drop them, turning `/\t/host` into
//! `//host`), and the same spelled with percent-encoding (`/%2F%2Fhost`,
//! `/%5Chost`), decoded up to three times.

use url::Url;

/// `rd` if it is a safe place to return to, else `None`.
pub fn safe_return(rd: &str, allowed_domains: &[String]) -> Option<String> {
    if rd.is_empty() || rd.len() > 4096 || !is_clean(rd) {
        return None;
    }
    if rd.starts_with('/') {
        return relative_ok(rd).then(|| rd.to_string());
    }
    absolute_ok(rd, allowed_domains).then(|| rd.to_string())
}

/// Printable ASCII only, and no backslash anywhere.
fn is_clean(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\')
}

fn relative_ok(rd: &str) -> bool {
    let mut current = rd.to_string();
    for _ in 0..3 {
        let b = current.as_bytes();
        if b.first() != Some(&b'/') || matches!(b.get(1), Some(b'/') | Some(b'\\')) {
            return false;
        }
        if !current
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || b >= 0x80)
            || current.contains('\\')
        {
            return false;
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            return true;
        }
        current = decoded;
    }
    // Still changing after three decodings: nobody needs that.
    false
}

fn absolute_ok(rd: &str, allowed_domains: &[String]) -> bool {
    if allowed_domains.is_empty() {
        return false;
    }
    let Ok(url) = Url::parse(rd) else {
        return false;
    };
    if !matches!(url.scheme(), "https" | "http")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return false;
    }
    // The parser's view of the host must be the text's view too: reject
    // anything the URL parser had to repair.
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
        return false;
    };
    let after_scheme = &rd[url.scheme().len()..];
    if !after_scheme
        .to_ascii_lowercase()
        .starts_with(&format!("://{host}"))
    {
        return false;
    }
    allowed_domains.iter().any(|d| match d.strip_prefix('.') {
        Some(parent) => host == parent || host.ends_with(&format!(".{parent}")),
        None => host == *d,
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
