//! The configuration loader on any TOML text: a configuration or a list of
//! problems each naming a key, never a panic.
#![no_main]

use emp_sidecar::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = Config::from_toml_str(text) {
        assert!(!problems.0.is_empty());
        for p in &problems.0 {
            assert!(!p.key.is_empty());
        }
    }
});
