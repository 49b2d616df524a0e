//! How a strict upstream routes a path: decode it once, split on `/`, drop
//! `;` parameters, fold empty segments and resolve dot segments. Shared by
//! the property tests (`tests.rs`) and the `path` fuzz target, which hold
//! the canonical form against it; not part of the sidecar itself.

pub fn strict_route(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::new();
    for seg in out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || decoded.ends_with('/') {
        s.push('/');
    }
    s
}
