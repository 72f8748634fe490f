//! Guest images: a Debian kernel fetched with `apt-get download`, its modules, and an initramfs
//! holding busybox-static, iproute2, the scenario payload and an init script.
//!
//! Downloads go through private `APT_CONFIG`s under [`crate::cache_dir`] (`apt/`: bookworm +
//! bookworm-backports, for the 6.12 kernel and busybox-static; `apt-trixie/`: trixie-backports,
//! for the 7.x kernel), so the machine's own APT sources are neither needed nor changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cpio::Cpio;
use crate::util;

/// Debian's archive key, used for the private sources.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private APT configuration under the cache directory.
pub struct PrivateApt {
    pub dir: PathBuf,
    pub conf: PathBuf,
}

impl PrivateApt {
    /// Writes the configuration if missing: bookworm and bookworm-backports main.
    pub fn ensure(cache: &Path) -> Result<Self> {
        Self::ensure_suites(cache, "apt", &["bookworm", "bookworm-backports"])
    }

    /// A private configuration in `cache/<name>` for these Debian suites (main).
    pub fn ensure_suites(cache: &Path, name: &str, suites: &[&str]) -> Result<Self> {
        let dir = cache.join(name);
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "pkgs",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        let mut text = String::new();
        for suite in suites {
            text +=
                &format!("deb [signed-by={KEYRING}] http://deb.debian.org/debian {suite} main\n");
        }
        std::fs::write(&sources, text)?;
        let conf = dir.join("apt.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "Dir::Etc::SourceList \"{d}/sources.list\";\n\
                 Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
                 Dir::State::Lists \"{d}/lists\";\n\
                 Dir::Cache \"{d}/cache\";\n"
            ),
        )?;
        Ok(Self { dir, conf })
    }

    /// `apt-get`/`apt-cache` with this configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.conf)
            .env("DEBIAN_FRONTEND", "noninteractive");
        if crate::is_root() {
            // The cache is not readable by the `_apt` sandbox user.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    /// `apt-get update` unless package lists are already there.
    pub fn update_if_needed(&self) -> Result<()> {
        let has_lists = std::fs::read_dir(self.dir.join("lists"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if !has_lists {
            util::run(self.command("apt-get").args(["-q", "update"]))?;
        }
        Ok(())
    }

    /// Downloads one package into the cache and returns the `.deb`.
    pub fn download(&self, package: &str) -> Result<PathBuf> {
        let pkgs = self.dir.join("pkgs");
        let find = || -> Result<Option<PathBuf>> {
            Ok(std::fs::read_dir(&pkgs)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{package}_")))
                }))
        };
        if let Some(deb) = find()? {
            return Ok(deb);
        }
        self.update_if_needed()?;
        util::run(
            self.command("apt-get")
                .args(["-q", "download", package])
                .current_dir(&pkgs),
        )?;
        find()?.with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// Which guest kernel a scenario boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelSeries {
    /// Debian 12's 6.12 kernel (bookworm-backports `linux-image-6.12.*-amd64`): native XDP and
    /// AF_XDP in copy mode on virtio-net.
    #[default]
    V6_12,
    /// Debian 13's 7.x kernel (trixie-backports `linux-binary-7.*-amd64` with
    /// `linux-modules-7.*-amd64`): AF_XDP zero-copy on virtio-net (with
    /// `iommu_platform=on,disable-legacy=on`).
    V7,
}

impl KernelSeries {
    /// Parses `6.12` or `7`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "6" | "6.12" => Some(Self::V6_12),
            "7" | "7.x" => Some(Self::V7),
            _ => None,
        }
    }

    /// `6.12` or `7.x`.
    pub fn label(self) -> &'static str {
        match self {
            Self::V6_12 => "6.12",
            Self::V7 => "7.x",
        }
    }

    /// The environment variable that pins a package of this series.
    fn env(self) -> &'static str {
        match self {
            Self::V6_12 => "O7S_VM_KERNEL",
            Self::V7 => "O7S_VM_KERNEL7",
        }
    }

    /// Package name prefix that holds the kernel image.
    fn image_prefix(self) -> &'static str {
        match self {
            Self::V6_12 => "linux-image-6.12.",
            Self::V7 => "linux-binary-7.",
        }
    }

    fn apt(self, cache: &Path) -> Result<PrivateApt> {
        match self {
            Self::V6_12 => PrivateApt::ensure(cache),
            Self::V7 => PrivateApt::ensure_suites(cache, "apt-trixie", &["trixie-backports"]),
        }
    }

    /// The packages to extract for `image_package`: the image, plus the modules package
    /// where the series splits them.
    fn packages(self, image_package: &str) -> Vec<String> {
        match self {
            Self::V6_12 => vec![image_package.to_string()],
            Self::V7 => vec![
                image_package.to_string(),
                image_package.replacen("linux-binary-", "linux-modules-", 1),
            ],
        }
    }
}

