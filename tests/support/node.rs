//! A Node.js program the tests run (a real third-party server from npm,
//! installed by scripts/test): it prints one JSON event a line on stdout,
//! the first `{"event":"listening",...}`, and stops when its stdin closes.
//! The process is ours and is ended by PID when the handle drops.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct NodeScript {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<Value>>>,
    notify: mpsc::Receiver<()>,
    /// The `listening` event.
    pub listening: Value,
}

impl NodeScript {
    /// Runs `node script args…` in `tests/<dir>` (whose node_modules must
    /// hold `package`) and waits (at most 20 s) for its `listening` event.
    pub fn start(dir: &str, package: &str, script: &str, args: &[String]) -> NodeScript {
        let dir = format!("{}/tests/{dir}", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::path::Path::new(&format!("{dir}/node_modules/{package}")).exists(),
            "{package} is not installed: run ./scripts/test (it runs `npm ci` in {dir})"
        );
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(&dir)
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
        let mut node = NodeScript {
            child,
            stdin,
            events,
            notify,
            listening: Value::Null,
        };
        node.listening = node.wait_for("listening", Duration::from_secs(20));
        node
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
    pub fn wait_for(&mut self, name: &str, limit: Duration) -> Value {
        self.wait_for_count(name, 1, limit);
        self.events(name).into_iter().next().unwrap()
    }

    /// Waits (bounded) until `count` events named `name` have arrived.
    pub fn wait_for_count(&mut self, name: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.events(name).len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the node program sent fewer than {count} {name:?} events in {limit:?}"
            );
            let _ = self.notify.recv_timeout(left);
        }
    }

    /// Sends one line to the program's stdin.
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        // Closing stdin stops it; the kill is for a program that hangs.
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
