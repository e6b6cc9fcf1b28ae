//! The `corral` command line: run, check, reload, echo, completions.
//!
//! Exit codes: 0 success; 1 the work failed (invalid config, bind error,
//! reload refused); 2 bad usage (from clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use corral::config::{self, ConfigError};
use corral::logging::LogFormat;
use corral::plan::Plan;
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
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Log lines as text or as JSON objects (default: $CORRAL_LOG_FORMAT, else text).
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate a config file: exit 0, or print every error as FILE:LINE:COL: reason.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also print what reloading FILE would change in the running corral.
        #[arg(long)]
        diff: bool,
        /// The running corral's admin endpoint, for --diff.
        #[arg(long, requires = "diff", default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Print the config file's JSON Schema (draft 7), for editors such as taplo.
    Schema,
    /// Ask a running corral to reload its config file.
    Reload {
        /// The admin endpoint's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Print a completion script for SHELL to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// A worker process; started by `corral run`, never by hand.
    #[command(hide = true)]
    Worker,
    /// A tiny upstream for demos and tests: answers 200 with JSON of the request.
    Echo {
        /// The address to listen on, as IP:PORT (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// The name it answers with, in the JSON and the x-backend header.
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// jemalloc, not glibc's malloc: tokio aligns every task to 128 bytes, which
/// glibc serves slowly, and its per-size slabs suit the churn of connection
/// and stream state. Measured in README (Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The flag wins over the environment; workers and a successor get the
    // choice in the environment.
    let format = match &cli.command {
        Command::Run {
            log_format: Some(LogFormatArg::Json),
            ..
        } => LogFormat::Json,
        Command::Run {
            log_format: Some(LogFormatArg::Text),
            ..
        } => LogFormat::Text,
        _ => LogFormat::from_env(),
    };
    corral::logging::init(format);
    let result = match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "corral", &mut std::io::stdout());
            Ok(())
        }
        Command::Run { config, .. } => {
            let _span = tracing::info_span!("master", pid = std::process::id()).entered();
            // Absolute, so that `/config` (and `check --diff` from any
            // folder) and the successor of a binary upgrade name the same
            // file. Not canonical: a ConfigMap's symlink must be followed
            // anew at each reload.
            std::path::absolute(&config)
                .map_err(anyhow::Error::from)
                .and_then(|config| corral::master::run(&config).map_err(anyhow::Error::from))
        }
        Command::Check {
            config,
            diff,
            admin,
        } => return check(&config, diff.then_some(admin)),
        Command::Schema => schema(),
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
            eprintln!("corral: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line. corral's errors name their cause
/// in their own message (so that a log line with `%error` is whole), so a
/// cause the text already ends with is not repeated.
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn check(path: &std::path::Path, diff_against: Option<SocketAddr>) -> ExitCode {
    let plan = match config::load(path) {
        Ok(plan) => plan,
        Err(e @ (ConfigError::Invalid { .. } | ConfigError::Read { .. })) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let unresolved =
        current_thread().map(|rt| rt.block_on(corral::master::discovery::unresolved(&plan)));
    for warning in unresolved.unwrap_or_default() {
        eprintln!("warning: {}: {warning}", path.display());
    }
    println!(
        "{}: ok ({} listeners, {} routes, {} upstreams)",
        path.display(),
        plan.listeners.len(),
        plan.routes.len(),
        plan.upstreams.len()
    );
    let Some(admin) = diff_against else {
        return ExitCode::SUCCESS;
    };
    match running_config(admin) {
        Ok((generation, running)) => {
            let changes = config::diff::diff(&running, &plan);
            if changes.is_empty() {
                println!("no changes against the running generation {generation}");
            } else {
                println!("changes against the running generation {generation}:");
                for line in changes {
                    println!("  {line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The token to send the admin endpoint, if the environment has one.
fn admin_token() -> Option<String> {
    std::env::var(corral::config::ADMIN_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
}

/// The config the corral at `admin` runs, from `GET /config`.
fn running_config(admin: SocketAddr) -> anyhow::Result<(u64, Plan)> {
    let (status, body) = current_thread()?
        .block_on(corral::admin::client::call(
            admin,
            http::Method::GET,
            "/config",
            admin_token().as_deref(),
        ))
        .with_context(|| format!("cannot reach the admin endpoint at {admin}"))?;
    anyhow::ensure!(
        status.is_success(),
        "the admin endpoint answered {status}: {body}"
    );
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let (Some(path), Some(text)) = (answer["path"].as_str(), answer["text"].as_str()) else {
        anyhow::bail!("the admin endpoint sent no config");
    };
    let plan = config::from_str(std::path::Path::new(path), text)
        .map_err(|e| anyhow::anyhow!("the running config no longer validates here:\n{e}"))?;
    Ok((answer["generation"].as_u64().unwrap_or(0), plan))
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn schema() -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(&config::schema())?;
    text.push('\n');
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(())
}

fn reload(admin: SocketAddr) -> anyhow::Result<()> {
    current_thread()?.block_on(async {
        let (status, body) = corral::admin::client::call(
            admin,
            http::Method::POST,
            "/reload",
            admin_token().as_deref(),
        )
        .await
        .with_context(|| format!("cannot reach the admin endpoint at {admin}"))?;
        anyhow::ensure!(status.is_success(), "reload refused ({status}):\n{body}");
        let answer: serde_json::Value =
            serde_json::from_str(&body).context("the admin endpoint's answer is not JSON")?;
        let generation = answer["generation"].as_u64().unwrap_or(0);
        if answer["unchanged"].as_bool() == Some(true) {
            println!("unchanged: still serving generation {generation}");
            return Ok(());
        }
        println!("reloaded: now serving generation {generation}");
        for change in answer["changes"].as_array().into_iter().flatten() {
            println!("  {}", change.as_str().unwrap_or_default());
        }
        Ok(())
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
