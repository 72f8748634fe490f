//! `cargo xtask`: the only entry points a newcomer needs.
//!
//! * `setup` installs the system packages o7s needs on Debian/Ubuntu (as root), or prints the
//!   command to run.
//! * `test` runs the whole test suite; tests that need root or XDP skip with a reason otherwise.
//! * `bench <pool|eth|irmd>` runs one benchmark scenario and ends with its one-line summary.
//! * `demo` will run a live two-host network (not implemented yet: issue "The main job").

mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "o7s developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing system packages (clang, libbpf headers, iproute2, ...).
    Setup {
        /// Only print what would be installed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the whole test suite (what CI runs).
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test-name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run a benchmark scenario; its last line is a one-line summary.
    Bench {
        #[arg(value_enum)]
        scenario: BenchScenario,
    },
    /// Start a live two-host o7s network (not implemented yet).
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchScenario {
    /// Pool alloc/free vs a Mutex<Vec<u32>>, flow-ring ping-pong vs a pipe.
    Pool,
    /// Ethernet layer over veth: packet vs xdp vs raw AF_XDP.
    Eth,
    /// IRMd flow allocation and local oping vs a Unix-socket ping-pong.
    Irmd,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup { dry_run } => setup::run(dry_run),
        Task::Test { args } => test(&args),
        Task::Bench { scenario } => bench(scenario),
        Task::Demo => bail!(
            "`cargo xtask demo` is not implemented yet: it needs the Ethernet IPCP, the IRMd and \
             the tools (open issues 3, 4 and 5). `cargo xtask test` runs what exists today."
        ),
    }
}

fn test(extra: &[String]) -> Result<()> {
    setup::ensure_installed()?;
    // Libraries, binaries, integration tests and doc tests of every crate (benchmarks are
    // `cargo xtask bench`'s job: they take minutes in a debug build).
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)
}

fn bench(scenario: BenchScenario) -> Result<()> {
    match scenario {
        BenchScenario::Pool => {
            run(cargo().args(["bench", "--locked", "-p", "o7s-pool", "--bench", "pool"]))
        }
        // Needs root (namespaces, veth, BPF); without it the bench says so and exits 0.
        BenchScenario::Eth => {
            run(cargo().args(["bench", "--locked", "-p", "o7s-xdp-ipcp", "--bench", "eth"]))
        }
        BenchScenario::Irmd => {
            bail!("`cargo xtask bench irmd` is not implemented yet: it needs the IRMd (issue 4)")
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion; a failure names the command.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
