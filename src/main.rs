//! The `emp-sidecar` command: parses the command line, loads and validates
//! the configuration (exit 2 with every problem, naming its key), sets up
//! logging, binds the listeners and serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use emp_sidecar::config::{Config, Problems};
use emp_sidecar::metrics::Metrics;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("invalid configuration ({}):", cli.config.display());
            eprint!("{problems}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            println!("configuration OK ({})", cli.config.display());
            ExitCode::SUCCESS
        }
        None => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("emp-sidecar: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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
    (config, prepared, metrics): (Config, server::Prepared, Arc<Metrics>),
) -> anyhow::Result<()> {
    // This runtime only accepts connections and waits for signals; the
    // workers that serve requests run their own (see `server::run`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        telemetry::init(&config.log);
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
        server::run(config, prepared, listeners, metrics, shutdown_signal()).await;
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
