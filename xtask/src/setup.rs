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

/// Debian packages only `cargo xtask vm-test --backend qemu` needs; qemu-system-x86 comes from
/// bookworm-backports (it must match the preinstalled backports qemu-utils).
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots the test guests"),
    ("busybox-static", "the guests' shell and tools"),
];

fn missing() -> Vec<&'static str> {
    missing_of(PACKAGES)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing_of(packages: &[(&'static str, &str)]) -> Vec<&'static str> {
    packages
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !installed(name))
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

/// Before `cargo xtask vm-test --backend qemu`: installs QEMU (from bookworm-backports, through a
/// private APT configuration that adds that suite) and busybox-static when missing, as root;
/// otherwise prints the exact commands.
pub fn ensure_vm_packages() -> Result<()> {
    use o7s_vm_tests::image::{static_busybox, which};
    // busybox-static conflicts with Debian's `busybox`: where that is installed, the harness
    // downloads busybox-static into its cache instead.
    let has_busybox = static_busybox().is_some() || installed("busybox");
    if which("qemu-system-x86_64").is_some() && has_busybox {
        return Ok(());
    }
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("not a Debian/Ubuntu machine: install qemu-system-x86_64 and a static busybox");
    }
    let mut missing = missing_of(VM_PACKAGES);
    if has_busybox {
        missing.retain(|p| *p != "busybox-static");
    }
    if missing.is_empty() {
        // Installed but not usable (no static busybox on PATH): the harness downloads one.
        return Ok(());
    }
    let apt = o7s_vm_tests::image::PrivateApt::ensure(&o7s_vm_tests::cache_dir())?;
    let conf = apt.conf.display();
    let mut install = "install -y --no-install-recommends -t bookworm-backports".to_string();
    if missing.contains(&"qemu-system-x86") {
        install += " qemu-system-x86 qemu-system-common qemu-system-data";
    }
    if missing.contains(&"busybox-static") {
        install += " busybox-static";
    }
    if !is_root() {
        bail!(
            "missing {}; run as root:\n  APT_CONFIG={conf} apt-get update && \
             APT_CONFIG={conf} apt-get {install}",
            missing.join(" ")
        );
    }
    println!(
        "vm-test: installing {} (APT_CONFIG={conf})",
        missing.join(" ")
    );
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    crate::run(
        Command::new("apt-get")
            .arg("update")
            .env("APT_CONFIG", &apt.conf)
            .envs(env),
    )?;
    crate::run(
        Command::new("apt-get")
            .args(install.split_whitespace())
            .env("APT_CONFIG", &apt.conf)
            .envs(env),
    )
}
