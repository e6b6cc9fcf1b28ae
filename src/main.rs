//! The `corral` command line: run, check, reload, echo.
//!
//! Exit codes: 0 success; 1 the work failed (invalid config, bind error,
//! reload refused); 2 bad usage (from clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use corral::config::{Config, ConfigError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "A clustered HTTP reverse proxy and load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start serving (foreground; logs to stderr).
    Run {
        #[arg(long, short, default_value = "config/corral.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every error as FILE:LINE:COL: reason.
    Check {
        #[arg(long, short, default_value = "config/corral.toml")]
        config: PathBuf,
    },
    /// Ask a running corral to reload its config file.
    Reload {
        /// The admin endpoint's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// A worker process; started by `corral run`, never by hand.
    #[command(hide = true)]
    Worker,
    /// A tiny upstream for demos and tests: answers 200 with JSON of the request.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => {
            let _span = tracing::info_span!("master", pid = std::process::id()).entered();
            corral::master::run(&config).map_err(anyhow::Error::from)
        }
        Command::Check { config } => return check(&config),
        Command::Reload { admin } => reload(admin),
        Command::Echo { listen, name } => echo(listen, name),
        Command::Worker => {
            let slot = std::env::var(corral::worker::process::ENV_SLOT).unwrap_or_default();
            let _span = tracing::info_span!("worker", %slot).entered();
            corral::worker::process::run().map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                path.display(),
                config.listeners.len(),
                config.routes.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e @ (ConfigError::Invalid { .. } | ConfigError::Read { .. })) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn reload(admin: SocketAddr) -> anyhow::Result<()> {
    current_thread()?.block_on(async {
        let (status, body) = corral::admin::client::post(admin, "/reload")
            .await
            .with_context(|| format!("cannot reach the admin endpoint at {admin}"))?;
        if status.is_success() {
            print!("{body}");
            Ok(())
        } else {
            anyhow::bail!("reload refused ({status}):\n{body}")
        }
    })
}

fn echo(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    current_thread()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, %name, "echo listening");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = corral::echo::serve(listener, name, shutdown) => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}
