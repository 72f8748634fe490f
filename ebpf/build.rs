//! Compiles `src/steer.bpf.c` into `$OUT_DIR/steer.bpf.o` with clang, for `lib.rs` to embed.
//!
//! Modelled on aya's `test/integration-test/build.rs`: one clang run per source, `rerun-if-changed`
//! on it, and an opt-out that writes an empty stub object so the crate can be checked or linted on
//! a machine without clang (`O7S_EBPF_SKIP=1`; the library then returns
//! `Error::NotBuilt` at load time).
//!
//! Environment:
//! - `O7S_EBPF_SKIP=1`: do not run clang, embed an empty object.
//! - `O7S_EBPF_CLANG`: the clang binary to run (default `clang`).

use std::{
    env,
    path::{Path, PathBuf},
    process::{self, Command},
};

const SOURCE: &str = "src/steer.bpf.c";
const OBJECT: &str = "steer.bpf.o";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=O7S_EBPF_SKIP");
    println!("cargo:rerun-if-env-changed=O7S_EBPF_CLANG");

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set: build.rs must be run by cargo");
    };
    let object = out_dir.join(OBJECT);

    if env::var("O7S_EBPF_SKIP").is_ok_and(|v| v == "1") {
        println!(
            "cargo:warning=O7S_EBPF_SKIP=1: embedding an empty XDP object; \
             SteerProgram::load will fail with Error::NotBuilt"
        );
        if let Err(e) = std::fs::write(&object, []) {
            fail(&format!("writing stub object {}: {e}", object.display()));
        }
        return;
    }

    let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        fail("CARGO_MANIFEST_DIR is not set: build.rs must be run by cargo");
    };
    compile(&manifest_dir.join(SOURCE), &object);
}

/// Runs clang on `source`, writing `object`; exits the build with a readable message on failure.
fn compile(source: &Path, object: &Path) {
    let clang = env::var("O7S_EBPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The BPF target must have the byte order of the machine that will load the program.
    let bpf_target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb",
        _ => "bpfel",
    };
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory
    // (gcc-multilib adds /usr/include/asm, this flag makes it unnecessary).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-target", bpf_target])
        .arg(&multiarch)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: o7s-ebpf compiles its XDP program with clang.\n\
             Run `cargo xtask setup` (installs clang, llvm, libbpf-dev, gcc-multilib), \
             or set O7S_EBPF_SKIP=1 to build without the XDP object \
             (loading it then fails at run time)."
        )),
        Err(e) => fail(&format!("running {cmd:?}: {e}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("file not found") {
            "\nA header is missing: run `cargo xtask setup` (libbpf-dev provides bpf/bpf_helpers.h, \
             gcc-multilib provides asm/types.h)."
        } else {
            ""
        };
        fail(&format!(
            "{cmd:?} failed ({}):\n{stderr}{hint}",
            output.status
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: o7s-ebpf build.rs: {message}");
    process::exit(1);
}
