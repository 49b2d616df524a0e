//! The return-URL check against the public open-redirect corpora. The
//! oracle is the WHATWG URL parser (the `url` crate implements the spec
//! browsers follow): whatever the check lets through must resolve, from a
//! page on this site, to this site or an allowed domain, also after one more
//! round of percent-decoding by the app.

use super::*;

const SITE: &str = "https://app.test/some/page";

fn corpus() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut payloads = Vec::new();
    for file in [
        "open-redirects-oauth2-proxy.txt",
        "open-redirects-mod-auth-openidc.txt",
    ] {
        let text = std::fs::read(format!("{dir}/{file}")).unwrap();
        for line in text.split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_string();
            if !line.is_empty() {
                payloads.push(line);
            }
        }
    }
    payloads
}

fn stays_on_site(target: &str, allowed: &[String]) -> bool {
    let Ok(resolved) = Url::parse(SITE).and_then(|base| base.join(target)) else {
        return true; // a browser would not follow it anywhere
    };
    let host = resolved.host_str().unwrap_or("").to_string();
    host == "app.test"
        || allowed.iter().any(|d| {
            let parent = d.trim_start_matches('.');
            host == parent || host.ends_with(&format!(".{parent}"))
        })
}

#[test]
fn no_corpus_payload_leaves_the_site() {
    let payloads = corpus();
    assert!(
        payloads.len() > 1000,
        "corpora not found or truncated: {}",
        payloads.len()
    );
    for allowed in [vec![], vec![".whitelisteddomain.tld".to_string()]] {
        let mut accepted = 0;
        for p in &payloads {
            if let Some(rd) = safe_return(p, &allowed) {
                accepted += 1;
                assert!(stays_on_site(&rd, &allowed), "{p:?} would leave the site");
                let decoded = percent_decode(&rd);
                assert!(
                    stays_on_site(&decoded, &allowed),
                    "{p:?} leaves the site once decoded"
                );
            }
        }
        // The corpora are nearly all attacks; a handful are harmless paths.
        assert!(accepted < payloads.len() / 10, "{accepted} accepted");
    }
}

#[test]
fn named_tricks_are_refused() {
    for rd in [
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "\\/evil.com",
        "/%2F%2Fevil.com",
        "/%2f%2fevil.com",
        "/%5Cevil.com",
        "/%5cevil.com",
        "/%252F%252Fevil.com",
        "/\t/evil.com",
        "/%09/evil.com",
        "/\n/evil.com",
        "/%0a/evil.com",
        " /evil",
        "https://evil.com",
        "http:evil.com",
        "https:/evil.com",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "evil.com",
        "",
    ] {
        assert_eq!(safe_return(rd, &[]), None, "{rd:?} accepted");
    }
}

#[test]
fn same_site_paths_are_kept_as_given() {
    for rd in [
        "/",
        "/app",
        "/app/x?y=1&z=%2F",
        "/a/b#top",
        "/search?q=a%20b",
        "/%E2%9C%93",
    ] {
        assert_eq!(safe_return(rd, &[]).as_deref(), Some(rd));
    }
}

#[test]
fn absolute_urls_only_for_allowed_domains() {
    let allowed = vec!["app.example.com".to_string(), ".corp.example".to_string()];
    for ok in [
        "https://app.example.com/x",
        "https://corp.example/",
        "https://a.b.corp.example/page?q=1",
    ] {
        assert_eq!(safe_return(ok, &allowed).as_deref(), Some(ok));
    }
    for bad in [
        "https://app.example.com.evil.com/",
        "https://evil.com/app.example.com",
        "https://app.example.com@evil.com/",
        "https://user:pw@app.example.com/",
        "https://xcorp.example/",
        "ftp://app.example.com/",
        "https://evil.com\\@app.example.com/",
    ] {
        assert_eq!(safe_return(bad, &allowed), None, "{bad:?} accepted");
    }
}
