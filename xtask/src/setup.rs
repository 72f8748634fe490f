//! Installs what a fresh Debian/Ubuntu machine lacks, or says exactly what to run.

use std::process::Command;

use anyhow::{Result, bail};

/// Debian packages o7s needs, with what each is for.
const PACKAGES: &[(&str, &str)] = &[
    ("clang", "compiles the XDP program"),
    ("llvm", "BPF object tools"),
    ("libbpf-dev", "bpf_helpers.h for the XDP program"),
    ("gcc-multilib", "<asm/types.h> for <linux/bpf.h>"),
    ("iproute2", "network namespaces and veth pairs in tests"),
    (
        "iputils-ping",
        "checks that kernel traffic still flows beside XDP",
    ),
];

fn missing() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// `cargo xtask setup`.
pub fn run(dry_run: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        println!("setup: all system packages present");
        return Ok(());
    }
    for (name, why) in PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        println!("setup: missing {name} ({why})");
    }
    if dry_run {
        return Ok(());
    }
    install(&missing)
}

/// Called before tests: installs what is missing when root, else explains.
pub fn ensure_installed() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)
}

fn install(missing: &[&str]) -> Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "setup: not a Debian/Ubuntu machine; install the equivalents of: {}",
            missing.join(" ")
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing system packages; run as root:\n  apt-get update && apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    crate::run(Command::new("apt-get").arg("update").envs(env))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing)
            .envs(env),
    )
}
