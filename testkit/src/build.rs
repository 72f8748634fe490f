//! Binaries of other packages, built (`cargo build`, a no-op when up to date) into the same
//! target directory as the test's own, since cargo does not build them for the test.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;

/// Runs `cargo build --quiet <args>` on the workspace, for the profile and target directory of
/// `dir` (the directory holding the test's binaries: `CARGO_BIN_EXE_*`'s parent).
pub fn cargo_build(dir: &Path, args: &[&str]) -> std::io::Result<ExitStatus> {
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet"])
        .args(args)
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(target) = dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    build.status()
}

/// A build done: the directory and its `(package, bin)`s.
type Built = (PathBuf, Vec<(String, String)>);

/// Builds each `(package, bin)` into `dir` (once per test process) and returns `dir`; panics
/// if the build fails or a binary is missing after it.
pub fn build_bins(dir: &Path, bins: &[(&str, &str)]) -> PathBuf {
    static DONE: Mutex<Vec<Built>> = Mutex::new(Vec::new());
    let key = (
        dir.to_owned(),
        bins.iter()
            .map(|&(p, b)| (p.to_owned(), b.to_owned()))
            .collect::<Vec<_>>(),
    );
    // Held across the build, so concurrent tests wait for one build.
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&key) {
        return dir.to_owned();
    }
    let mut args = Vec::new();
    let mut last = None;
    for &(package, bin) in bins {
        if last != Some(package) {
            args.extend(["-p", package]);
            last = Some(package);
        }
        args.extend(["--bin", bin]);
    }
    let names: Vec<&str> = bins.iter().map(|&(_, b)| b).collect();
    let names = names.join(", ");
    let status =
        cargo_build(dir, &args).unwrap_or_else(|e| panic!("run cargo build for {names}: {e}"));
    assert!(status.success(), "cannot build {names}: {status}");
    for &(_, bin) in bins {
        assert!(dir.join(bin).exists(), "{bin} missing after the build");
    }
    done.push(key);
    dir.to_owned()
}
