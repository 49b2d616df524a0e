//! Configuration loading and validation.

use super::*;

const SECRET: &str = "dGhpcyBpcyBhIDMyIGJ5dGUgY29va2llIHNlY3JldCE="; // 32 bytes

fn minimal() -> String {
    format!(
        r#"
[provider]
base_url = "https://emp.example"
client_id = "app-key"
redirect_url = "https://app.example/oauth2/callback"
[session]
cookie_secret = "{SECRET}"
"#
    )
}

fn problems(toml: &str) -> Vec<Problem> {
    match Config::from_toml_str(toml) {
        Ok(_) => panic!("expected problems"),
        Err(p) => p.0,
    }
}

#[test]
fn minimal_config_loads_with_defaults() {
    let c = Config::from_toml_str(&minimal()).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:4180");
    assert_eq!(c.server.max_header_bytes, 32768);
    assert_eq!(c.session.lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(c.token.refresh_margin, Duration::from_secs(60));
    assert_eq!(c.provider.callback_path(), "/oauth2/callback");
    assert_eq!(c.session.cookie_secrets[0].expose().len(), 32);
    assert!(c.server.tls.is_none());
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let toml = r#"
[server]
listen = "not-an-address"
max_header_bytes = "big"
idle_timeout = "soon"
[log]
format = "xml"
[upstream]
url = "ftp://x"
[provider]
kind = "saml"
[session]
cookie_secret = "c2hvcnQ="
[routes]
skip_auth = ["(unclosed"]
[headers.claims]
"X-Group" = "groups"
"#;
    let keys: Vec<String> = problems(toml).into_iter().map(|p| p.key).collect();
    for key in [
        "server.listen",
        "server.max_header_bytes",
        "server.idle_timeout",
        "log.format",
        "upstream.url",
        "provider.kind",
        "provider.client_id",
        "provider.redirect_url",
        "session.cookie_secret",
        "routes.skip_auth",
        "headers.claims.X-Group",
    ] {
        assert!(
            keys.contains(&key.to_string()),
            "{key} missing from {keys:?}"
        );
    }
}

#[test]
fn unknown_keys_are_problems() {
    let toml = format!(
        "{}\n[server]\nlisten_addr = \"x\"\n[nonsense]\na = 1\n",
        minimal()
    );
    let keys: Vec<String> = problems(&toml).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["nonsense", "server.listen_addr"]);
}

#[test]
fn cookie_secret_accepts_url_safe_unpadded_and_rotation_lists() {
    // 32 bytes whose base64 needs '-' and '_' in the URL-safe alphabet.
    let url_safe = "-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8";
    assert_eq!(decode_cookie_secret(url_safe).unwrap().expose().len(), 32);
    let toml = minimal().replace(
        &format!("cookie_secret = \"{SECRET}\""),
        &format!("cookie_secret = [\"{url_safe}\", \"{SECRET}\"]"),
    );
    let c = Config::from_toml_str(&toml).unwrap();
    assert_eq!(c.session.cookie_secrets.len(), 2);
    assert!(decode_cookie_secret("c2hvcnQ").is_err());
    assert!(decode_cookie_secret("not base64 !!").is_err());
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    let client = dir.path().join("client");
    std::fs::write(&cookie, format!("{SECRET}\n")).unwrap();
    std::fs::write(&client, "s3cr3t-value\n").unwrap();
    let toml = format!(
        r#"
[provider]
base_url = "https://emp.example"
client_id = "app-key"
client_secret_file = {client:?}
redirect_url = "https://app.example/oauth2/callback"
[session]
cookie_secret_file = {cookie:?}
"#
    );
    let c = Config::from_toml_str(&toml).unwrap();
    assert_eq!(
        c.provider.client_secret.as_ref().unwrap().expose(),
        b"s3cr3t-value"
    );
    assert_eq!(c.session.cookie_secrets[0].expose().len(), 32);
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr3t"), "secret leaked into Debug output");
    assert!(debug.contains("Secret(12 bytes)"));
}

#[test]
fn inline_and_file_secret_together_is_a_problem() {
    let toml = minimal().replace(
        "[session]\n",
        "[session]\ncookie_secret_file = \"/nonexistent\"\n",
    );
    let keys: Vec<String> = problems(&toml).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        vec!["session.cookie_secret_file", "session.cookie_secret"]
    );
}

