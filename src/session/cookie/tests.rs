use super::*;

fn cookies(secrets: &[&[u8]]) -> Cookies {
    Cookies::new(
        secrets.iter().map(|s| Secret::new(s.to_vec())).collect(),
        "_emp",
        true,
        Duration::from_secs(3600),
    )
}

/// A request carrying the cookies the `Set-Cookie` values set (besides another).
fn request_with(set_cookies: &[&HeaderValue]) -> HeaderMap {
    let pairs: Vec<String> = set_cookies
        .iter()
        .map(|sc| sc.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::try_from(format!("other=1; {}", pairs.join("; "))).unwrap(),
    );
    h
}

fn login(state: &str) -> PendingLogin {
    Cookies::new_login(state.into(), "n".into(), "v".into(), "/back".into())
}

#[test]
fn signed_session_cookie_round_trips_with_the_right_flags() {
    let c = cookies(&[&[7u8; 32]]);
    let key = SessionKey::generate();
    let set = c.set_session(&key);
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
    let back = c.session_key(&request_with(&[&set])).unwrap();
    assert_eq!(*back, key);
    assert_eq!(back.store_key(), key.store_key());
}

#[test]
fn the_store_key_reveals_neither_id_nor_secret_nor_cookie() {
    let c = cookies(&[&[7u8; 32]]);
    let key = SessionKey::generate();
    let cookie = c.set_session(&key);
    let value = cookie.to_str().unwrap().split(';').next().unwrap();
    let store_key = key.store_key();
    assert_eq!(store_key.len(), 43);
    let raw = URL_SAFE_NO_PAD.decode(key.encode()).unwrap();
    let store_raw = URL_SAFE_NO_PAD.decode(store_key).unwrap();
    for window in raw.windows(4) {
        assert!(!store_raw.windows(4).any(|w| w == window));
    }
    assert!(!value.contains(store_key));
    // Another session, another store key.
    assert_ne!(SessionKey::generate().store_key(), store_key);
}

#[test]
fn tampered_foreign_and_swapped_cookies_are_refused() {
    let c = cookies(&[&[7u8; 32]]);
    let set = c.set_session(&SessionKey::generate());
    let text = set.to_str().unwrap().to_string();
    let value = text.split(';').next().unwrap().split_once('=').unwrap().1;
    let mut flipped = value.as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let tampered =
        HeaderValue::try_from(text.replace(value, std::str::from_utf8(&flipped).unwrap())).unwrap();
    assert_eq!(c.session_key(&request_with(&[&tampered])), None);
    let foreign = cookies(&[&[9u8; 32]]).set_session(&SessionKey::generate());
    assert_eq!(c.session_key(&request_with(&[&foreign])), None);
    // A login cookie is not a session cookie under another name.
    let login_cookie = c.set_login(&login("st")).unwrap();
    let login_text = login_cookie.to_str().unwrap();
    let login_name = login_text.split('=').next().unwrap();
    let swapped = HeaderValue::try_from(login_text.replacen(login_name, "_emp", 1)).unwrap();
    assert_eq!(c.session_key(&request_with(&[&swapped])), None);
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_static("_emp=no-dot-here; _emp=x.%%%"),
    );
    assert_eq!(c.session_key(&h), None);
}

#[test]
fn rotation_first_secret_signs_all_verify() {
    let old = cookies(&[&[1u8; 32]]);
    let rotated = cookies(&[&[2u8; 32], &[1u8; 32]]);
    let k1 = SessionKey::generate();
    assert_eq!(
        rotated
            .session_key(&request_with(&[&old.set_session(&k1)]))
            .as_deref(),
        Some(&k1)
    );
    let k2 = SessionKey::generate();
    let from_new = rotated.set_session(&k2);
    assert_eq!(old.session_key(&request_with(&[&from_new])), None);
    assert_eq!(
        cookies(&[&[2u8; 32]])
            .session_key(&request_with(&[&from_new]))
            .as_deref(),
        Some(&k2)
    );
    // Login cookies rotate the same way.
    let l = old.set_login(&login("s1")).unwrap();
    assert!(rotated.login(&request_with(&[&l]), "s1").is_some());
}

