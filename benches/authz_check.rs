//! What the authorization rules cost a request, alone: the per-request
//! work of `benches/authz.py`'s rules sidecar (choose the rule for the
//! path, check the session's cached facts), timed over millions of
//! iterations, against the whole request's server CPU in that benchmark.
//!
//! Run: `cargo bench --bench authz_check`.

mod shape;

use std::hint::black_box;
use std::time::Instant;

use emp_sidecar::authz::Policy;
use emp_sidecar::config::Config;
use emp_sidecar::session::Identity;

/// The configuration: the rules of `benches/authz.py`, shared through
/// `benches/authz_rules.toml`.
const RULES: &str = concat!(
    r#"
[provider]
base_url = "https://emp.example"
client_id = "k"
redirect_url = "https://a.example/oauth2/callback"
[session]
cookie_secret = "YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz"
"#,
    include_str!("authz_rules.toml")
);

fn main() {
    let policy = Policy::new(&Config::from_toml_str(RULES).expect("valid"));
    let session = shape::dr_session(1, |_| Identity::default());
    const N: u32 = 5_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..N {
            let profile = session.profile();
            let rule = policy.rule_for(black_box("/app/bench"));
            let ok = policy.check(rule, None, &profile.authz, &profile.claims);
            black_box(ok.is_ok());
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(N));
    }
    let admitted = {
        let profile = session.profile();
        policy
            .check(
                policy.rule_for("/app/bench"),
                None,
                &profile.authz,
                &profile.claims,
            )
            .is_ok()
    };
    assert!(admitted, "the benchmark's user must be admitted");
    println!("rule choice + check of cached facts: {best:.1} ns a request (best of 5 × {N})");
    println!(
        "against ~19 µs of server CPU a proxied request (benches/authz.py): {:.2} %",
        best / 19_000.0 * 100.0
    );
}
