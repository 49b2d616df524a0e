//! Bytes per session in Redis at 100 000 sessions shaped like EMP DR logins
//! (the same shape as `session_memory`), written through the Redis store
//! into a redis-server started here on a free loopback port: Redis's own
//! `used_memory` before and after, and `MEMORY USAGE` of sample keys.
//!
//! Run: `cargo bench --bench redis_store` (needs `redis-server`, which
//! `./scripts/test` installs).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emp_sidecar::config::{Config, StoreKind};
use emp_sidecar::metrics::Metrics;
use emp_sidecar::session::redis::RedisStore;
use emp_sidecar::session::{IdentityRules, SessionKey, SessionStore};

#[path = "shape.rs"]
mod shape;

const SESSIONS: usize = 100_000;
const CONCURRENCY: usize = 64;

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn used_memory(port: u16) -> u64 {
    cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("emp-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (./scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(port, &["PING"]).trim() != "PONG" {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let version = cli(port, &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
        .unwrap_or_default();

    let toml = format!(
        "[provider]\nbase_url = \"https://emp.example\"\nclient_id = \"k\"\n\
         redirect_url = \"https://app.example/oauth2/callback\"\n\
         [session]\ncookie_secret = \"YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz\"\n\
         store = \"redis\"\n[session.redis]\nurl = \"redis://127.0.0.1:{port}\"\n\
         [headers.claims]\n\"X-Auth-Request-User\" = \"/sub\"\n"
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let StoreKind::Redis(redis) = &config.session.store else {
        unreachable!()
    };
    let rules = IdentityRules::new(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(
            RedisStore::new(
                redis,
                &config.session,
                rules.clone(),
                Duration::from_secs(60),
                Arc::new(Metrics::new().unwrap()),
            )
            .unwrap(),
        );
        store.start();
        while !store.ready().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = used_memory(port);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..CONCURRENCY {
            let (store, rules) = (store.clone(), rules.clone());
            tasks.push(tokio::spawn(async move {
                let mut keys = Vec::new();
                for n in (t..SESSIONS).step_by(CONCURRENCY) {
                    let key = SessionKey::generate();
                    store
                        .insert(&key, Arc::new(shape::dr_session(n, |c| rules.identity(c))))
                        .await
                        .unwrap();
                    if n % 10_000 == 0 {
                        keys.push(key);
                    }
                }
                keys
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.unwrap());
        }
        let took = started.elapsed();
        let after = used_memory(port);
        let keys: u64 = cli(port, &["DBSIZE"]).trim().parse().unwrap();
        assert_eq!(keys, SESSIONS as u64);
        let usage: Vec<u64> = samples
            .iter()
            .map(|k| {
                let key = format!("emp-sidecar:{{{}}}:s", k.store_key());
                cli(port, &["MEMORY", "USAGE", &key]).trim().parse().unwrap()
            })
            .collect();
        println!("redis-server {version}, {SESSIONS} sessions written in {took:.1?} ({:.0}/s, {CONCURRENCY} at a time)",
            SESSIONS as f64 / took.as_secs_f64());
        println!(
            "used_memory before: {:.1} MiB, after: {:.1} MiB, per session: {:.0} bytes",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            (after - before) as f64 / SESSIONS as f64
        );
        println!("MEMORY USAGE of sample session keys: {usage:?} bytes");
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
