//! A real third-party OpenID provider for the tests: oauth2-mock-server
//! (npm, pinned in tests/oidc/package-lock.json, installed by scripts/test)
//! run by Node.js through tests/oidc/provider.mjs. Events it prints (token
//! requests, userinfo calls, key rotations) are collected for the tests;
//! the process is ours and is ended by PID when the handle drops.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct OpenIdProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    pub issuer: String,
    events: Arc<Mutex<Vec<Value>>>,
    notify: mpsc::Receiver<()>,
}

fn dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc").to_string()
}

impl OpenIdProvider {
    /// Starts the provider on `port` (0: any), its tokens living `expires_in`.
    pub fn start(port: u16, expires_in: Duration) -> OpenIdProvider {
        assert!(
            std::path::Path::new(&format!("{}/node_modules/oauth2-mock-server", dir())).exists(),
            "oauth2-mock-server is not installed: run ./scripts/test (it runs `npm ci` in tests/oidc)"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(port.to_string())
            .arg(expires_in.as_secs().to_string())
            .current_dir(dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, notify) = mpsc::channel();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                    let _ = tx.send(());
                }
            }
        });
        let mut p = OpenIdProvider {
            child,
            stdin,
            issuer: String::new(),
            events,
            notify,
        };
        let listening = p.wait_for("listening", Duration::from_secs(20));
        p.issuer = listening["issuer"].as_str().unwrap().to_string();
        p
    }

    /// Every event so far named `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }

    /// Waits (bounded) for an event named `name`; returns the first.
    fn wait_for(&mut self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.events(name).into_iter().next() {
                return e;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the OpenID provider sent no {name:?} event in {limit:?}"
            );
            let _ = self.notify.recv_timeout(left);
        }
    }

    /// Publishes a new key (`RS256` or `ES256`) and signs with it from now on.
    pub fn rotate(&mut self, alg: &str) -> String {
        let before = self.events("rotated").len();
        writeln!(self.stdin.as_mut().unwrap(), "rotate {alg}").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.events("rotated").len() == before {
            assert!(Instant::now() < deadline, "no rotation");
            let _ = self.notify.recv_timeout(Duration::from_millis(100));
        }
        self.events("rotated").last().unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        // Closing stdin stops it; the kill is for a provider that hangs.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
