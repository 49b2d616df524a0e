//! The real `/metrics` output after a login and a token refresh: it passes
//! `promtool check metrics` (Debian's `prometheus` package, which
//! `scripts/test` installs when missing), and the README's metrics table
//! and the Grafana dashboard name exactly what is exported.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::browser::Browser;
use support::{Conf, Sidecar, http_client, upstream};

/// Metric families in an exposition, from its `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Metric names a PromQL expression or a text mentions (`emp_sidecar_*`),
/// with histogram suffixes folded into the family name.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("emp_sidecar_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(&name)
            .to_string();
        out.insert(family);
    }
    out
}

async fn metrics_after_login_and_refresh() -> String {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(2)).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).emp(&emp.base_url())).await;
    let mut b = Browser::new();
    assert_eq!(b.login(&sc.url("/app/echo"), "alice").await.status(), 302);
    support::browse_until_refresh(&sc.url("/app/echo"), &b.cookie_header(), &emp).await;
    // One of each kind of error, so every labelled series has a sample.
    http_client().get(sc.url("/private")).send().await.unwrap();
    let text = support::get_text(&sc.url("/metrics")).await;
    sc.shutdown().await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_match_the_readme_and_the_dashboard() {
    let text = metrics_after_login_and_refresh().await;
    for sample in [
        r#"emp_sidecar_logins_total{result="success"} 1"#,
        r#"emp_sidecar_token_refreshes_total{result="success"}"#,
        r#"emp_sidecar_idp_request_duration_seconds_count{endpoint="refresh"}"#,
        "emp_sidecar_sessions_active 1",
    ] {
        assert!(text.contains(sample), "missing {sample}");
    }

    // promtool, on the real output.
    let version = Command::new("promtool")
        .arg("--version")
        .output()
        .expect("promtool: run ./scripts/test");
    eprintln!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );

    // The README lists every exported family, and nothing else.
    let exported = families(&text);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: String = readme
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();
    let documented: BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| `emp_sidecar_"))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        documented, exported,
        "README metrics table differs from /metrics"
    );
    // The SPEC's fixed names are among them.
    for name in [
        "emp_sidecar_http_requests_total",
        "emp_sidecar_http_request_duration_seconds",
        "emp_sidecar_logins_total",
        "emp_sidecar_token_refreshes_total",
        "emp_sidecar_idp_request_duration_seconds",
        "emp_sidecar_sessions_active",
    ] {
        assert!(exported.contains(name), "{name} not exported");
    }

    // The dashboard queries only exported metrics, and shows all of them.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/emp-sidecar.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(mentioned(target["expr"].as_str().unwrap()));
        }
    }
    assert_eq!(queried, exported, "dashboard and /metrics differ");
}
