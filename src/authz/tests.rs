use super::*;
use serde_json::json;

fn policy(kind: &str, authorization: &str) -> Policy {
    let toml = format!(
        r#"
[provider]
kind = "{kind}"
base_url = "https://idp.example"
client_id = "c"
client_secret = "s"
redirect_url = "https://app.example/oauth2/callback"
[session]
cookie_secret = "dGhpcyBpcyBhIDMyIGJ5dGUgY29va2llIHNlY3JldCE="
{authorization}
"#
    );
    Policy::new(&Config::from_toml_str(&toml).unwrap())
}

fn allowed(p: &Policy, path: &str, claims: Value) -> bool {
    p.rule_for(path).allows(&p.facts(&claims))
}

#[test]
fn no_rule_lets_everyone_in() {
    let p = policy("oidc", "");
    assert!(p.is_open());
    assert!(allowed(&p, "/", json!({"sub": "u"})));
}

#[test]
fn email_domains_and_emails_either_admit() {
    let p = policy(
        "oidc",
        r#"[authorization]
allowed_email_domains = ["example.com", ".corp.example"]
allowed_emails = ["Guest@Other.example"]"#,
    );
    assert!(!p.is_open());
    for (email, ok) in [
        ("a@example.com", true),
        ("A@EXAMPLE.COM", true),
        ("a@sub.example.com", false),
        ("a@evil-example.com", false),
        ("a@corp.example", true),
        ("a@eu.corp.example", true),
        ("a@notcorp.example", false),
        ("guest@other.example", true),
        ("other@other.example", false),
    ] {
        assert_eq!(allowed(&p, "/", json!({"email": email})), ok, "{email}");
    }
    assert!(!allowed(&p, "/", json!({"sub": "no email"})));
    // An unverified email counts for nothing with an OpenID provider...
    for flag in [json!(false), json!("false")] {
        assert!(!allowed(
            &p,
            "/",
            json!({"email": "a@example.com", "email_verified": flag})
        ));
    }
    assert!(allowed(
        &p,
        "/",
        json!({"email": "a@example.com", "email_verified": true})
    ));
    // ...while EMP's profile has no such flag.
    let emp = policy(
        "emp",
        "[authorization]\nallowed_email_domains = [\"example.com\"]",
    );
    assert!(allowed(
        &emp,
        "/",
        json!({"email": "a@example.com", "email_verified": false})
    ));
}

#[test]
fn groups_from_an_array_or_a_space_separated_string() {
    let p = policy(
        "oidc",
        "[authorization]\nallowed_groups = [\"admins\", \"ops\"]\ngroups_claim = \"/realm/roles\"",
    );
    assert!(allowed(
        &p,
        "/",
        json!({"realm": {"roles": ["users", "ops"]}})
    ));
    assert!(allowed(
        &p,
        "/",
        json!({"realm": {"roles": "users admins"}})
    ));
    assert!(!allowed(&p, "/", json!({"realm": {"roles": ["users"]}})));
    assert!(!allowed(&p, "/", json!({"groups": ["admins"]})));
}

#[test]
fn the_first_matching_path_rule_replaces_the_lists() {
    let p = policy(
        "oidc",
        r#"[authorization]
allowed_email_domains = ["example.com"]
[[authorization.rules]]
path = "^/admin/"
allowed_groups = ["admins"]
claims = { "/account/country" = ["KR", "US"], "/level" = [3] }
[[authorization.rules]]
path = "^/admin/open"
[[authorization.rules]]
path = "^/public-docs/"
"#,
    );
    let admin = json!({"email": "a@other.example", "groups": ["admins"],
                       "account": {"country": "KR"}, "level": 3});
    assert!(allowed(&p, "/admin/x", admin.clone()));
    // The domain list does not apply under /admin/, the rule does.
    assert!(!allowed(&p, "/app", admin.clone()));
    let mut wrong_country = admin.clone();
    wrong_country["account"]["country"] = json!("JP");
    assert!(!allowed(&p, "/admin/x", wrong_country));
    let mut no_level = admin.clone();
    no_level.as_object_mut().unwrap().remove("level");
    assert!(!allowed(&p, "/admin/x", no_level));
    // First match wins: /admin/open is /admin/'s.
    assert!(!allowed(&p, "/admin/open", json!({"groups": []})));
    // A rule with no condition opens its paths to anyone logged in.
    assert!(allowed(&p, "/public-docs/a", json!({"sub": "x"})));
    assert_eq!(&*p.rule_for("/admin/x").label, "rules[1]");
    assert_eq!(&*p.rule_for("/app").label, "default");
}

#[test]
fn auth_request_query_parameters_make_a_rule() {
    assert!(Policy::query_rule("").is_none());
    assert!(Policy::query_rule("rd=/x").is_none());
    let r = Policy::query_rule("allowed_groups=admins,ops&allowed_email_domains=*.Example.com")
        .unwrap();
    let p = policy("oidc", "");
    let facts = |v: Value| p.facts(&v);
    assert!(r.allows(&facts(
        json!({"groups": ["ops"], "email": "a@x.example.com"})
    )));
    assert!(!r.allows(&facts(json!({"groups": ["ops"], "email": "a@x.other.com"}))));
    assert!(!r.allows(&facts(
        json!({"groups": ["users"], "email": "a@example.com"})
    )));
    let r = Policy::query_rule("allowed_emails=Alice@Example.com").unwrap();
    assert!(r.allows(&facts(json!({"email": "alice@example.com"}))));
}

#[test]
fn facts_are_read_again_for_a_new_policy() {
    let a = policy("oidc", "[authorization]\nallowed_groups = [\"g\"]");
    let b = policy("oidc", "[authorization]\nallowed_groups = [\"g\"]");
    let f = a.facts(&json!({"groups": ["g"]}));
    assert!(a.current(&f));
    assert!(!b.current(&f));
}

#[test]
fn invalid_rules_are_configuration_errors_naming_the_key() {
    for (text, key) in [
        (
            "[[authorization.rules]]\npath = \"(\"",
            "authorization.rules[1].path",
        ),
        (
            "[[authorization.rules]]\npath = \"^/\"\nclaims = { \"country\" = [\"KR\"] }",
            "authorization.rules[1].claims",
        ),
        (
            "[[authorization.rules]]\npath = \"^/\"\nsurprise = 1",
            "authorization.rules",
        ),
        (
            "[authorization]\ngroups_claim = \"groups\"",
            "authorization.groups_claim",
        ),
        (
            "[authorization]\nallowed_email_domains = [\"exa mple\"]",
            "authorization.allowed_email_domains",
        ),
        (
            "[authorization]\nallowed_emails = [\"nobody\"]",
            "authorization.allowed_emails",
        ),
    ] {
        let toml = format!(
            "[provider]\nbase_url = \"https://e\"\nclient_id = \"c\"\nredirect_url = \"https://a/oauth2/callback\"\n\
             [session]\ncookie_secret = \"dGhpcyBpcyBhIDMyIGJ5dGUgY29va2llIHNlY3JldCE=\"\n{text}\n"
        );
        let problems = Config::from_toml_str(&toml).expect_err(text).0;
        assert!(
            problems.iter().any(|p| p.key == key),
            "{text}: {problems:?}"
        );
    }
}
