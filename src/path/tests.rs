use super::*;

fn canon(raw: &str) -> String {
    canonical(raw).unwrap().into_owned()
}

fn forms(canonical: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_form(canonical, |f| {
        out.push(f.to_string());
        true
    });
    out
}

#[test]
fn the_bypass_paths_of_the_attack_run_resolve_to_what_an_app_would_serve() {
    // Each of these was proxied without a session under `^/public/`: the
    // canonical form is the path an app resolving it would serve.
    assert_eq!(canon("/private/../public/x"), "/public/x");
    assert_eq!(canon("/private/%2e%2e/public/x"), "/public/x");
    assert_eq!(canon("/private/..%2Fpublic/x"), "/public/x");
    assert_eq!(canon("/public/..;/private"), "/private");
    // And the reverse direction.
    assert_eq!(canon("/public/../private/x"), "/private/x");
    assert_eq!(canon("/public/%2E%2E/private/x"), "/private/x");
    assert_eq!(canon("/public/.%2e;jsessionid=1/private"), "/private");
    // Found by the property below: Tomcat reads `;` alone as an empty
    // segment, folds it, then resolves the `..` against `public`.
    assert_eq!(canon("/public/;/../private"), "/private");
    assert_eq!(canon("/public/;x=1/../private"), "/private");
    assert_eq!(canon("/public/%3B/../private"), "/private");
}

#[test]
fn canonical_paths_are_borrowed_and_others_rewritten() {
    for p in [
        "/",
        "/a",
        "/a/",
        "/a/b.c",
        "/.well-known/openid-configuration",
        "/a/..b",
        "/a.",
        "/a/b%20c",
        "/caf%C3%A9",
        "/a%3Fb",
        "/a;jsessionid=1/b",
        "/a%25b",
    ] {
        assert!(matches!(canonical(p), Ok(Cow::Borrowed(_))), "{p:?}");
    }
    for (raw, want) in [
        ("//public//x/", "/public/x/"),
        ("/public\\..\\admin", "/admin"),
        ("/public%5C..%5cadmin", "/admin"),
        ("/public%2F..%2F..%2Fadmin", "/admin"),
        ("/../../etc", "/etc"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../", "/a/"),
        ("/..", "/"),
        ("/a/./b", "/a/b"),
        ("/%41%7e", "/A~"),
        ("/a/%2E", "/a/"),
    ] {
        assert_eq!(canon(raw), want, "{raw:?}");
    }
}

#[test]
fn broken_paths_are_errors() {
    assert_eq!(canonical("*"), Err(PathError::NotAPath));
    assert_eq!(canonical(""), Err(PathError::NotAPath));
    assert_eq!(canonical("/a/%zz"), Err(PathError::InvalidEscape));
    assert_eq!(canonical("/a/%2"), Err(PathError::InvalidEscape));
    assert_eq!(canonical("/a%00b"), Err(PathError::InvalidEscape));
}

#[test]
fn non_ascii_bytes_pass_through_unchanged() {
    assert_eq!(canon("/ünï/../çödé/"), "/çödé/");
}

#[test]
fn rules_see_every_reading_of_a_path() {
    assert_eq!(forms("/a/b"), ["/a/b"]);
    assert_eq!(forms("/a%20b"), ["/a b"]);
    assert_eq!(forms("/a;x=1/b"), ["/a;x=1/b", "/a/b"]);
    assert_eq!(
        forms("/private/s%3F.png"),
        ["/private/s?.png", "/private/s"]
    );
    assert_eq!(
        forms("/private/s%23.png"),
        ["/private/s#.png", "/private/s"]
    );
    assert_eq!(
        forms("/p;v/s%3f.png"),
        ["/p;v/s?.png", "/p/s?.png", "/p;v/s", "/p/s"]
    );
    // A form that fails stops the walk and the answer is false.
    let mut seen = 0;
    assert!(!for_each_form("/a;x/b", |_| {
        seen += 1;
        false
    }));
    assert_eq!(seen, 1);
}

#[path = "strict.rs"]
mod strict;

mod properties {
    use super::strict::strict_route;
    use super::*;
    use proptest::prelude::*;

    /// Paths built from the pieces that make paths ambiguous.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%5C".to_string()),
            Just("\\".to_string()),
            Just(";".to_string()),
            Just("%3F".to_string()),
            Just("%23".to_string()),
            Just("%25".to_string()),
            Just("%3B".to_string()),
            Just("%41".to_string()),
            Just("é".to_string()),
            "[a-z]{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn canonical_is_a_fixed_point(raw in path()) {
            let once = canon(&raw);
            let twice = canonical(&once).unwrap();
            prop_assert!(matches!(twice, Cow::Borrowed(_)), "{raw:?} -> {once:?}");
        }

        #[test]
        fn canonical_paths_hold_no_ambiguity(raw in path()) {
            let c = canon(&raw);
            prop_assert!(c.starts_with('/'));
            prop_assert!(!c.contains("//"), "{c:?}");
            prop_assert!(!c.contains('\\'), "{c:?}");
            let lower = c.to_ascii_lowercase();
            for esc in ["%2e", "%2f", "%5c", "%41"] {
                prop_assert!(!lower.contains(esc), "{c:?}");
            }
            prop_assert!(!lower.contains("%3b"), "{c:?}");
            for seg in c.split('/').skip(1) {
                prop_assert!(dot_segment(seg).is_none(), "{c:?}");
                prop_assert!(!seg.starts_with(';'), "{c:?}");
            }
        }

        #[test]
        fn a_strict_app_resolves_the_canonical_path_to_itself(raw in path()) {
            // What a strict upstream routes: decode once, split on `/`,
            // drop `;` parameters, resolve dot segments. On the canonical
            // form that reading agrees with the one rules are matched on.
            let c = canon(&raw);
            let strict = strict_route(&c);
            prop_assert!(forms(&c).iter().any(|f| strip_params(f) == strict || *f == strict),
                "{c:?}: {strict:?} not among {:?}", forms(&c));
        }
    }
}
