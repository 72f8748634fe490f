//! `irmd`: the IPC resource manager daemon.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use o7s_irmd::config::Config;
use o7s_irmd::server::{Irmd, Options};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// The o7s IPC resource manager daemon.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run directory: lockfile `irmd.lock` and control socket `irmd.sock`.
    #[arg(long, env = "O7S_RUNDIR", default_value = o7s_irmd::DEFAULT_RUNDIR)]
    rundir: PathBuf,
    /// Prefix of the shared-memory objects (default: derived from the run directory, `o7s`
    /// for /run/o7s).
    #[arg(long, env = "O7S_SHM_PREFIX")]
    shm_prefix: Option<String>,
    /// irmd.conf (TOML, the reference's tables and keys) to apply at start-up: names and
    /// programs, then the local and eth-dix IPCPs (created, bootstrapped, names registered).
    /// Any error names its table or key, and the IRMd exits non-zero having stopped what it
    /// started.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let config = args
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .context("cannot use the configuration")?;
    let shm_prefix = args
        .shm_prefix
        .unwrap_or_else(|| o7s_irmd::shm_prefix_for(&args.rundir));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let irmd = Irmd::start(Options {
            rundir: args.rundir,
            shm_prefix,
            config,
        })
        .context("irmd cannot start")?;
        // The IPCP tables of the configuration are applied while serving; a failure stops
        // the IRMd (with what it started) and makes it exit non-zero.
        irmd.serve(async {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
        })
        .await
        .context("irmd.conf")?;
        Ok(())
    })
}
