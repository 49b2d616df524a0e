//! A real `redis-server` (Debian's package, installed by scripts/test) on a
//! free loopback port, started by the test and stopped by PID when the
//! handle drops. Nothing is persisted to disk.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Serving TLS only, with this CA file (redis-cli needs it too).
    tls_ca: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis::unstarted();
        r.spawn(&[]);
        r
    }

    /// A port and a directory, no process yet.
    pub fn unstarted() -> Redis {
        Redis {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls_ca: None,
        }
    }

    /// A server that speaks TLS only, with a self-signed certificate for
    /// 127.0.0.1; the certificate's PEM file is its CA.
    pub fn start_tls() -> Redis {
        let mut r = Redis::unstarted();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = r.dir.path().join("redis.crt");
        let key = r.dir.path().join("redis.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let (cert, key) = (
            cert.to_str().unwrap().to_string(),
            key.to_str().unwrap().to_string(),
        );
        r.tls_ca = Some(cert.clone());
        let port = r.port.to_string();
        let dir = r.dir.path().to_str().unwrap().to_string();
        r.spawn_with(&[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ]);
        r
    }

    /// The CA file of a TLS server.
    pub fn ca_file(&self) -> Option<&str> {
        self.tls_ca.as_deref()
    }

    /// Starts the server (again) on its port, with `extra` arguments.
    pub fn spawn(&mut self, extra: &[&str]) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        args.extend([
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &dir,
        ]);
        args.extend(extra);
        self.spawn_with(&args);
    }

    /// Starts `redis-server` with exactly `args`.
    pub fn spawn_with(&mut self, args: &[&str]) {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        self.child = Some(child);
        assert!(
            self.wait_ready(),
            "redis-server did not answer on {}",
            self.port
        );
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
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert", ca]);
        }
        let out = cmd.args(args).output().ok()?;
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
            let read = match self.cli(&["TYPE", key]).trim() {
                "hash" => "HGETALL",
                "set" => "SMEMBERS",
                _ => "GET",
            };
            let value = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--no-raw"])
                .args([read, key])
                .output()
                .unwrap()
                .stdout;
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

/// A 3-master Redis Cluster on free loopback ports (`redis-server
/// --cluster-enabled yes`, joined by `redis-cli --cluster create`).
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut r = Redis::unstarted();
            r.spawn(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Every key of every node.
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        self.nodes.iter().flat_map(Redis::dump).collect()
    }
}

/// One master, one replica and one sentinel watching them as `mymaster`.
pub struct Sentinel {
    pub master: Redis,
    pub replica: Redis,
    pub sentinel: Redis,
}

impl Sentinel {
    pub fn start() -> Sentinel {
        let master = Redis::start();
        let mut replica = Redis::unstarted();
        let master_port = master.port.to_string();
        replica.spawn(&["--replicaof", "127.0.0.1", &master_port]);
        let mut sentinel = Redis::unstarted();
        let conf = sentinel.dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                port = sentinel.port,
                dir = sentinel.dir.path().display(),
            ),
        )
        .unwrap();
        sentinel.spawn_with(&[conf.to_str().unwrap(), "--sentinel"]);
        // The replica is in sync, and the sentinel knows it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
            || !sentinel
                .cli(&["SENTINEL", "REPLICAS", "mymaster"])
                .contains(&replica.port.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel set-up never settled"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sentinel {
            master,
            replica,
            sentinel,
        }
    }

    /// `SENTINEL FAILOVER`, then waits (bounded) until the replica is the master.
    pub fn failover(&self) {
        self.sentinel.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .replica
            .cli(&["INFO", "replication"])
            .contains("role:master")
            || !self
                .sentinel
                .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                .contains(&self.replica.port.to_string())
        {
            assert!(Instant::now() < deadline, "the failover did not complete");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
