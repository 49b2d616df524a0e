//! Lenient reading of IdP answers. EMP's error bodies are not documented and
//! its `expires_in` arrives as a string, so nothing here insists on a shape:
//! a JSON object of any layout, or plain text, yields a code and a message.

use std::time::Duration;

use serde_json::Value;

/// Lifetime assumed when a token answer names none (RFC 6749 makes
/// `expires_in` only RECOMMENDED).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// How much of an error text is kept for the error page and the log.
pub const MAX_MESSAGE: usize = 300;

/// `expires_in` as a JSON number or a string of digits ("3600", " 3600 ", "3600.0").
pub fn expires_in(v: Option<&Value>) -> Result<Duration, String> {
    let secs = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if (0.0..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expires_in is not a number of seconds: {}",
            v.map_or("".into(), |v| v.to_string())
        )),
    }
}

/// A string field, or `None` when absent, empty or not a string.
pub fn string(obj: &Value, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// Code and message out of an error body of unknown shape, whole: the
/// caller cuts secrets out before [`clip`]ping them, so that no part of a
/// secret is left at the cut.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    const CODE_KEYS: &[&str] = &[
        "error",
        "error_code",
        "errorCode",
        "code",
        "resultCode",
        "result_code",
    ];
    const MESSAGE_KEYS: &[&str] = &[
        "error_description",
        "message",
        "error_message",
        "errorMessage",
        "msg",
        "resultMessage",
        "description",
    ];
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        // Some APIs nest the details: {"error": {"code": .., "message": ..}}.
        let obj = match v.get("error") {
            Some(inner @ Value::Object(_)) => inner.clone(),
            _ => v,
        };
        if obj.is_object() {
            let pick = |keys: &[&str]| {
                keys.iter().find_map(|k| match obj.get(*k) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
            };
            return (pick(CODE_KEYS), pick(MESSAGE_KEYS));
        }
        if let Value::String(s) = obj {
            return (None, Some(s));
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return (None, None);
    }
    // A bare EMP code such as "LG.OAUTH.EC.4001" or "App_id Fail" is a code;
    // longer prose is a message.
    if text.len() <= 40 && !text.contains('\n') {
        (Some(text.to_string()), None)
    } else {
        (None, Some(text.to_string()))
    }
}

/// At most [`MAX_MESSAGE`] bytes of `s` (cut at a character), and `…`.
pub fn clip(s: String) -> String {
    if s.len() <= MAX_MESSAGE {
        return s;
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expires_in_as_string_or_number() {
        assert_eq!(
            expires_in(Some(&json!("3600"))).unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            expires_in(Some(&json!(" 120 "))).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            expires_in(Some(&json!(86400))).unwrap(),
            Duration::from_secs(86400)
        );
        assert_eq!(
            expires_in(Some(&json!("1.5"))).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(expires_in(None).unwrap(), DEFAULT_EXPIRES_IN);
        assert!(expires_in(Some(&json!("soon"))).is_err());
        assert!(expires_in(Some(&json!(-1))).is_err());
        assert!(expires_in(Some(&json!([1]))).is_err());
    }

    #[test]
    fn error_bodies_of_any_shape() {
        assert_eq!(
            error_details(br#"{"error":"invalid_grant","error_description":"revoked"}"#),
            (Some("invalid_grant".into()), Some("revoked".into()))
        );
        assert_eq!(
            error_details(br#"{"code":"LG.OAUTH.EC.4001","message":"OAuth2 processing error"}"#),
            (
                Some("LG.OAUTH.EC.4001".into()),
                Some("OAuth2 processing error".into())
            )
        );
        assert_eq!(
            error_details(br#"{"error":{"code":4001,"message":"Invalid parameter"}}"#),
            (Some("4001".into()), Some("Invalid parameter".into()))
        );
        assert_eq!(
            error_details(b"App_id Fail"),
            (Some("App_id Fail".into()), None)
        );
        assert_eq!(
            error_details(
                b"This service is not currently supported in your country. Please check."
            ),
            (
                None,
                Some(
                    "This service is not currently supported in your country. Please check.".into()
                )
            )
        );
        assert_eq!(error_details(b""), (None, None));
        assert_eq!(
            error_details(br#""just a string""#),
            (None, Some("just a string".into()))
        );
        let long = "x".repeat(1000);
        assert!(clip(error_details(long.as_bytes()).1.unwrap()).len() < 320);
    }
}
