//! `oping` end to end: the real `irmd` on a temporary run directory, real `oping` server and
//! client processes, direct local flows between them.
//!
//! The `irmd` binary belongs to another package, so cargo does not build it for these tests:
//! the first test builds it (`cargo build -p o7s-irmd --bin irmd`, a no-op when it is up to
//! date) into the same target directory, next to `oping`.

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_pool::{Access, Place, Pool, pool_name};
use o7s_proto::irm::{ListFlows, ResponseKind};

const TIMEOUT: Duration = Duration::from_secs(20);
const OPING: &str = env!("CARGO_BIN_EXE_oping");

/// The `irmd` binary next to `oping`, built if needed.
fn irmd_binary() -> &'static Path {
    static IRMD: OnceLock<PathBuf> = OnceLock::new();
    IRMD.get_or_init(|| {
        let dir = Path::new(OPING).parent().expect("oping has a directory");
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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One IRMd on its own temporary directory; dropping it kills it and every process started
/// through it, and removes the directory and the shared memory.
struct Host {
    dir: PathBuf,
    rundir: PathBuf,
    irmd: Child,
    children: Vec<Child>,
}

impl Host {
    fn start() -> Self {
        let irmd_bin = irmd_binary();
        let dir = std::env::temp_dir().join(format!(
            "o7s-oping-test-{}-{}",
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("irmd.log")).unwrap_or_default()
    }

    fn oping(&self, args: &[&str]) -> Command {
        let mut c = Command::new(OPING);
        c.args(args)
            .env("O7S_RUNDIR", &self.rundir)
            .stdin(Stdio::null());
        c
    }

    /// Starts `oping -l -n name` and waits until it is bound and accepting.
    fn server(&mut self, name: &str) -> Lines {
        let mut child = self
            .oping(&["-l", "-n", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn oping server");
        let mut lines = Lines::new(child.stdout.take().expect("stdout"));
        self.children.push(child);
        lines.wait_for("listening on", TIMEOUT);
        lines
    }

    fn pool(&self) -> Pool {
        Pool::open(&pool_name(
            &o7s::rundir::shm_prefix_for(&self.rundir),
            Access::Shared,
        ))
        .expect("open the IRMd's pool")
    }

    fn flows(&self) -> Vec<o7s::FlowInfo> {
        let mut c = o7s::irm::Client::connect(&self.rundir).expect("connect");
        c.set_timeout(Some(TIMEOUT)).expect("timeout");
        match c.call_ok(ListFlows {}) {
            Ok(ResponseKind::Flows(f)) => f.flows,
            other => panic!("list flows: {other:?}"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
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
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(out: ChildStdout) -> Self {
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
    fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
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

fn run(mut command: Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = started + TIMEOUT;
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
    let took = started.elapsed();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    let status = child.wait().expect("status");
    (
        Output {
            status,
            stdout,
            stderr,
        },
        took,
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ping_all_answered(size: usize) {
    let mut host = Host::start();
    let _server = host.server("oping");
    let (out, _) = run(host.oping(&[
        "-n",
        "oping",
        "-c",
        "20",
        "-i",
        "10ms",
        "-s",
        &size.to_string(),
    ]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    let replies = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{size} bytes from oping: seq=")))
        .count();
    assert_eq!(replies, 20, "{stdout}");
    assert!(
        stdout.contains("20 packets transmitted, 20 received, 0% packet loss"),
        "{stdout}"
    );
    assert!(stdout.contains("rtt min/avg/max/mdev = "), "{stdout}");
    // The client deallocated, the server followed: no flow, nothing left in the pool.
    let deadline = Instant::now() + TIMEOUT;
    while !host.flows().is_empty() {
        assert!(Instant::now() < deadline, "flows left: {:?}", host.flows());
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = host.pool().verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.owned, report.queued), (0, 0), "{report:?}");
}

#[test]
fn twenty_pings_of_64_bytes_are_answered() {
    ping_all_answered(64);
}

#[test]
fn twenty_pings_of_1400_bytes_are_answered() {
    ping_all_answered(1400);
}

#[test]
fn a_killed_client_ends_the_servers_flow_and_is_reclaimed() {
    let mut host = Host::start();
    let mut server = host.server("oping");
    let mut client = host
        .oping(&["-n", "oping", "-c", "100000", "-i", "1ms", "-s", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn client");
    let pid = client.id();
    let mut replies = Lines::new(client.stdout.take().expect("stdout"));
    replies.wait_for("seq=20 ", TIMEOUT);
    let flow = server.wait_for(&format!("from pid {pid}"), TIMEOUT);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill client");
    let killed = Instant::now();
    client.wait().expect("reap client");
    // The server's read ends with PeerGone (it may have been blocked in it).
    let ended = server.wait_for(&format!("(pid {pid}) ended"), Duration::from_secs(5));
    assert!(
        ended.contains("peer at the other end of the flow is gone"),
        "{ended} after {flow}"
    );
    println!("server saw: {ended} ({:?} after SIGKILL)", killed.elapsed());
    // The IRMd reclaimed the dead client's blocks and, once the server deallocated, the rings.
    let pool = host.pool();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = pool.verify();
        let dead_blocks: Vec<u32> = (0..pool.layout().total_blocks)
            .filter(|&i| {
                pool.place(i).is_ok_and(|w| {
                    w.holder == pid
                        || matches!(
                            w.place,
                            Place::Owned { pid: p } | Place::Cached { pid: p } | Place::Kernel { pid: p }
                                if p == pid
                        )
                })
            })
            .collect();
        let flows = host.flows();
        if report.is_ok() && dead_blocks.is_empty() && flows.is_empty() {
            println!("after {:?}: {report:?}", killed.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reclaimed: {report:?}, blocks of {pid}: {dead_blocks:?}, flows: {flows:?}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host.log().contains("process died"), "{}", host.log());
    // The server goes on serving.
    let (out, _) = run(host.oping(&["-n", "oping", "-c", "3", "-i", "10ms"]));
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn allocating_to_a_name_nobody_accepts_on_fails_clearly() {
    let host = Host::start();
    // Unknown name: at once.
    let (out, took) = run(host.oping(&["-n", "nobody", "-c", "1"]));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no name \"nobody\""), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A name someone is bound to but nobody accepts on: within the allocation timeout.
    let app = o7s::Client::connect_to(&host.rundir).expect("connect");
    app.bind("silent").expect("bind");
    let (out, took) = run(host.oping(&["-n", "silent", "-c", "1", "--alloc-timeout", "500"]));
    let err = text(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert!(
        err.contains("no process accepted a flow for \"silent\" within 500 ms"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn no_irmd_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("o7s-oping-none-{}", std::process::id()));
    let (out, _) = run({
        let mut c = Command::new(OPING);
        c.args(["-n", "x", "-c", "1"])
            .env("O7S_RUNDIR", &dir)
            .stdin(Stdio::null());
        c
    });
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot reach the IRMd at {}: is irmd running? set O7S_RUNDIR",
            dir.join("irmd.sock").display()
        )),
        "{err}"
    );
}
