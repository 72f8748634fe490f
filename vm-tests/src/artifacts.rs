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
    let tmp = dir.join("xdp_pass.o.tmp");
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