/// An extracted Debian kernel package.
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/VERSION` inside the extracted package.
    pub modules: PathBuf,
}

/// Sort key for `linux-image-6.12.95+deb12-amd64` or `linux-binary-7.3.4+deb13-amd64`: the
/// numbers of the version.
fn version_key(package: &str) -> Vec<u64> {
    let v = package
        .trim_start_matches("linux-image-")
        .trim_start_matches("linux-binary-");
    let v = v.split(['+', '-']).next().unwrap_or("");
    v.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

/// The newest generic amd64 kernel of `series` (or the package named by `$O7S_VM_KERNEL` /
/// `$O7S_VM_KERNEL7`), downloaded and extracted once into the cache.
pub fn kernel(cache: &Path, series: KernelSeries) -> Result<Kernel> {
    let root = cache.join("kernel");
    std::fs::create_dir_all(&root)?;
    let wanted = std::env::var(series.env()).ok();
    let prefix = series.image_prefix();
    let cached: Vec<String> = std::fs::read_dir(&root)?
        .flatten()
        .filter(|e| e.path().join("extracted").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.starts_with(prefix))
        .collect();
    let package = match (&wanted, cached.iter().max_by_key(|p| version_key(p))) {
        (Some(w), _) => w.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => {
            let apt = series.apt(cache)?;
            apt.update_if_needed()?;
            let names = util::run(apt.command("apt-cache").args(["pkgnames", prefix]))?;
            let mut names: Vec<&str> = names
                .lines()
                .filter(|n| n.ends_with("-amd64") && !n.contains("cloud") && !n.contains("-rt-"))
                .filter(|n| !n.contains("-unsigned-") && !n.ends_with("-dbg"))
                .collect();
            names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
            // `pkgnames` also lists names only mentioned as dependencies: take the newest that
            // has a version.
            names
                .into_iter()
                .find(|n| {
                    apt.command("apt-cache")
                        .args(["show", "--no-all-versions", n])
                        .output()
                        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
                })
                .with_context(|| {
                    format!(
                        "no {prefix}*-amd64 package for the {} kernel",
                        series.label()
                    )
                })?
                .to_string()
        }
    };
    let dir = root.join(&package);
    if !dir.join("extracted").exists() {
        let apt = series.apt(cache)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for p in series.packages(&package) {
            let deb = apt.download(&p)?;
            util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        }
        std::fs::write(dir.join("extracted"), "")?;
    }
    // Debian 13 installs modules under usr/lib, Debian 12 under lib.
    let modules_root = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.is_dir())
        .with_context(|| format!("{} has no lib/modules", dir.display()))?;
    let version = std::fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .flatten()
        .next()
        .context("no module directory")?
        .file_name()
        .to_string_lossy()
        .into_owned();
    // Debian 12 ships boot/vmlinuz-VERSION; the 7.x packages put it beside the modules.
    let vmlinuz = [
        dir.join(format!("boot/vmlinuz-{version}")),
        modules_root.join(&version).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("{} has no vmlinuz for {version}", dir.display()))?;
    Ok(Kernel {
        package,
        vmlinuz,
        modules: modules_root.join(&version),
        version,
    })
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst`.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        Ok(util_output(Command::new("xz").arg("-dc").arg(path))?)
    } else if name.ends_with(".zst") {
        Ok(util_output(Command::new("zstd").arg("-dcq").arg(path))?)
    } else {
        Ok(std::fs::read(path)?)
    }
}

