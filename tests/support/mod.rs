//! Test support: a real upstream HTTP server, the sidecar run in-process on
//! port 0, and the sidecar binary run as a child process. Every wait here is
//! bounded.

#![allow(dead_code)]

pub mod browser;
pub mod express;
pub mod nginx;
pub mod node;
pub mod openid;
pub mod redis;
pub mod upbond;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emp_sidecar::config::Config;
use emp_sidecar::metrics::Metrics;
use emp_sidecar::server::{self, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A 32-byte cookie secret for tests.
pub const COOKIE_SECRET: &str = "dGVzdC1vbmx5LWNvb2tpZS1zZWNyZXQtMzItYnl0ZXM=";

/// Builds a sidecar configuration: each section is a list of TOML lines.
#[derive(Clone)]
pub struct Conf {
    server: Vec<String>,
    upstream: Vec<String>,
    routes: Vec<String>,
    headers: Vec<String>,
    claims: Vec<String>,
    log: Vec<String>,
    provider: Vec<String>,
    session: Vec<String>,
    redis: Vec<String>,
    token: Vec<String>,
    /// TOML appended as it is (`[authorization]`, `[[authorization.rules]]`).
    tail: String,
}

impl Conf {
    /// Proxies to `upstream`; `/public/` and `/ws` need no login.
    pub fn new(upstream: &str) -> Self {
        Self {
            server: vec!["listen = \"127.0.0.1:0\"".into()],
            upstream: vec![format!("url = {upstream:?}")],
            routes: vec![r#"skip_auth = ["^/public/", "^/ws$"]"#.into()],
            headers: Vec::new(),
            claims: Vec::new(),
            log: Vec::new(),
            provider: vec![
                "base_url = \"http://127.0.0.1:9\"".into(),
                "client_id = \"demo-app-key\"".into(),
                "redirect_url = \"http://{SIDECAR}/oauth2/callback\"".into(),
            ],
            session: vec![
                format!("cookie_secret = {COOKIE_SECRET:?}"),
                "cookie_secure = false".into(),
            ],
            redis: Vec::new(),
            token: Vec::new(),
            tail: String::new(),
        }
    }
    /// Shares sessions through the Redis at `url` (`session.store = "redis"`).
    pub fn redis_store(self, url: &str) -> Self {
        self.session("store = \"redis\"")
            .redis(&format!("url = {url:?}"))
    }
    pub fn redis(mut self, line: &str) -> Self {
        set(&mut self.redis, line);
        self
    }
    /// Logs in with `emp` (its base URL, app key `demo-app-key`, `/profile` on).
    pub fn emp(self, base_url: &str) -> Self {
        self.provider(&format!("base_url = {base_url:?}"))
            .provider("profile = true")
            .claim("\"X-Auth-Request-User\" = \"/sub\"")
    }
    pub fn provider(mut self, line: &str) -> Self {
        set(&mut self.provider, line);
        self
    }
    pub fn session(mut self, line: &str) -> Self {
        set(&mut self.session, line);
        self
    }
    pub fn token(mut self, line: &str) -> Self {
        set(&mut self.token, line);
        self
    }
    pub fn server(mut self, line: &str) -> Self {
        set(&mut self.server, line);
        self
    }
    pub fn upstream(mut self, line: &str) -> Self {
        set(&mut self.upstream, line);
        self
    }
    pub fn routes(mut self, line: &str) -> Self {
        set(&mut self.routes, line);
        self
    }
    /// Appends TOML text (whole tables) after the sections above.
    pub fn append(mut self, toml: &str) -> Self {
        self.tail.push('\n');
        self.tail.push_str(toml);
        self.tail.push('\n');
        self
    }
    pub fn headers(mut self, line: &str) -> Self {
        set(&mut self.headers, line);
        self
    }
    pub fn claim(mut self, line: &str) -> Self {
        set(&mut self.claims, line);
        self
    }
    pub fn log(mut self, line: &str) -> Self {
        set(&mut self.log, line);
        self
    }
    pub fn toml(&self) -> String {
        let section = |name: &str, lines: &[String]| format!("[{name}]\n{}\n", lines.join("\n"));
        [
            section("server", &self.server),
            section("upstream", &self.upstream),
            section("log", &self.log),
            section("provider", &self.provider),
            section("session", &self.session),
            if self.redis.is_empty() {
                String::new()
            } else {
                section("session.redis", &self.redis)
            },
            section("token", &self.token),
            section("routes", &self.routes),
            section("headers", &self.headers),
            section("headers.claims", &self.claims),
            self.tail.clone(),
        ]
        .concat()
    }
}

/// Sets a `key = value` line, replacing an earlier line with the same key.
fn set(lines: &mut Vec<String>, line: &str) {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    lines.retain(|l| key(l) != key(line));
    lines.push(line.into());
}

/// The sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<bool>>,
}

impl Sidecar {
    /// Starts on 127.0.0.1:0; `{SIDECAR}` in the configuration stands for
    /// the address it got.
    pub async fn start(conf: &Conf) -> Sidecar {
        let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = main.local_addr().unwrap();
        let toml = conf.toml().replace("{SIDECAR}", &addr.to_string());
        let config = Config::from_toml_str(&toml).expect("test config is valid");
        let metrics = Arc::new(Metrics::new().unwrap());
        let prepared = server::prepare(&config, metrics.clone()).expect("test config prepares");
        let metrics_listener = match config.server.metrics_listen {
            Some(a) => Some(TcpListener::bind(a).await.unwrap()),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            main,
            metrics: metrics_listener,
        };
        let done = tokio::spawn(server::run(config, prepared, listeners, metrics, async {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            metrics_addr,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the drain and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("sidecar drained in time")
            .unwrap()
    }
}

/// The `emp-sidecar` binary as a child process; killed on drop if still running.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_emp-sidecar")
}

impl Process {
    /// Runs `emp-sidecar --config path` and waits (at most 20 s) for its
    /// "listening" log line, which names the bound address.
    pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("emp-sidecar listening")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(a) = v["listen"].as_str().and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(a);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let err_lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                err_lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "sidecar did not start; stderr: {:?}",
                    stderr.lock().unwrap()
                );
            }
        };
        Process {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident set size now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits at most `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes `conf` for the binary, on a free port chosen now (`{SIDECAR}`
/// becomes that address).
pub fn write_binary_config(dir: &Path, conf: &Conf) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let conf = conf.clone().server(&format!("listen = {addr:?}"));
    let path = dir.join("config.toml");
    std::fs::write(&path, conf.toml().replace("{SIDECAR}", &addr)).unwrap();
    path
}

/// Runs `emp-sidecar check-config` with the given file and environment.
pub fn check_config(config: &Path, envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check-config")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// What the test upstream saw of one header (all values), from its `echo` JSON.
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

/// GETs `url` as an API client with `cookie`; expects 200 and returns the
/// upstream's `echo` JSON.
pub async fn echo_with(cookie: &str, url: &str) -> serde_json::Value {
    let resp = http_client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

/// The value of the `/metrics` sample whose line starts with `series`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

/// How many calls to the IdP's `endpoint` the metrics have counted.
pub fn idp_calls(text: &str, endpoint: &str) -> f64 {
    metric(
        text,
        &format!("emp_sidecar_idp_request_duration_seconds_count{{endpoint=\"{endpoint}\"}}"),
    )
}

/// Sends raw bytes and reads until the server closes or `limit` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 5 s) until something accepts connections on `port`.
pub fn wait_for_port(port: u16) -> bool {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// GET `url` and return its body text.
pub async fn get_text(url: &str) -> String {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `/metrics` (at most 3 s) until `n` requests are in flight,
/// counting the scrape itself.
pub async fn wait_in_flight(metrics_url: &str, n: u32) -> bool {
    let client = http_client();
    for _ in 0..300 {
        let m = client
            .get(metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains(&format!("emp_sidecar_http_requests_in_flight {n}")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Sends authenticated requests to `url` (an upstream `echo`, at most 5 s)
/// until `emp` has answered a refresh; every request must succeed.
pub async fn browse_until_refresh(url: &str, cookie: &str, emp: &emp_sidecar::mock_emp::MockEmp) {
    for _ in 0..100 {
        echo_with(cookie, url).await;
        if emp.refreshes() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no refresh happened");
}

/// A mock EMP on 127.0.0.1:0 issuing tokens that live `token_lifetime`.
pub async fn mock_emp(token_lifetime: Duration) -> emp_sidecar::mock_emp::MockEmp {
    emp_sidecar::mock_emp::MockEmp::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        emp_sidecar::mock_emp::MockOptions {
            token_lifetime,
            ..Default::default()
        },
    )
    .unwrap()
}
