//! The local IPCP end to end: the real `irmd` on a temporary run directory spawns
//! `ipcpd-local`, which carries `oping` flows between real processes.
//!
//! `irmd` and `oping` belong to other packages, so cargo does not build them for these tests:
//! the first test builds them (`cargo build -p o7s-irmd --bin irmd -p o7s-cli --bin oping`, a
//! no-op when up to date) into the same target directory, next to `ipcpd-local`, where the
//! IRMd looks for it.

use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_pool::Place;
use o7s_proto::irm::{
    BootstrapIpcp, CreateIpcp, DestroyIpcp, ErrorCode, HashAlgo, IpcpConfig, IpcpSelector,
    IpcpState, IpcpType, ListNames, ResponseKind,
};
use o7s_testkit::{Irmd, Lines, Options, Stop, TIMEOUT, build_bins, temp_dir, text};

const IPCPD_LOCAL: &str = env!("CARGO_BIN_EXE_ipcpd-local");
const LAYER: &str = "local-layer";

/// The directory of `ipcpd-local`, with `irmd` and `oping` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IPCPD_LOCAL)
            .parent()
            .expect("ipcpd-local has a directory");
        build_bins(dir, &[("o7s-irmd", "irmd"), ("o7s-cli", "oping")])
    })
}

o7s_testkit::irmd_host!(
    /// One IRMd on its own temporary directory; dropping it kills every process started through
    /// it, stops it (SIGTERM: it stops its IPCPs), and removes the directory and the shared memory.
    Host
);

impl Host {
    fn start() -> Self {
        Self::start_with(&bin_dir().join("irmd"), None)
    }

    /// Starts `irmd` (from `binary`; with `path` as its PATH if given).
    fn start_with(binary: &Path, path: Option<&str>) -> Self {
        let mut options = Options::new(binary).stop(Stop::Term);
        if let Some(path) = path {
            options = options.path(path);
        }
        Self(Irmd::start(temp_dir("ipcpd"), options))
    }

    /// Creates and bootstraps `ipcpd-local` as `name` in [`LAYER`], registers `oping` in the
    /// layer; returns the IPCP's pid.
    fn local_ipcp(&self, name: &str) -> u32 {
        let info = self.ipcp(IpcpType::Local, name, LAYER, None);
        assert_eq!(info.name, name);
        assert!(info.pid > 0);
        self.register_in(LAYER, "oping");
        info.pid
    }

    fn oping(&self, args: &[&str]) -> Command {
        self.tool(bin_dir().join("oping"), args)
    }

    /// Starts `oping -l -n oping` and waits until it accepts.
    fn server(&mut self) -> Lines {
        let server = self.oping(&["-l", "-n", "oping"]);
        self.0.spawn(server, "listening on").1
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

fn wait_output(child: Child) -> Output {
    o7s_testkit::wait_output(child, TIMEOUT)
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
    let server_pid = host.child_pids()[0];
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