fn util_output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The `depends=` field of a module's `.modinfo` section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The modules `wanted` need, dependencies first, as (name, uncompressed bytes). Modules built
/// into the kernel (`modules.builtin`) are left out.
pub fn modules(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![kernel.modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko"))
            {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if !done.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            // Built in, or not needed on this kernel.
            return Ok(());
        };
        let ko = read_module(path)?;
        for dep in module_depends(&ko) {
            visit(&dep, index, done, out)?;
        }
        out.push((name.to_string(), ko));
        Ok(())
    }
    for w in wanted {
        if !index.contains_key(*w) {
            bail!("module {w} not found under {}", kernel.modules.display());
        }
        visit(w, &index, &mut done, &mut out)?;
    }
    Ok(out)
}

/// The shared libraries `ldd` lists for an ELF executable (empty for static or non-ELF files),
/// as (path on this machine, path in the guest).
fn libraries(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let out = Command::new("ldd").arg(path).output()?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((soname, rest)) = line.split_once(" => ") {
            let host = rest.split(" (").next().unwrap_or("").trim();
            if !host.is_empty() {
                libs.push((host.into(), format!("/lib/x86_64-linux-gnu/{soname}")));
            }
        } else if line.starts_with('/') {
            // The dynamic loader, by its absolute path.
            let p = line.split(" (").next().unwrap_or("").to_string();
            libs.push((p.clone().into(), p));
        }
    }
    Ok(libs)
}

/// An initramfs being assembled.
pub struct Initramfs {
    cpio: Cpio,
    libs: BTreeSet<String>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    pub fn new() -> Self {
        let mut cpio = Cpio::new();
        for d in [
            "bin",
            "usr/bin",
            "proc",
            "sys/fs/bpf",
            "dev",
            "tmp",
            "run",
            "o7s/bin",
        ] {
            cpio.dir(d);
        }
        // The kernel opens it for init's stdin/stdout/stderr before anything is mounted.
        cpio.char_dev("dev/console", 5, 1);
        Self {
            cpio,
            libs: BTreeSet::new(),
        }
    }

    pub fn file(&mut self, dest: &str, perm: u32, data: &[u8]) {
        self.cpio.file(dest, perm, data);
    }

    /// Copies a file from this machine; ELF executables bring their shared libraries.
    pub fn copy(&mut self, src: &Path, dest: &str, perm: u32) -> Result<()> {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.cpio.file(dest, perm, &data);
        for (host, guest) in libraries(src)? {
            if self.libs.insert(guest.clone()) {
                let data =
                    std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
                self.cpio.file(&guest, 0o755, &data);
            }
        }
        Ok(())
    }

    pub fn write(self, path: &Path) -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        self.cpio.finish(&mut f)?;
        Ok(())
    }
}

/// `src` without debug information (`strip --strip-debug` into `scratch`) when it is an ELF
/// file with some, else `src` itself: debug builds of the o7s daemons are mostly DWARF, and
/// the initramfs is unpacked into the guest's RAM.
pub fn stripped(src: &Path, scratch: &Path) -> Result<PathBuf> {
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(src)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !is_elf {
        return Ok(src.to_path_buf());
    }
    let name = src.file_name().context("payload without a file name")?;
    let out = scratch.join("stripped").join(name);
    std::fs::create_dir_all(scratch.join("stripped"))?;
    match Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(src)
        .output()
    {
        Ok(o) if o.status.success() => Ok(out),
        // No binutils: the unstripped file still works when the guest has room for it.
        _ => Ok(src.to_path_buf()),
    }
}

/// Where an executable lives on this machine (`which`).
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A statically linked busybox (Debian's busybox-static installs `/bin/busybox`).
pub fn static_busybox() -> Option<PathBuf> {
    let p = which("busybox")?;
    let ldd = Command::new("ldd").arg(&p).output().ok()?;
    // `ldd` fails with "not a dynamic executable" on static binaries.
    (!ldd.status.success()).then_some(p)
}

/// A static busybox for the guests: this machine's (Debian's busybox-static installs
/// `/bin/busybox`), else the busybox-static package downloaded and extracted into the cache (it
/// conflicts with Debian's dynamic `busybox`, which initramfs-tools machines often have).
pub fn busybox(cache: &Path) -> Result<PathBuf> {
    if let Some(p) = static_busybox() {
        return Ok(p);
    }
    let dir = cache.join("busybox-static");
    let bin = dir.join("bin/busybox");
    if !bin.exists() {
        let deb = PrivateApt::ensure(cache)?.download("busybox-static")?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    }
    if !bin.exists() {
        bail!("busybox-static has no bin/busybox");
    }
    Ok(bin)
}
