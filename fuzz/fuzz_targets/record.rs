//! Session records as a store returns them (after opening): any bytes are
//! a session or nothing, never a panic.
#![no_main]

use std::time::Duration;

use emp_sidecar::config::Config;
use emp_sidecar::session::{IdentityRules, record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RULES: IdentityRules = IdentityRules::new(
            &Config::from_toml_str(
                "[provider]\nbase_url = \"https://emp.example\"\nclient_id = \"k\"\n\
                 redirect_url = \"https://a.example/oauth2/callback\"\n\
                 [session]\ncookie_secret = \"YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz\"\n",
            )
            .expect("valid"),
        );
    }
    RULES.with(|rules| {
        if let Some(s) = record::decode(data, rules, Duration::from_secs(60), 1) {
            // What decodes encodes again, to the same tokens.
            let again = record::decode(&record::encode(&s), rules, Duration::from_secs(60), 1)
                .expect("a decoded record re-encodes");
            assert_eq!(again.tokens().access_token, s.tokens().access_token);
        }
    });
});
