//! A real `irmd` on a temporary run directory, and the tools run against it as processes (the
//! harness itself is `o7s-testkit`'s).
//!
//! The `irmd` binary belongs to another package, so cargo does not build it for these tests:
//! [`irmd_binary`] builds it (`cargo build -p o7s-irmd --bin irmd`, a no-op when it is up to
//! date) into the same target directory as the tools.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use o7s_testkit::{Irmd, Options, Stop, build_bins, cargo_build};
pub use o7s_testkit::{Lines, TIMEOUT, run, text};

pub const IRM: &str = env!("CARGO_BIN_EXE_irm");
pub const OPING: &str = env!("CARGO_BIN_EXE_oping");
pub const OPERF: &str = env!("CARGO_BIN_EXE_operf");

/// The directory of the tools.
fn bin_dir() -> &'static Path {
    Path::new(IRM).parent().expect("irm has a directory")
}

/// The `irmd` binary next to the tools, built if needed.
pub fn irmd_binary() -> PathBuf {
    build_bins(bin_dir(), &[("o7s-irmd", "irmd")]).join("irmd")
}

/// Builds the IPCP programs (`ipcpd-*`) next to `irmd`, where the IRMd looks for them. A
/// build without them (or that fails) leaves IPCP creation to fail, which tests detect.
pub fn ipcpd_binaries() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let irmd = irmd_binary();
        let dir = irmd.parent().expect("irmd has a directory");
        let _ = cargo_build(dir, &["-p", "o7s-ipcpd", "--bins"]);
    });
}

o7s_testkit::irmd_host!(
    /// One IRMd on its own temporary directory; dropping it kills its IPCPs, it and every process
    /// started through it, and removes the directory and the shared memory.
    pub Host
);

impl Host {
    pub fn start(tag: &str) -> Self {
        let irmd = irmd_binary();
        Self(Irmd::start(
            o7s_testkit::temp_dir(tag),
            Options::new(irmd).stop(Stop::KillIpcps),
        ))
    }

    /// Starts a long-running tool with piped stdout, killed when the host goes; waits for a
    /// line containing `ready`.
    pub fn spawn(&mut self, bin: &str, args: &[&str], ready: &str) -> (u32, Lines) {
        let tool = self.0.tool(bin, args);
        self.0.spawn(tool, ready)
    }
}
