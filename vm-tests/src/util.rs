//! Small helpers: unique names, running commands with a timeout, killing process groups.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The prefix of every network namespace this crate creates: `o7svt<pid>-<n>-…`.
pub const NS_PREFIX: &str = "o7svt";

/// A name no other run on this machine uses: `prefix` + pid + `-` + a counter.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// Deletes namespaces and scratch directories (`$TMPDIR/o7svt<pid>-…`) left by runs of this
/// crate whose process no longer exists (a harness killed with SIGKILL cannot run its drop
/// guards; its QEMU processes die with it).
pub fn sweep_stale() {
    let dead = |rest: &str| {
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(NS_PREFIX).is_some_and(dead) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        if dead(rest) {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of killing the process, so a run stops
/// at the next check and its drop guards remove namespaces and stop QEMU.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is fully initialised (zeroed, then handler and mask set).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Whether [`catch_interrupts`]' signals arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs a command to completion; a failure names the command and shows its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child in a process group of its own, killed (the whole group) and reaped on drop.
pub struct GroupChild {
    pub child: Child,
}

impl GroupChild {
    /// Like [`GroupChild::spawn`], and the child gets SIGKILL if this thread dies (even by
    /// SIGKILL), so no QEMU outlives its harness.
    pub fn spawn_tied(cmd: &mut Command) -> Result<Self> {
        // SAFETY: the closure only makes one prctl system call (async-signal-safe) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        Self::spawn(cmd)
    }

    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {cmd:?}"))?;
        Ok(Self { child })
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// Runs a command with stdin closed and stdout+stderr merged into one string, killing its
/// process group after `timeout`. Returns (exit status or -1 when killed, output).
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Result<(i32, String)> {
    let (mut reader, writer) = std::io::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let mut child = GroupChild::spawn(&mut cmd)?;
    // Drop our copies of the write end (held by `cmd`) so EOF arrives when the child exits.
    drop(cmd);
    let collector = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.child.try_wait()? {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout || interrupted() {
            child.signal(rustix::process::Signal::KILL);
            let _ = child.child.wait();
            // Grandchildren that escaped the group may keep the pipe open: do not wait for them.
            let out = if collector.is_finished() {
                collector.join().unwrap_or_default()
            } else {
                String::new()
            };
            return Ok((-1, format!("{out}\n(killed after {timeout:?})")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    Ok((status, collector.join().unwrap_or_default()))
}
