//! `cargo xtask`: the only entry points a newcomer needs.
//!
//! * `setup` installs the system packages o7s needs on Debian/Ubuntu (as root), or prints the
//!   command to run.
//! * `test` runs the whole test suite; tests that need root or XDP skip with a reason otherwise.
//! * `bench <pool|eth|irmd>` runs one benchmark scenario and ends with its one-line summary.
//! * `vm-test [--backend netns|qemu|vagrant] [--scenario NAME]` runs the multi-host scenarios
//!   of `vm-tests/` (QEMU guests by default) and prints per-scenario results and the total time.
//! * `demo` will run a live two-host network (not implemented yet: issue "The main job").

mod demo;
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
    /// Run the multi-host scenarios (vm-tests/) on network namespaces, QEMU guests or the
    /// Vagrantfile's VMs.
    VmTest {
        #[arg(long, value_enum, default_value = "qemu")]
        backend: VmBackend,
        /// Scenarios to run, comma-separated (default: all of them).
        #[arg(long)]
        scenario: Option<String>,
        /// qemu: the guest kernel for every scenario, `6.12` or `7` (default: 6.12, and 7.x
        /// for the scenarios that need AF_XDP zero-copy).
        #[arg(long)]
        kernel: Option<String>,
        /// Echo guest consoles and step output.
        #[arg(long)]
        verbose: bool,
    },
    /// A live two-host o7s network: two namespaces over veth, an IRMd and an eth-dix IPCP
    /// (XDP) on each, 100 pings and a 5-second operf, then a report and a clean teardown.
    Demo(demo::DemoOptions),
}

#[derive(Clone, Copy, ValueEnum)]
enum VmBackend {
    /// Hosts are network namespaces on this machine.
    Netns,
    /// Hosts are QEMU guests (TCG unless VM_ACCEL=kvm) on a private bridge.
    Qemu,
    /// Hosts are the running VMs of the top-level Vagrantfile (a, b, c), over ssh.
    Vagrant,
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
        Task::VmTest {
            backend,
            scenario,
            kernel,
            verbose,
        } => vm_test(backend, scenario.as_deref(), kernel.as_deref(), verbose),
        Task::Demo(options) => {
            setup::ensure_installed()?;
            // `demo::run` prints its own last line (`demo: ok` / `demo: FAILED ...`).
            if demo::run(&options).is_err() {
                std::process::exit(1);
            }
            Ok(())
        }
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

fn vm_test(
    backend: VmBackend,
    only: Option<&str>,
    kernel: Option<&str>,
    verbose: bool,
) -> Result<()> {
    use o7s_vm_tests::{
        Backend, Verdict, image::KernelSeries, netns::Netns, qemu::Qemu, scenarios,
        vagrant::Vagrant,
    };
    let names: Vec<&str> = match only {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => scenarios::NAMES.to_vec(),
    };
    if let Some(name) = names.iter().find(|n| !scenarios::known(n)) {
        bail!(
            "unknown scenario {name}; known: {}",
            scenarios::NAMES.join(", ")
        );
    }
    let kernel = match kernel {
        None => None,
        Some(k) => Some(
            KernelSeries::parse(k)
                .ok_or_else(|| anyhow::anyhow!("--kernel {k:?}: expected 6.12 or 7"))?,
        ),
    };
    let mut backend: Box<dyn Backend> = match backend {
        VmBackend::Netns => Box::new(Netns { verbose }),
        VmBackend::Qemu => {
            setup::ensure_vm_packages()?;
            let mut qemu = Qemu::default();
            qemu.verbose = verbose;
            qemu.kernel = kernel;
            Box::new(qemu)
        }
        VmBackend::Vagrant => {
            let mut vagrant = Vagrant::default();
            vagrant.verbose = verbose;
            Box::new(vagrant)
        }
    };
    // Ctrl-C stops the run at the next check; the guards then remove namespaces and QEMU.
    o7s_vm_tests::catch_interrupts();
    let start = std::time::Instant::now();
    let mut failed = Vec::new();
    for name in names {
        let scenario = scenarios::by_name(name).expect("listed scenario");
        let outcome = o7s_vm_tests::run_scenario(backend.as_mut(), &scenario);
        println!("vm-test: {outcome}");
        if let Verdict::Fail(_) = outcome.verdict {
            failed.push(name);
        }
        if o7s_vm_tests::interrupted() {
            break;
        }
    }
    println!(
        "vm-test: total {:.1} s on {}",
        start.elapsed().as_secs_f64(),
        backend.name()
    );
    if !failed.is_empty() {
        bail!("failed scenarios: {}", failed.join(", "));
    }
    Ok(())
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
        // A real irmd, ipcpd-local and server process on a temporary run directory (no root).
        BenchScenario::Irmd => {
            run(cargo().args(["bench", "--locked", "-p", "o7s-cli", "--bench", "irmd"]))
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
