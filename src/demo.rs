//! `emp-sidecar demo`: the sidecar, a mock EMP and a small app that shows
//! the headers it received, in one process, with no set-up. Also the app
//! alone, for tests that want a page rendering the injected headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::RngCore as _;
use tokio::net::TcpListener;

use crate::auth::page::escape;
use crate::config::Config;
use crate::mock_emp::{MockEmp, MockOptions};

/// Access tokens in the demo live two minutes, so a refresh shows up in the
/// log after one (the default 60 s margin).
const DEMO_TOKEN_LIFETIME: Duration = Duration::from_secs(120);

/// Serves the header-showing app on `listener` from the current runtime.
pub fn start_app(listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(page(&req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let user = req
        .headers()
        .get("x-auth-request-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(nobody)");
    let mut rows = String::new();
    let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        for value in req.headers().get_all(name) {
            let text = String::from_utf8_lossy(value.as_bytes());
            let mark = if name.starts_with("x-auth-request-")
                || name == "authorization"
                || name == "x-forwarded-access-token"
            {
                " class=injected"
            } else {
                ""
            };
            rows.push_str(&format!(
                "<tr{mark}><th>{}</th><td><code>{}</code></td></tr>",
                escape(name),
                escape(&text)
            ));
        }
    }
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>emp-sidecar demo app</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}th{{text-align:left;padding-right:1rem}}
td code{{word-break:break-all}}tr.injected{{background:#e8f5e9}}</style></head>
<body><h1>Hello, <span id="user">{user}</span></h1>
<p>This app knows nothing about logins: emp-sidecar signed you in with the (mock) EMP and added the
highlighted headers to your request to <code>{path}</code>.</p>
<p><a href="/oauth2/userinfo">/oauth2/userinfo</a> · <a id="sign-out" href="/oauth2/sign_out">Sign out</a></p>
<table>{rows}</table></body></html>"#,
        user = escape(user),
        path = escape(req.uri().path()),
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The demo's configuration: the sidecar on `listen`, the mock EMP and the
/// app on the given addresses.
pub fn config(
    listen: SocketAddr,
    emp: &str,
    app: SocketAddr,
) -> Result<Config, crate::config::Problems> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::STANDARD.encode(secret);
    let public_host = if listen.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), listen.port())
    } else {
        listen
    };
    Config::from_toml_str(&format!(
        r#"
[server]
listen = "{listen}"
[log]
format = "pretty"
[upstream]
url = "http://{app}"
[provider]
kind = "emp"
base_url = "{emp}"
client_id = "demo-app-key"
redirect_url = "http://{public_host}/oauth2/callback"
profile = true
[session]
cookie_secret = "{secret}"
cookie_secure = false
[headers.claims]
"X-Auth-Request-User" = "/sub"
"X-Auth-Request-Email" = "/email"
"X-Auth-Request-Name" = "/name"
"#
    ))
}

/// Where to tell the user to go.
pub fn public_url(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("http://127.0.0.1:{}/", listen.port())
    } else {
        format!("http://{listen}/")
    }
}

/// Starts the mock EMP and the app on free loopback ports (current runtime).
pub async fn start_parts() -> std::io::Result<(MockEmp, SocketAddr)> {
    let emp = MockEmp::start(
        TcpListener::bind("127.0.0.1:0").await?,
        MockOptions {
            token_lifetime: DEMO_TOKEN_LIFETIME,
            ..MockOptions::default()
        },
    )?;
    let app_listener = TcpListener::bind("127.0.0.1:0").await?;
    let app = app_listener.local_addr()?;
    start_app(app_listener);
    Ok((emp, app))
}