#[test]
fn each_login_has_its_own_sealed_cookie_bound_to_its_state() {
    let c = cookies(&[&[7u8; 32]]);
    let a = c.set_login(&login("state-a")).unwrap();
    let b = c.set_login(&login("state-b")).unwrap();
    let name = |v: &HeaderValue| v.to_str().unwrap().split('=').next().unwrap().to_string();
    assert_ne!(name(&a), name(&b));
    assert!(name(&a).starts_with("_emp_csrf_"));
    for flag in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=600",
    ] {
        assert!(a.to_str().unwrap().contains(flag), "{flag}");
    }
    // Nothing of the login is readable in the cookie.
    assert!(!a.to_str().unwrap().contains("/back"));
    let both = request_with(&[&a, &b]);
    let got = c.login(&both, "state-a").unwrap();
    assert_eq!(
        (got.state.as_str(), got.return_to.as_str()),
        ("state-a", "/back")
    );
    assert_eq!(c.login(&both, "state-b").unwrap().state, "state-b");
    assert!(c.login(&both, "state-c").is_none());
    // Another login's cookie under this state's name does not open.
    let renamed =
        HeaderValue::try_from(b.to_str().unwrap().replacen(&name(&b), &name(&a), 1)).unwrap();
    assert!(c.login(&request_with(&[&renamed]), "state-a").is_none());
}

#[test]
fn an_expired_login_cookie_is_nothing_whatever_its_max_age() {
    let c = cookies(&[&[7u8; 32]]);
    let mut old = login("st");
    old.issued_at -= LOGIN_COOKIE_TTL.as_millis() as u64 + 1;
    let set = c.set_login(&old).unwrap();
    assert!(c.login(&request_with(&[&set]), "st").is_none());
    // ...and is pruned.
    assert_eq!(c.prune_logins(&request_with(&[&set]), 5).len(), 1);
}

#[test]
fn a_browser_keeps_at_most_the_newest_login_cookies() {
    let c = cookies(&[&[7u8; 32]]);
    let mut sets = Vec::new();
    for i in 0..7u64 {
        let mut l = login(&format!("state-{i}"));
        l.issued_at -= 100 - i; // state-0 is the oldest
        sets.push(c.set_login(&l).unwrap());
    }
    let refs: Vec<&HeaderValue> = sets.iter().collect();
    let dropped = c.prune_logins(&request_with(&refs), MAX_LOGIN_COOKIES - 1);
    assert_eq!(dropped.len(), 3);
    for (i, set) in sets.iter().enumerate().take(3) {
        let name = set.to_str().unwrap().split('=').next().unwrap();
        assert!(
            dropped
                .iter()
                .any(|d| d.to_str().unwrap().starts_with(&format!("{name}=;"))),
            "state-{i} not dropped"
        );
    }
    assert!(
        dropped
            .iter()
            .all(|d| d.to_str().unwrap().contains("Max-Age=0"))
    );
}

/// How many verified cookies this thread remembers.
fn remembered() -> usize {
    VERIFIED.with_borrow(|v| v.young.len() + v.old.len())
}

#[test]
fn a_cookie_verified_once_is_remembered_and_no_near_copy_passes_for_it() {
    let c = cookies(&[&[7u8; 32]]);
    let key = SessionKey::generate();
    let set = c.set_session(&key);
    let first = c.session_key(&request_with(&[&set])).unwrap();
    let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
    let value = pair.split_once('=').unwrap().1.to_string();
    let hash = VERIFIED.with_borrow(|v| v.slot(value.as_bytes()));
    assert!(
        VERIFIED.with_borrow(|v| v.young.contains_key(&hash)),
        "remembered"
    );
    // The same value again: the same key, from memory.
    let again = c.session_key(&request_with(&[&set])).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    // Spelled with blanks around it, still the same cookie.
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::try_from(format!("a=1;  _emp = {value} ;b=2")).unwrap(),
    );
    assert!(Arc::ptr_eq(&c.session_key(&h).unwrap(), &first));
    // Every one-character change of the remembered value is refused.
    for i in 0..value.len() {
        let mut bytes = value.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::try_from(format!("_emp={changed}")).unwrap(),
        );
        assert_eq!(c.session_key(&h), None, "changed at {i}");
    }
    // So is the value with a byte more or less, or without its tag.
    let untagged = value.rsplit_once('.').unwrap().0.to_string();
    for changed in [
        format!("{value}A"),
        value[..value.len() - 1].to_string(),
        untagged,
    ] {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::try_from(format!("_emp={changed}")).unwrap(),
        );
        assert_eq!(c.session_key(&h), None);
    }
}

