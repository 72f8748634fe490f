//! Multi-host scenarios over network namespaces, QEMU guests and Vagrant VMs.
//!
//! A [`Scenario`] (hosts, links, ordered steps with assertions) runs unchanged on every
//! [`Backend`]:
//!
//! * [`netns::Netns`]: hosts are network namespaces on this machine, links are veth pairs (or a
//!   bridge in a namespace of its own for links with more than two ends);
//! * [`qemu::Qemu`]: hosts are QEMU guests booted from a Debian kernel and an initramfs written
//!   here; links are virtio-net NICs on multiqueue taps joined by a bridge, all inside a network
//!   namespace the backend creates, so guests have no route anywhere else;
//! * [`vagrant::Vagrant`]: hosts are the running VMs of the top-level `Vagrantfile`, reached
//!   over ssh; each run moves the VMs' private NICs into a network namespace of its own inside
//!   each VM, named as the scenario expects.
//!
//! Everything a run creates (namespaces, taps, bridges, processes, QEMU) has a drop guard.
//! `cargo xtask vm-test` is the entry point; `cargo test -p o7s-vm-tests` runs the netns backend.

pub mod artifacts;
pub mod cpio;
pub mod image;
pub mod netns;
pub mod o7s_eth;
pub mod qemu;
pub mod scenario;
pub mod scenarios;
mod util;
pub mod vagrant;

pub use util::{catch_interrupts, interrupted};

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use scenario::{Action, Expect, Scenario, Step};

/// How a scenario ended on a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The backend cannot run here (not root, a tool missing); the reason says what to do.
    Skip(String),
}

/// One scenario's result on one backend.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: String,
    pub backend: &'static str,
    pub verdict: Verdict,
    pub elapsed: Duration,
    pub notes: Vec<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let (scenario, backend) = (&self.scenario, self.backend);
        match &self.verdict {
            Verdict::Pass => write!(f, "{scenario} [{backend}]: ok ({secs:.1} s)")?,
            Verdict::Fail(r) => write!(f, "{scenario} [{backend}]: FAIL ({secs:.1} s): {r}")?,
            Verdict::Skip(r) => write!(f, "{scenario} [{backend}]: skipped: {r}")?,
        }
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

/// A way of running scenarios.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// Runs one scenario and cleans up everything it created, whatever the result. `Err` is for
    /// harness failures (a tool that could not start); a scenario that fails is `Ok(Fail)`.
    fn run(&mut self, scenario: &Scenario) -> anyhow::Result<Verdict>;
    /// Observations about the last run (e.g. how long guests took to boot).
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Runs one scenario on a backend, timing it.
pub fn run_scenario(backend: &mut dyn Backend, scenario: &Scenario) -> Outcome {
    let start = Instant::now();
    let verdict = match (&scenario.broken, scenario.validate()) {
        (Some(e), _) => Verdict::Fail(format!("could not prepare the scenario: {e}")),
        (None, Err(e)) => Verdict::Fail(format!("invalid scenario: {e}")),
        (None, Ok(())) => backend
            .run(scenario)
            .unwrap_or_else(|e| Verdict::Fail(format!("harness error: {e:#}"))),
    };
    let mut notes = scenario.notes.clone();
    notes.extend(backend.take_notes());
    Outcome {
        scenario: scenario.name.clone(),
        backend: backend.name(),
        verdict,
        elapsed: start.elapsed(),
        notes,
    }
}

/// True when running as root (namespaces, taps and bridges need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Where downloaded kernels, packages, built images and console logs are kept:
/// `$O7S_VM_CACHE`, else `target/vm-cache` in the workspace (ignored by git).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("O7S_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            crate_dir
                .parent()
                .unwrap_or(crate_dir)
                .join("target/vm-cache")
        })
}
