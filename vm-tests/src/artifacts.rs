//! Test payloads built on demand and cached in [`crate::cache_dir`].

use std::path::PathBuf;
use std::process::Command;

/// A minimal XDP program (`SEC("xdp")`, returns `XDP_PASS`) for checking that a native XDP
/// attach works on a host's NIC. Needs clang; `Err` says why it could not be built.
pub fn xdp_pass() -> Result<PathBuf, String> {
    let dir = crate::cache_dir().join("artifacts");
    let obj = dir.join("xdp_pass.o");
    if obj.exists() {
        return Ok(obj);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let src = dir.join("xdp_pass.c");
    std::fs::write(
        &src,
        "#define SEC(n) __attribute__((section(n), used))\n\
         SEC(\"xdp\") int xdp_pass(void *ctx) { return 2; /* XDP_PASS */ }\n\
         char _license[] SEC(\"license\") = \"GPL\";\n",
    )
    .map_err(|e| format!("writing {}: {e}", src.display()))?;
    let tmp = dir.join(format!("xdp_pass.o.{}.tmp", std::process::id()));
    let out = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("clang is needed to build the XDP test program: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "clang failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &obj).map_err(|e| e.to_string())?;
    Ok(obj)
}

/// Builds workspace binaries (`cargo build -p PACKAGE --bin NAME`, debug profile) and returns
/// (name, path) pairs. Uses `$CARGO` and `$CARGO_TARGET_DIR` when set.
pub fn workspace_binaries(bins: &[(&str, &str)]) -> Result<Vec<(String, PathBuf)>, String> {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.parent().unwrap_or(crate_dir);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace).args(["build", "--quiet"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    // Warnings of the crates built are not this run's business: show output only on failure.
    let out = cmd
        .output()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, err.trim()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    Ok(bins
        .iter()
        .map(|(_, bin)| (bin.to_string(), target.join("debug").join(bin)))
        .collect())
}

/// o7s's own XDP steering program (`ebpf/src/steer.bpf.c`, `SEC("xdp.frags")`), compiled with
/// the flags `ebpf/build.rs` uses, so scenarios can attach it with iproute2 until a guest test
/// binary uses the `o7s-ebpf` loader. Rebuilt when the source is newer than the cached object.
pub fn o7s_steer() -> Result<PathBuf, String> {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("ebpf/src/steer.bpf.c");
    let dir = crate::cache_dir().join("artifacts");
    let obj = dir.join("o7s_steer.o");
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(o), Some(s)) = (mtime(&obj), mtime(&src))
        && o >= s
    {
        return Ok(obj);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("o7s_steer.o.{}.tmp", std::process::id()));
    let out = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpfel",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("clang is needed to build the o7s XDP program: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "clang failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &obj).map_err(|e| e.to_string())?;
    Ok(obj)
}