#[test]
fn remembered_cookies_are_forgotten_with_their_secret_and_by_other_keys() {
    let c = cookies(&[&[1u8; 32]]);
    let key = SessionKey::generate();
    let set = c.set_session(&key);
    assert!(c.session_key(&request_with(&[&set])).is_some());
    // Another sidecar's keys on the same thread do not trust it.
    let other = cookies(&[&[2u8; 32]]);
    assert_eq!(other.session_key(&request_with(&[&set])), None);
    assert!(c.session_key(&request_with(&[&set])).is_some());
    // A reload that keeps the secret (second now) keeps the session...
    c.set_secrets(&[Secret::new(vec![3u8; 32]), Secret::new(vec![1u8; 32])]);
    assert!(c.session_key(&request_with(&[&set])).is_some());
    // ...one that drops it ends it, remembered or not.
    c.set_secrets(&[Secret::new(vec![3u8; 32])]);
    assert_eq!(c.session_key(&request_with(&[&set])), None);
}

#[test]
fn the_memory_of_verified_cookies_is_bounded() {
    let c = cookies(&[&[9u8; 32]]);
    let sets: Vec<HeaderValue> = (0..2 * Verified::GENERATION + 100)
        .map(|_| c.set_session(&SessionKey::generate()))
        .collect();
    for set in &sets {
        assert!(c.session_key(&request_with(&[set])).is_some());
        assert!(remembered() <= 2 * Verified::GENERATION);
    }
    // The newest are remembered, the oldest were dropped (and verify again).
    assert!(remembered() >= Verified::GENERATION);
    assert!(c.session_key(&request_with(&[&sets[0]])).is_some());
}

#[test]
fn an_overlong_return_url_returns_to_the_root() {
    let l = Cookies::new_login("s".into(), "n".into(), "v".into(), "/".repeat(5000));
    assert_eq!(l.return_to, "/");
}

#[test]
fn host_prefixed_cookies_are_secure_path_root_and_without_domain() {
    let c = Cookies::new(
        vec![Secret::new(vec![7u8; 32])],
        "__Host-emp",
        true,
        Duration::from_secs(60),
    );
    let session = c.set_session(&SessionKey::generate());
    let login = c.set_login(&login("st")).unwrap();
    for set in [&session, &login, &c.clear_session(), &c.clear_login("st")] {
        let text = set.to_str().unwrap();
        assert!(text.starts_with("__Host-emp"), "{text}");
        assert!(text.contains("Secure") && text.contains("Path=/"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("domain"), "{text}");
    }
    assert!(c.session_key(&request_with(&[&session])).is_some());
    assert!(c.login(&request_with(&[&login]), "st").is_some());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_session_cookie_round_trips_and_any_change_to_it_is_refused(
            flip in 0usize..200,
            secret in proptest::collection::vec(any::<u8>(), 32..64),
        ) {
            let c = Cookies::new(vec![Secret::new(secret)], "_emp", true, Duration::from_secs(60));
            let key = SessionKey::generate();
            let set = c.set_session(&key);
            let back = c.session_key(&request_with(&[&set]));
            prop_assert_eq!(back.as_deref(), Some(&key));
            // One character of the value changed: no session.
            let text = set.to_str().unwrap();
            let value = text.split(';').next().unwrap().split_once('=').unwrap().1;
            let i = flip % value.len();
            let mut bytes = value.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = text.replacen(value, std::str::from_utf8(&bytes).unwrap(), 1);
            let changed = HeaderValue::try_from(changed).unwrap();
            prop_assert_eq!(c.session_key(&request_with(&[&changed])), None);
        }

        #[test]
        fn a_login_cookie_round_trips_any_state_and_return_url(
            state in "[A-Za-z0-9_-]{1,64}",
            rd in "/[ -~]{0,200}",
        ) {
            let c = cookies(&[&[3u8; 32]]);
            let l = Cookies::new_login(state.clone(), "n".into(), "v".into(), rd.clone());
            let set = c.set_login(&l).unwrap();
            let got = c.login(&request_with(&[&set]), &state).unwrap();
            prop_assert_eq!(got.state, state);
            prop_assert_eq!(got.return_to, rd);
        }

        #[test]
        fn arbitrary_cookie_headers_are_no_session_and_no_login(header in "[ -~]{0,300}") {
            let c = cookies(&[&[3u8; 32]]);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::try_from(header) {
                h.insert(header::COOKIE, v);
            }
            prop_assert!(c.session_key(&h).is_none());
            prop_assert!(c.login(&h, "state").is_none());
            prop_assert!(c.prune_logins(&h, 0).len() <= 300);
        }
    }
}
