//! A real `irmd` on a temporary run directory, and the tools run against it as processes.
//!
//! The `irmd` binary belongs to another package, so cargo does not build it for these tests:
//! [`irmd_binary`] builds it (`cargo build -p o7s-irmd --bin irmd`, a no-op when it is up to
//! date) into the same target directory as the tools.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(20);
pub const IRM: &str = env!("CARGO_BIN_EXE_irm");
pub const OPING: &str = env!("CARGO_BIN_EXE_oping");
pub const OPERF: &str = env!("CARGO_BIN_EXE_operf");

/// The `irmd` binary next to the tools, built if needed.
pub fn irmd_binary() -> &'static Path {
    static IRMD: OnceLock<PathBuf> = OnceLock::new();
    IRMD.get_or_init(|| {
        let dir = Path::new(IRM).parent().expect("irm has a directory");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "o7s-irmd", "--bin", "irmd"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build.status().expect("run cargo build for irmd");
        assert!(status.success(), "cannot build irmd: {status}");
        let irmd = dir.join("irmd");
        assert!(irmd.exists(), "{} missing after the build", irmd.display());
        irmd
    })
}

/// Builds the IPCP programs (`ipcpd-*`) next to `irmd`, where the IRMd looks for them. A
/// build without them (or that fails) leaves IPCP creation to fail, which tests detect.
pub fn ipcpd_binaries() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let irmd = irmd_binary();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "o7s-ipcpd", "--bins"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        let dir = irmd.parent().expect("irmd has a directory");
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let _ = build.status();
    });
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One IRMd on its own temporary directory; dropping it kills it and every process started
/// through it, and removes the directory and the shared memory.
pub struct Host {
    pub dir: PathBuf,
    pub rundir: PathBuf,
    irmd: Child,
    children: Vec<Child>,
}

impl Host {
    pub fn start(tag: &str) -> Self {
        let irmd_bin = irmd_binary();
        let dir = std::env::temp_dir().join(format!(
            "o7s-{tag}-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let rundir = dir.join("run");
        let log = std::fs::File::create(dir.join("irmd.log")).expect("log");
        let irmd = Command::new(irmd_bin)
            .arg("--rundir")
            .arg(&rundir)
            .env("RUST_LOG", "debug")
            .env_remove("O7S_SHM_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn irmd");
        let host = Self {
            dir,
            rundir,
            irmd,
            children: Vec::new(),
        };
        let deadline = Instant::now() + TIMEOUT;
        while o7s::irm::Client::connect(&host.rundir).is_err() {
            assert!(Instant::now() < deadline, "irmd not ready: {}", host.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        host
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("irmd.log")).unwrap_or_default()
    }

    /// A tool run against this IRMd (through O7S_RUNDIR).
    pub fn tool(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env("O7S_RUNDIR", &self.rundir)
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running tool with piped stdout, killed when the host goes; waits for a
    /// line containing `ready`.
    pub fn spawn(&mut self, bin: &str, args: &[&str], ready: &str) -> (u32, Lines) {
        let mut child = self
            .tool(bin, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tool");
        let pid = child.id();
        let mut lines = Lines::new(child.stdout.take().expect("stdout"));
        self.children.push(child);
        lines.wait_for(ready, TIMEOUT);
        (pid, lines)
    }

    pub fn flows(&self) -> Vec<o7s::FlowInfo> {
        let mut c = o7s::irm::Client::connect(&self.rundir).expect("connect");
        c.set_timeout(Some(TIMEOUT)).expect("timeout");
        match c.call_ok(o7s_proto::irm::ListFlows {}) {
            Ok(o7s_proto::irm::ResponseKind::Flows(f)) => f.flows,
            other => panic!("list flows: {other:?}"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // IPCPs the IRMd spawned are not our children: stop them before the IRMd.
        if let Ok(mut c) = o7s::irm::Client::connect(&self.rundir) {
            let _ = c.set_timeout(Some(Duration::from_secs(2)));
            if let Ok(o7s_proto::irm::ResponseKind::Ipcps(l)) =
                c.call_ok(o7s_proto::irm::ListIpcps {})
            {
                for i in l.ipcps {
                    if let Ok(pid) = i32::try_from(i.pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.irmd.kill();
        let _ = self.irmd.wait();
        let prefix = format!("{}.", o7s::rundir::shm_prefix_for(&self.rundir));
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child's stdout, line by line, read by a thread so waits can time out.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(out: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text` and returns it.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {text:?} ({e}); got {:#?}", self.seen),
            }
        }
    }
}

/// Runs a command to its end (killed after [`TIMEOUT`]).
pub fn run(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes while waiting, so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().expect("status");
    Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