#[test]
fn upbond_and_oidc_need_a_secret_and_get_their_own_defaults() {
    for kind in ["upbond", "oidc"] {
        let toml = minimal().replace("[provider]\n", &format!("[provider]\nkind = {kind:?}\n"));
        let p = problems(&toml);
        assert!(p.iter().any(|p| p.key == "provider.client_secret"), "{p:?}");
    }
    let upbond = minimal().replace(
        "[provider]\nbase_url = \"https://emp.example\"\n",
        "[provider]\nkind = \"upbond\"\nclient_secret = \"s\"\n",
    );
    let c = Config::from_toml_str(&upbond).unwrap();
    assert_eq!(c.provider.base_url.as_str(), "https://auth3.upbond.io/");
    assert_eq!(
        c.provider.token_auth_method,
        TokenAuthMethod::ClientSecretPost
    );
    assert_eq!(c.provider.leeway, Duration::from_secs(30));
    assert_eq!(c.provider.discovery_refresh, Duration::from_secs(3600));
    assert!(!c.provider.userinfo);
    // An OpenID provider has no default issuer.
    let oidc = upbond.replace("\"upbond\"", "\"oidc\"");
    let keys: Vec<String> = problems(&oidc).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["provider.base_url"]);
    let oidc = oidc.replace(
        "kind = \"oidc\"\n",
        "kind = \"oidc\"\nbase_url = \"https://op.example\"\n",
    );
    let c = Config::from_toml_str(&oidc).unwrap();
    assert_eq!(
        c.provider.token_auth_method,
        TokenAuthMethod::ClientSecretBasic
    );
    let bad = oidc.replace(
        "client_secret = \"s\"\n",
        "client_secret = \"s\"\ntoken_auth_method = \"private_key_jwt\"\nleeway = \"1h\"\n",
    );
    let keys: Vec<String> = problems(&bad).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["provider.token_auth_method", "provider.leeway"]);
}

#[test]
fn workers_default_to_one_per_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let c = Config::from_toml_str(&minimal()).unwrap();
    assert_eq!(c.server.workers, 0);
    assert_eq!(crate::server::worker_count(&c), cpus);
    let c = Config::from_toml_str(&format!("{}\n[server]\nworkers = 3\n", minimal())).unwrap();
    assert_eq!(crate::server::worker_count(&c), 3);
}

#[test]
fn workers_run_under_sched_batch_by_default() {
    use crate::config::WorkerScheduling;
    let c = Config::from_toml_str(&minimal()).unwrap();
    assert_eq!(c.server.worker_scheduling, WorkerScheduling::Batch);
    let toml = format!("{}\n[server]\nworker_scheduling = \"normal\"\n", minimal());
    let c = Config::from_toml_str(&toml).unwrap();
    assert_eq!(c.server.worker_scheduling, WorkerScheduling::Normal);
    let toml = format!("{}\n[server]\nworker_scheduling = \"rt\"\n", minimal());
    let keys: Vec<String> = problems(&toml).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["server.worker_scheduling"]);
}

#[test]
fn idle_timeout_defaults_to_lifetime() {
    let c = Config::from_toml_str(&minimal()).unwrap();
    assert_eq!(c.session.idle_timeout, c.session.lifetime);
    let toml = minimal().replace("[session]\n", "[session]\nidle_timeout = \"30m\"\n");
    assert_eq!(
        Config::from_toml_str(&toml).unwrap().session.idle_timeout,
        Duration::from_secs(1800)
    );
}

#[test]
fn redirect_domains_must_be_host_names() {
    let toml = format!(
        "{}\n[routes]\nallowed_redirect_domains = [\".example.com\", \"https://x/\"]\n",
        minimal()
    );
    let p = problems(&toml);
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("https://x/"));
}

#[test]
fn toml_syntax_error_is_one_clear_problem() {
    let p = problems("[server\nlisten = 1");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "config");
}

