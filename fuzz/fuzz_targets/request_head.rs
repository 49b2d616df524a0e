//! Any bytes a client sends, against the real server (in this process, on
//! loopback): an answer or a closed connection, never a panic, a hang or a
//! 500; a head over the size limit is refused, and a head well under it is
//! never refused as too large.
//!
//! The sidecar runs with `max_header_bytes = 1024`, `skip_auth` on
//! `/public/`, an upstream and an IdP that refuse connections (502).
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use emp_sidecar::config::Config;
use emp_sidecar::metrics::Metrics;
use emp_sidecar::server::{self, Listeners};
use libfuzzer_sys::fuzz_target;

const MAX_HEADER_BYTES: usize = 1024;
/// hyper's own limit, past which it cannot buffer the head (`server.rs`).
const HARD_LIMIT: usize = 8192;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = main.local_addr().expect("addr");
                let toml = format!(
                    "[server]\nmax_header_bytes = {MAX_HEADER_BYTES}\nheader_read_timeout = \"2s\"\nworkers = 1\n\
                     [upstream]\nurl = \"http://127.0.0.1:9\"\n\
                     [provider]\nbase_url = \"http://127.0.0.1:9\"\nclient_id = \"k\"\n\
                     redirect_url = \"http://{addr}/oauth2/callback\"\n\
                     [session]\ncookie_secret = \"YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz\"\ncookie_secure = false\n\
                     [routes]\nskip_auth = [\"^/public/\"]\n\
                     [log]\nlevel = \"off\"\n"
                );
                let config = Config::from_toml_str(&toml).expect("valid config");
                let metrics = Arc::new(Metrics::new().expect("metrics"));
                let prepared = server::prepare(&config, metrics.clone()).expect("prepares");
                let listeners = Listeners { main, metrics: None };
                tx.send(addr).expect("send");
                server::run(config, prepared, listeners, metrics, std::future::pending()).await;
            });
        });
        rx.recv().expect("the server starts")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = TcpStream::connect(server()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // The server may close early (a refused head): a failed write is an answer too.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    if let Err(e) = s.read_to_end(&mut answer) {
        assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "no answer and no close within 10 s"
        );
    }
    // HTTP/2 with prior knowledge: frames come back; no panic or hang is
    // what is checked of those.
    if answer.is_empty() || data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        return;
    }
    assert!(answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "), "not a response: {:?}", String::from_utf8_lossy(&answer[..answer.len().min(64)]));
    let status: u16 = std::str::from_utf8(&answer[9..12.min(answer.len())])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    assert!(status != 500, "500 for {:?}", String::from_utf8_lossy(data));
    assert!(
        status < 500 || status == 502 || status == 503,
        "{status} for {:?}",
        String::from_utf8_lossy(data)
    );
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n");
    match head_end {
        // A head hyper cannot hold: refused, whatever it says.
        None if data.len() > HARD_LIMIT => assert!(matches!(status, 400 | 431), "{status}"),
        Some(end) if end > HARD_LIMIT => assert!(matches!(status, 400 | 431), "{status}"),
        // Well under the limit (each header may be counted a byte more than
        // written: "name:value" counts as "name: value"): never "too large".
        Some(end) => {
            let lines = data[..end].iter().filter(|b| **b == b'\n').count() + 1;
            if end + lines * 2 <= MAX_HEADER_BYTES {
                assert_ne!(status, 431, "a {end}-byte head refused as too large");
            }
        }
        None => {}
    }
});
