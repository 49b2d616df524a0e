//! A real Express 5 app (npm, pinned in tests/express/package-lock.json,
//! installed by scripts/test) that keeps a secret under `/private` and
//! reports every request it serves with the URL it routed on.

use serde_json::Value;

use super::node::NodeScript;

pub struct ExpressApp {
    node: NodeScript,
    pub port: u16,
}

impl ExpressApp {
    pub fn start() -> ExpressApp {
        let node = NodeScript::start("express", "express", "app.mjs", &["0".into()]);
        let port = node.listening["port"].as_u64().unwrap() as u16;
        ExpressApp { node, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request the app has served: `{"page": …, "url": …}`.
    pub fn requests(&self) -> Vec<Value> {
        self.node.events("request")
    }
}

impl ExpressApp {
    /// Waits (at most 10 s) until the app has served `n` requests; returns them.
    pub fn wait_for_requests(&mut self, n: usize) -> Vec<Value> {
        self.node
            .wait_for_count("request", n, std::time::Duration::from_secs(10));
        self.requests()
    }
}
