//! The local IPCP end to end: the real `irmd` on a temporary run directory spawns
//! `ipcpd-local`, which carries `oping` flows between real processes.
//!
//! `irmd` and `oping` belong to other packages, so cargo does not build them for these tests:
//! the first test builds them (`cargo build -p o7s-irmd --bin irmd -p o7s-cli --bin oping`, a
//! no-op when up to date) into the same target directory, next to `ipcpd-local`, where the
//! IRMd looks for it.

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
use o7s_proto::irm::{
    BootstrapIpcp, CreateIpcp, DestroyIpcp, ErrorCode, HashAlgo, IpcpConfig, IpcpInfo,
    IpcpSelector, IpcpState, IpcpType, ListFlows, ListIpcps, ListNames, RegisterName,
    RegisterTarget, ResponseKind,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const IPCPD_LOCAL: &str = env!("CARGO_BIN_EXE_ipcpd-local");
const LAYER: &str = "local-layer";

/// The directory of `ipcpd-local`, with `irmd` and `oping` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IPCPD_LOCAL)
            .parent()
            .expect("ipcpd-local has a directory")
            .to_owned();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "o7s-irmd", "--bin", "irmd"])
            .args(["-p", "o7s-cli", "--bin", "oping"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build.status().expect("run cargo build for irmd and oping");
        assert!(status.success(), "cannot build irmd and oping: {status}");
        for b in ["irmd", "oping"] {
            assert!(dir.join(b).exists(), "{b} missing after the build");
        }
        dir
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
        Self::start_with(&bin_dir().join("irmd"), None)
    }

    /// Starts `irmd` (from `binary`; with `path` as its PATH if given).
    fn start_with(binary: &Path, path: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "o7s-ipcpd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let rundir = dir.join("run");
        let log = std::fs::File::create(dir.join("irmd.log")).expect("log");
        let mut cmd = Command::new(binary);
        cmd.arg("--rundir")
            .arg(&rundir)
            .env("RUST_LOG", "debug")
            .env_remove("O7S_SHM_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let irmd = cmd.spawn().expect("spawn irmd");
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

    fn client(&self) -> o7s::irm::Client {
        let c = o7s::irm::Client::connect(&self.rundir).expect("connect");
        c.set_timeout(Some(TIMEOUT)).expect("timeout");
        c
    }

    /// Creates and bootstraps `ipcpd-local` as `name` in [`LAYER`], registers `oping` in the
    /// layer; returns the IPCP's pid.
    fn local_ipcp(&self, name: &str) -> u32 {
        let mut c = self.client();
        let info = match c.call_ok(CreateIpcp {
            ipcp_type: IpcpType::Local.into(),
            name: name.into(),
        }) {
            Ok(ResponseKind::Ipcp(info)) => info,
            other => panic!("create ipcp: {other:?}\n{}", self.log()),
        };
        assert_eq!(info.name, name);
        assert!(info.pid > 0);
        c.call_ok(BootstrapIpcp {
            name: name.into(),
            config: Some(IpcpConfig {
                layer: LAYER.into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: None,
            }),
        })
        .unwrap_or_else(|e| panic!("bootstrap: {e}\n{}", self.log()));
        c.call_ok(RegisterName {
            name: "oping".into(),
            target: Some(RegisterTarget::Layer(LAYER.into())),
        })
        .unwrap_or_else(|e| panic!("register: {e}\n{}", self.log()));
        info.pid
    }

    fn ipcps(&self) -> Vec<IpcpInfo> {
        match self.client().call_ok(ListIpcps {}) {
            Ok(ResponseKind::Ipcps(l)) => l.ipcps,
            other => panic!("list ipcps: {other:?}"),
        }
    }

    fn flows(&self) -> Vec<o7s::FlowInfo> {
        match self.client().call_ok(ListFlows {}) {
            Ok(ResponseKind::Flows(f)) => f.flows,
            other => panic!("list flows: {other:?}"),
        }
    }

    fn oping(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin_dir().join("oping"));
        c.args(args)
            .env("O7S_RUNDIR", &self.rundir)
            .stdin(Stdio::null());
        c
    }

    /// Starts `oping -l -n oping` and waits until it accepts.
    fn server(&mut self) -> Lines {
        let mut child = self
            .oping(&["-l", "-n", "oping"])
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

    /// Waits until no flow is left and the pool verifies with nothing owned by `pid`.
    fn wait_clean(&self, pid: Option<u32>) {
        let pool = self.pool();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let report = pool.verify();
            let stray: Vec<u32> = (0..pool.layout().total_blocks)
                .filter(|&i| {
                    pool.place(i).is_ok_and(|w| {
                        pid.is_some_and(|pid| {
                            w.holder == pid
                                || matches!(
                                    w.place,
                                    Place::Owned { pid: p } | Place::Cached { pid: p }
                                        | Place::Kernel { pid: p } if p == pid
                                )
                        })
                    })
                })
                .collect();
            let flows = self.flows();
            if report.is_ok() && stray.is_empty() && flows.is_empty() && report.owned == 0 {
                println!("clean: {report:?}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not clean: {report:?}, blocks of {pid:?}: {stray:?}, flows: {flows:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // SIGTERM: the IRMd stops its IPCPs on the way out.
        let _ = kill(Pid::from_raw(self.irmd.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.irmd.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
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

fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    let status = child.wait().expect("status");
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn oping_runs_over_the_local_ipcp() {
    let mut host = Host::start();
    let ipcp = host.local_ipcp("local");
    let listed = host.ipcps();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let l = &listed[0];
    assert_eq!(
        (
            l.name.as_str(),
            l.pid,
            l.ipcp_type(),
            l.layer.as_deref(),
            l.state()
        ),
        (
            "local",
            ipcp,
            IpcpType::Local,
            Some(LAYER),
            IpcpState::Operational
        )
    );
    let names = match host.client().call_ok(ListNames {}) {
        Ok(ResponseKind::Names(n)) => n.names,
        other => panic!("{other:?}"),
    };
    assert_eq!(names[0].ipcps, ["local"], "{names:?}");

    let _server = host.server();
    let client = host
        .oping(&["-n", "oping", "-c", "20", "-i", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let client_pid = client.id();
    // While it runs: the client's flow has the IPCP at its n-1 end, and the IPCP allocated
    // the flow to the server.
    let deadline = Instant::now() + TIMEOUT;
    let flows = loop {
        let flows = host.flows();
        if flows.len() == 2 {
            break flows;
        }
        assert!(
            Instant::now() < deadline,
            "flows: {flows:?}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("{flows:#?}");
    assert!(
        flows
            .iter()
            .any(|f| f.n_pid == client_pid && f.n_1_pid == ipcp && f.name == "oping"),
        "{flows:?}"
    );
    assert!(
        flows
            .iter()
            .any(|f| f.n_pid == ipcp && f.n_1_pid != client_pid && f.name == "oping"),
        "{flows:?}"
    );
    let out = wait_output(client);
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let replies = stdout
        .lines()
        .filter(|l| l.starts_with("64 bytes from oping: seq="))
        .count();
    assert_eq!(replies, 20, "{stdout}");
    assert!(
        stdout.contains("20 packets transmitted, 20 received, 0% packet loss"),
        "{stdout}"
    );
    // The client deallocated; the IPCP followed with both of its ends, then the server.
    host.wait_clean(None);
    assert!(
        host.log().contains("allocating through the IPCP"),
        "{}",
        host.log()
    );
}

#[test]
fn a_killed_local_ipcp_ends_its_flows_and_can_be_replaced() {
    let mut host = Host::start();
    let ipcp = host.local_ipcp("local");
    let mut server = host.server();
    let mut client = host
        .oping(&["-n", "oping", "-c", "100000", "-i", "1ms", "-s", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let client_pid = client.id();
    let mut replies = Lines::new(client.stdout.take().expect("stdout"));
    replies.wait_for("seq=20 ", TIMEOUT);
    kill(Pid::from_raw(ipcp as i32), Signal::SIGKILL).expect("kill the IPCP");
    let killed = Instant::now();
    // Both applications' flows end with a clear error, without hanging.
    let ended = replies.wait_for("Flow ended", Duration::from_secs(5));
    assert!(
        ended.contains("peer at the other end of the flow is gone"),
        "{ended}"
    );
    let served = server.wait_for(") ended", Duration::from_secs(5));
    assert!(
        served.contains("peer at the other end of the flow is gone"),
        "{served}"
    );
    println!(
        "client: {ended}\nserver: {served}\n({:?} after SIGKILL)",
        killed.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(client.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the client hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The IRMd removed the IPCP, its flows went, and nothing of it is left in the pool.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host.ipcps().is_empty() {
        assert!(
            Instant::now() < deadline,
            "IPCP still listed: {:?}",
            host.ipcps()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    host.wait_clean(Some(ipcp));
    assert!(host.log().contains("IPCP gone"), "{}", host.log());
    let _ = client_pid;

    // A new local IPCP of the same name serves a new oping.
    let again = host.local_ipcp("local");
    assert_ne!(again, ipcp);
    let out = wait_output(
        host.oping(&["-n", "oping", "-c", "3", "-i", "10ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client"),
    );
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("3 packets transmitted, 3 received"),
        "{stdout}"
    );
    host.wait_clean(None);
}

#[test]
fn a_killed_server_ends_the_client_flow_and_the_ipcp_serves_on() {
    let mut host = Host::start();
    let ipcp = host.local_ipcp("local");
    let _server = host.server();
    let server_pid = host.children[0].id();
    let mut client = host
        .oping(&["-n", "oping", "-c", "100000", "-i", "1ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut replies = Lines::new(client.stdout.take().expect("stdout"));
    replies.wait_for("seq=20 ", TIMEOUT);
    kill(Pid::from_raw(server_pid as i32), Signal::SIGKILL).expect("kill the server");
    // The IPCP sees the server's flow end and deallocates the client's: FlowDown.
    let ended = replies.wait_for("Flow ended", Duration::from_secs(5));
    assert!(ended.contains("the flow is down"), "{ended}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(client.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the client hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
    host.wait_clean(Some(server_pid));
    assert_eq!(host.ipcps().first().map(|i| i.pid), Some(ipcp));
    // The same IPCP carries the next flow to a new server.
    let _again = host.server();
    let out = wait_output(
        host.oping(&["-n", "oping", "-c", "3", "-i", "10ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client"),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("3 packets transmitted, 3 received"),
        "{stdout}"
    );
}

#[test]
fn ipcps_are_destroyed_and_errors_are_clear() {
    let host = Host::start();
    let ipcp = host.local_ipcp("local");
    let mut c = host.client();
    // Names are unique; only local IPCPs exist yet.
    let refused = |r: Result<ResponseKind, o7s::ClientError>| match r {
        Err(o7s::ClientError::Refused { code, message }) => (code, message),
        other => panic!("not refused: {other:?}"),
    };
    let (code, message) = refused(c.call_ok(CreateIpcp {
        ipcp_type: IpcpType::Local.into(),
        name: "local".into(),
    }));
    assert_eq!(code, ErrorCode::AlreadyExists, "{message}");
    let (code, message) = refused(c.call_ok(CreateIpcp {
        ipcp_type: IpcpType::Udp4.into(),
        name: "udp".into(),
    }));
    assert_eq!(code, ErrorCode::NotSupported, "{message}");
    let (code, message) = refused(c.call_ok(BootstrapIpcp {
        name: "local".into(),
        config: Some(IpcpConfig {
            layer: "again".into(),
            hash: HashAlgo::Sha3_256.into(),
            type_config: None,
        }),
    }));
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    c.call_ok(DestroyIpcp {
        ipcp: Some(IpcpSelector::Name("local".into())),
    })
    .expect("destroy");
    assert!(host.ipcps().is_empty());
    assert!(
        nix::sys::signal::kill(Pid::from_raw(ipcp as i32), None).is_err(),
        "the IPCP process is gone (and reaped)"
    );
    // Its registrations went with it: the name (created by the registration) now takes the
    // direct path, where nobody accepts.
    let names = match c.call_ok(ListNames {}) {
        Ok(ResponseKind::Names(n)) => n.names,
        other => panic!("{other:?}"),
    };
    assert!(names[0].ipcps.is_empty(), "{names:?}");
    let out = wait_output(
        host.oping(&["-n", "oping", "-c", "1", "--alloc-timeout", "300"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no process accepted a flow for \"oping\" within 300 ms"),
        "{}",
        text(&out.stderr)
    );

    // An irmd without ipcpd-local beside it or in PATH says so.
    let lonely = host.dir.join("lonely");
    std::fs::create_dir_all(&lonely).expect("dir");
    let irmd = lonely.join("irmd");
    std::fs::copy(bin_dir().join("irmd"), &irmd).expect("copy irmd");
    let other = Host::start_with(&irmd, Some("/nonexistent"));
    let (code, message) = refused(other.client().call_ok(CreateIpcp {
        ipcp_type: IpcpType::Local.into(),
        name: "local".into(),
    }));
    println!("{message}");
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    assert!(
        message.contains("cannot find the ipcpd-local executable"),
        "{message}"
    );
}