#[test]
fn the_redis_store_needs_exactly_one_topology_and_valid_urls() {
    let with = |extra: &str| format!("{}store = \"redis\"\n{extra}", minimal());
    let keys = |toml: &str| -> Vec<String> { problems(toml).into_iter().map(|p| p.key).collect() };
    assert_eq!(keys(&with("")), ["session.redis"]);
    assert_eq!(
        keys(&with(
            "[session.redis]\nurl = \"redis://a:6379\"\ncluster_urls = [\"redis://b:6379\"]"
        )),
        ["session.redis"]
    );
    assert_eq!(
        keys(&with("[session.redis]\nurl = \"http://a:6379\"")),
        ["session.redis.url"]
    );
    assert_eq!(
        keys(&with(
            "[session.redis]\nsentinel_urls = [\"redis://s:26379\"]"
        )),
        ["session.redis.sentinel_master"]
    );
    assert_eq!(
        keys(&with(
            "[session.redis]\nurl = \"redis://a\"\nkey_prefix = \"{x}\""
        )),
        ["session.redis.key_prefix"]
    );
    let c = Config::from_toml_str(&with(
        "[session.redis]\ncluster_urls = [\"redis://a:7000\", \"rediss://b:7001\"]\npassword = \"pw\"",
    ))
    .unwrap();
    let StoreKind::Redis(r) = &c.session.store else {
        panic!("not redis")
    };
    assert!(matches!(&r.topology, RedisTopology::Cluster(urls) if urls.len() == 2));
    assert_eq!(r.password.as_ref().unwrap().expose(), b"pw");
    assert_eq!(r.key_prefix, "emp-sidecar:");
    assert_eq!(r.timeout, Duration::from_secs(1));
}

#[test]
fn host_prefixed_cookie_names_need_secure_cookies() {
    let with = |extra: &str| format!("{}{extra}", minimal());
    let c = Config::from_toml_str(&with("cookie_name = \"__Host-emp\"\n")).unwrap();
    assert_eq!(c.session.cookie_name, "__Host-emp");
    for name in ["__Host-emp", "__Secure-emp"] {
        let keys: Vec<String> = problems(&with(&format!(
            "cookie_name = \"{name}\"\ncookie_secure = false\n"
        )))
        .into_iter()
        .map(|p| p.key)
        .collect();
        assert_eq!(keys, ["session.cookie_secure"], "{name}");
    }
}

#[test]
fn changed_keys_names_each_leaf_that_differs_and_nothing_else() {
    let a = Config::from_toml_str(&minimal()).unwrap();
    assert!(a.changed_keys(&a.clone()).is_empty());
    // The same values written another way (a default spelled out) are no change.
    let same = format!("{}\n[server]\nmax_header_bytes = 32768\n", minimal());
    assert!(
        a.changed_keys(&Config::from_toml_str(&same).unwrap())
            .is_empty()
    );
    let b = Config::from_toml_str(&format!(
        "{}\n[server]\nmax_header_bytes = 16384\n[routes]\nskip_auth = [\"^/p/\"]\n[headers.claims]\n\"X-A\" = \"/a\"\n",
        minimal().replace("app-key", "other-key")
    ))
    .unwrap();
    assert_eq!(
        a.changed_keys(&b),
        [
            "headers.claims.X-A",
            "provider.client_id",
            "routes.skip_auth",
            "server.max_header_bytes"
        ]
    );
    // Nothing secret in the debug form of what is compared.
    assert!(!format!("{a:?}").contains(SECRET));
}

#[test]
fn the_backend_url_header_is_a_free_header_name_or_off() {
    let c = Config::from_toml_str(&minimal()).unwrap();
    assert_eq!(
        c.headers.backend_url.as_ref().map(HeaderName::as_str),
        Some("x-emp-backend-url")
    );
    let off =
        Config::from_toml_str(&format!("{}\n[headers]\nbackend_url = \"\"\n", minimal())).unwrap();
    assert!(off.headers.backend_url.is_none());
    for (value, extra, says) in [
        ("Authorization", "", "managed by the proxy"),
        (
            "X-Country",
            "[headers.claims]\n\"X-Country\" = \"/c\"\n",
            "already carries a claim",
        ),
        ("bad header", "", "not a valid header name"),
    ] {
        let p = problems(&format!(
            "{}\n[headers]\nbackend_url = {value:?}\n{extra}",
            minimal()
        ));
        assert!(
            p.iter()
                .any(|p| p.key == "headers.backend_url" && p.message.contains(says)),
            "{value}: {p:?}"
        );
    }
}
