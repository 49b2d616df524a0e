//! The `emp-sidecar` command: parses the command line, loads and validates
//! the configuration (exit 2 with every problem, naming its key), sets up
//! logging, binds the listeners and serves until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use emp_sidecar::config::{Config, Problems};
use emp_sidecar::metrics::Metrics;
use emp_sidecar::mock_emp::{MockEmp, MockOptions};
use emp_sidecar::server::{self, Listeners};
use emp_sidecar::telemetry;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "emp-sidecar",
    version,
    about = "Reverse-proxy authentication sidecar for LG EMP, UPBOND Login 3.0 and OpenID Connect"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        global = true,
        env = "EMP_SIDECAR_CONFIG",
        default_value = "./config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration: exit 0, or print every problem and exit 2.
    CheckConfig,
    /// Run the sidecar, a mock EMP and a demo app in one process, no set-up.
    Demo {
        /// Where the sidecar listens.
        #[arg(long, default_value = "127.0.0.1:4180")]
        listen: SocketAddr,
    },
    /// Ask a running sidecar to reload its configuration (sends it SIGHUP,
    /// as `nginx -s reload`); in its container, the sidecar is PID 1.
    Reload {
        #[arg(long, default_value_t = 1)]
        pid: i32,
    },
    /// Run the mock EMP alone (local development without LG credentials).
    MockEmp {
        #[arg(long)]
        listen: SocketAddr,
        /// The EMP app key it accepts.
        #[arg(long, default_value = "demo-app-key")]
        client_id: String,
        /// Lifetime of the access tokens it issues, e.g. "3600s", "2m".
        #[arg(long, default_value = "3600s", value_parser = humantime::parse_duration)]
        token_lifetime: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo { listen }) => return exit(demo(listen)),
        Some(Command::MockEmp {
            listen,
            client_id,
            token_lifetime,
        }) => {
            let options = MockOptions {
                client_id,
                token_lifetime,
            };
            return exit(mock_emp(listen, options));
        }
        Some(Command::Reload { pid }) => return exit(send_hangup(pid)),
        Some(Command::CheckConfig) | None => {}
    }
    let loaded = match load(&cli.config) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("invalid configuration ({}):", cli.config.display());
            eprint!("{problems}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration OK ({})", cli.config.display());
        return ExitCode::SUCCESS;
    }
    exit(serve(&cli.config, loaded))
}

#[cfg(target_os = "linux")]
fn send_hangup(pid: i32) -> anyhow::Result<()> {
    anyhow::ensure!(pid > 0, "--pid: a process id, not {pid}");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("signalling process {pid}"));
    }
    println!("SIGHUP sent to process {pid}; its log tells how the reload went");
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send_hangup(pid: i32) -> anyhow::Result<()> {
    anyhow::bail!("reload: send SIGHUP to process {pid} with kill -HUP")
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emp-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // This runtime accepts connections and waits for signals (and, in the
    // demo, runs the mock EMP and the app); the workers that serve requests
    // run their own (see `server::run`).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn mock_emp(listen: SocketAddr, options: MockOptions) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen: cannot listen on {listen}"))?;
        let client_id = options.client_id.clone();
        let emp = MockEmp::start(listener, options)?;
        println!(
            "mock EMP listening on {} (client_id {client_id})",
            emp.base_url()
        );
        shutdown_signal().await;
        Ok(())
    })
}

fn demo(listen: SocketAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let (emp, app) = emp_sidecar::demo::start_parts().await?;
        let config = emp_sidecar::demo::config(listen, &emp.base_url(), app)
            .map_err(|p| anyhow::anyhow!("demo configuration: {p}"))?;
        telemetry::init(&config.log);
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let prepared = server::prepare(&config, metrics.clone())
            .map_err(|p| anyhow::anyhow!("demo configuration: {p}"))?;
        let main = TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen: cannot listen on {listen}"))?;
        println!("mock EMP on {}, demo app on http://{app}", emp.base_url());
        println!(
            "Open {} in your browser",
            emp_sidecar::demo::public_url(main.local_addr()?)
        );
        let listeners = Listeners {
            main,
            metrics: None,
        };
        server::run(config, prepared, listeners, metrics, shutdown_signal()).await;
        Ok(())
    })
}

/// Loads the file and builds what depends on it (TLS, upstream client), so
/// `check-config` finds exactly what would stop the proxy from starting.
fn load(path: &std::path::Path) -> Result<(Config, server::Prepared, Arc<Metrics>), Problems> {
    let config = Config::load(path)?;
    let metrics = Arc::new(Metrics::new().map_err(|e| {
        Problems(vec![emp_sidecar::config::Problem {
            key: "metrics".into(),
            message: e.to_string(),
            source: None,
        }])
    })?);
    let prepared = server::prepare(&config, metrics.clone())?;
    Ok((config, prepared, metrics))
}

fn serve(
    path: &std::path::Path,
    (config, prepared, metrics): (Config, server::Prepared, Arc<Metrics>),
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        telemetry::init(&config.log);
        // From here a SIGHUP reloads instead of ending the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let reloader = prepared.reloader(path, &config, metrics.clone());
        let main = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?;
        let metrics_listener = match config.server.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("server.metrics_listen: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        tracing::info!(
            listen = %main.local_addr()?,
            metrics_listen = ?metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
            upstream = %config.upstream.url,
            tls = config.server.tls.is_some(),
            workers = server::worker_count(&config),
            "emp-sidecar listening"
        );
        let listeners = Listeners {
            main,
            metrics: metrics_listener,
        };
        let reloader = Arc::new(reloader);
        let reloads = tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                // File reads: off the runtime that accepts connections.
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload_and_log()).await;
            }
        });
        server::run(config, prepared, listeners, metrics, shutdown_signal()).await;
        reloads.abort();
        Ok(())
    })
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
