//! Small HTML pages for people: login errors. Everything the IdP or the
//! request supplied is HTML-escaped.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What went wrong, for the page.
pub struct ErrorPage<'a> {
    pub status: StatusCode,
    pub title: &'a str,
    pub explanation: &'a str,
    /// The identity provider's own code and message, when it gave them.
    pub idp_code: Option<&'a str>,
    pub idp_message: Option<&'a str>,
    pub request_id: &'a str,
}

impl ErrorPage<'_> {
    pub fn render(&self) -> Response<Body> {
        let mut details = String::new();
        if let Some(code) = self.idp_code {
            details.push_str(&format!(
                "<dt>Code</dt><dd><code>{}</code></dd>",
                escape(code)
            ));
        }
        if let Some(message) = self.idp_message {
            details.push_str(&format!("<dt>Message</dt><dd>{}</dd>", escape(message)));
        }
        let html = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:36rem;margin:4rem auto}}dt{{font-weight:bold}}</style></head>
<body><h1>{title}</h1><p>{explanation}</p><dl>{details}<dt>Request id</dt><dd><code>{rid}</code></dd></dl>
<p><a href="/oauth2/start?rd=%2F">Sign in again</a></p></body></html>"#,
            title = escape(self.title),
            explanation = escape(self.explanation),
            rid = escape(self.request_id),
        );
        let mut resp = body::response(self.status, "text/html; charset=utf-8", html);
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        resp
    }
}

/// A logged-in user the authorization rules refuse: who they are signed
/// in as, and a way to sign in as someone else. Nothing about the rules.
pub fn forbidden(signed_in_as: Option<&str>, request_id: &str) -> Response<Body> {
    let who = match signed_in_as {
        Some(who) => format!("You are signed in as <strong>{}</strong>, ", escape(who)),
        None => "You are signed in, ".to_string(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Access denied</title>
<style>body{{font-family:sans-serif;max-width:36rem;margin:4rem auto}}</style></head>
<body><h1>Access denied</h1><p>{who}and this account may not open this page.</p>
<p>Request id <code>{rid}</code></p>
<form method="post" action="/oauth2/sign_out"><button type="submit">Sign out</button></form>
</body></html>"#,
        rid = escape(request_id),
    );
    let mut resp = body::response(StatusCode::FORBIDDEN, "text/html; charset=utf-8", html);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_idp_messages_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
