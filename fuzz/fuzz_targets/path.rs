//! Request paths, differentially: whatever the raw path, the canonical form
//! is a fixed point, holds nothing ambiguous, and is what a strict app
//! (decode once, drop `;` parameters, resolve dot segments) routes to.
#![no_main]

use emp_sidecar::path::{canonical, for_each_form};
use libfuzzer_sys::fuzz_target;

#[path = "../../src/path/strict.rs"]
mod strict;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = canonical(raw) else {
        return;
    };
    // A fixed point.
    let again = canonical(&c).expect("the canonical form is a valid path");
    assert_eq!(again, c, "not a fixed point: {raw:?}");
    // Nothing a reader could take another way.
    assert!(c.starts_with('/'));
    assert!(!c.contains("//") && !c.contains('\\'), "{c:?}");
    let lower = c.to_ascii_lowercase();
    for esc in ["%2e", "%2f", "%5c", "%3b"] {
        assert!(!lower.contains(esc), "{c:?}");
    }
    for seg in c.split('/').skip(1) {
        let base = seg.split(';').next().unwrap_or_default();
        assert!(base != "." && base != "..", "{c:?}");
        assert!(!seg.starts_with(';'), "{c:?}");
    }
    // A strict app reads one of the forms rules are matched against.
    let routed = strict::strict_route(&c);
    let mut forms = Vec::new();
    for_each_form(&c, |f| {
        forms.push(f.to_string());
        true
    });
    assert!(
        forms.iter().any(|f| *f == routed || f.split('/').map(|s| s.split(';').next().unwrap_or_default()).collect::<Vec<_>>().join("/") == routed),
        "{c:?}: a strict app routes {routed:?}, rules see {forms:?}"
    );
});
