//! A real `redis-server` (Debian's package, installed by scripts/test) on a
//! free loopback port, started by the test and stopped by PID when the
//! handle drops. Nothing is persisted to disk.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            dir,
        };
        r.spawn(&[]);
        r
    }

    /// Starts the server (again) on its port, with `extra` arguments.
    pub fn spawn(&mut self, extra: &[&str]) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        self.child = Some(child);
        assert!(self.wait_ready(), "redis-server did not answer on {port}");
    }

    /// Waits (at most 10 s) until PING answers PONG.
    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Every key, with its value dumped as bytes (strings, hashes).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self.cli(&["--scan"]);
        let mut out = Vec::new();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let kind = self.cli(&["TYPE", key]);
            let value = match kind.trim() {
                "hash" => {
                    Command::new("redis-cli")
                        .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--no-raw"])
                        .args(["HGETALL", key])
                        .output()
                        .unwrap()
                        .stdout
                }
                _ => {
                    Command::new("redis-cli")
                        .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--no-raw"])
                        .args(["GET", key])
                        .output()
                        .unwrap()
                        .stdout
                }
            };
            out.push((key.to_string(), value));
        }
        out
    }

    /// Stops the server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
