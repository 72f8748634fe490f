//! `ipcpd-eth-dix` end to end: two "hosts" (two network namespaces joined by a veth pair),
//! each with its own `irmd` started with `ip netns exec` on its own run directory. On each, an
//! eth-dix IPCP is created and bootstrapped on the veth end (mode auto: native XDP on veth);
//! `oping` and `operf` are registered in host B's layer and served there, and the clients on
//! host A reach them through the two IPCPs: name query, flow allocation and data over the link.
//!
//! Root only (namespaces, XDP); skips with a reason otherwise. `irmd`, `oping` and `operf`
//! belong to other packages, so the test builds them (`cargo build`, a no-op when up to date)
//! into this target directory, next to `ipcpd-eth-dix`, where the IRMd looks for it.
//! Teardown (also on a panic) leaves no process, namespace, XDP program or shared memory.

mod net;

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use net::{NetnsPair, can_run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_proto::irm::{
    BootstrapIpcp, CreateIpcp, EthConfig, EthMode, HashAlgo, IpcpConfig, IpcpInfo, IpcpStats,
    IpcpType, IpcpTypeConfig, ListIpcps, RegisterName, RegisterTarget, ResponseKind,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const IPCPD: &str = env!("CARGO_BIN_EXE_ipcpd-eth-dix");
const LAYER: &str = "eth-layer";

/// The directory of `ipcpd-eth-dix`, with `irmd`, `oping` and `operf` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IPCPD)
            .parent()
            .expect("ipcpd-eth-dix has a directory")
            .to_owned();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "o7s-irmd", "--bin", "irmd"])
            .args(["-p", "o7s-cli", "--bin", "oping", "--bin", "operf"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build
            .status()
            .expect("run cargo build for irmd, oping, operf");
        assert!(
            status.success(),
            "cannot build irmd, oping, operf: {status}"
        );
        for b in ["irmd", "oping", "operf"] {
            assert!(dir.join(b).exists(), "{b} missing after the build");
        }
        dir
    })
}

/// One host: an IRMd in namespace `ns` on `<dir>/run`. Dropping it kills the processes
/// started on it and the IRMd (which stops its IPCPs), and removes its directory and shared
/// memory.
struct Host {
    ns: String,
    dir: PathBuf,
    rundir: PathBuf,
    irmd: Child,
    children: Vec<Child>,
}

impl Host {
    fn start(ns: &str, dir: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("host dir");
        let rundir = dir.join("run");
        let log = std::fs::File::create(dir.join("irmd.log")).expect("log");
        // `ip netns exec` execs the program: the child's pid is the IRMd's.
        let irmd = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin_dir().join("irmd"))
            .arg("--rundir")
            .arg(&rundir)
            .env("RUST_LOG", "info")
            .env_remove("O7S_SHM_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn irmd");
        let host = Self {
            ns: ns.to_owned(),
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

    /// Creates `ipcpd-eth-dix` as `name` and bootstraps it on `dev`; returns its info.
    fn eth_ipcp(&self, name: &str, dev: &str) -> IpcpInfo {
        let mut c = self.client();
        match c.call_ok(CreateIpcp {
            ipcp_type: IpcpType::EthDix.into(),
            name: name.into(),
        }) {
            Ok(ResponseKind::Ipcp(_)) => {}
            other => panic!("create ipcp: {other:?}\n{}", self.log()),
        }
        c.call_ok(BootstrapIpcp {
            name: name.into(),
            config: Some(IpcpConfig {
                layer: LAYER.into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: Some(IpcpTypeConfig::Eth(EthConfig {
                    dev: dev.into(),
                    ethertype: 0xA000,
                    mode: EthMode::Auto.into(),
                })),
            }),
        })
        .unwrap_or_else(|e| panic!("bootstrap: {e}\n{}", self.log()));
        match c.call_ok(ListIpcps {}) {
            Ok(ResponseKind::Ipcps(l)) => l
                .ipcps
                .into_iter()
                .find(|i| i.name == name)
                .expect("the IPCP is listed"),
            other => panic!("list ipcps: {other:?}"),
        }
    }

    fn register(&self, name: &str) {
        self.client()
            .call_ok(RegisterName {
                name: name.into(),
                target: Some(RegisterTarget::Layer(LAYER.into())),
            })
            .unwrap_or_else(|e| panic!("register {name}: {e}\n{}", self.log()));
    }

    fn stats(&self, ipcp: &str) -> Vec<(String, u64)> {
        match self.client().call_ok(IpcpStats { name: ipcp.into() }) {
            Ok(ResponseKind::Stats(s)) => {
                s.counters.into_iter().map(|c| (c.name, c.value)).collect()
            }
            other => panic!("ipcp stats: {other:?}"),
        }
    }

    /// A tool of `bin_dir()` run in this host's namespace against its IRMd.
    fn tool(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(bin_dir().join(program))
            .args(args)
            .env("O7S_RUNDIR", &self.rundir)
            .stdin(Stdio::null());
        c
    }

    /// Starts `program -l -n name` and waits until it listens.
    fn server(&mut self, program: &str, name: &str) -> Lines {
        let mut child = self
            .tool(program, &["-l", "-n", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut lines = Lines::new(child.stdout.take().expect("stdout"));
        self.children.push(child);
        lines.wait_for("listening on", TIMEOUT);
        lines
    }

    /// The pids of the IRMd's children (its IPCPs).
    fn ipcp_pids(&self) -> Vec<u32> {
        match self.client().call_ok(ListIpcps {}) {
            Ok(ResponseKind::Ipcps(l)) => l.ipcps.iter().map(|i| i.pid).collect(),
            _ => Vec::new(),
        }
    }

    fn shm_prefix(&self) -> String {
        format!("{}.", o7s::rundir::shm_prefix_for(&self.rundir))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // SIGTERM: the IRMd stops its IPCPs on the way out.
        if let Ok(pid) = i32::try_from(self.irmd.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.irmd.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.irmd.kill();
        let _ = self.irmd.wait();
        let prefix = self.shm_prefix();
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

fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
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

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn oping_and_operf_across_two_hosts_over_eth_dix() {
    if !can_run("oping_and_operf_across_two_hosts_over_eth_dix", true) {
        return;
    }
    let started = Instant::now();
    let pair = NetnsPair::new(1500);
    let base = std::env::temp_dir().join(format!("o7s-eth-dix-test-{}", std::process::id()));
    let a = Host::start(&pair.ns[0], base.join("hostA"));
    let mut b = Host::start(&pair.ns[1], base.join("hostB"));

    let info_a = a.eth_ipcp("eth-a", &pair.veth[0]);
    let info_b = b.eth_ipcp("eth-b", &pair.veth[1]);
    for info in [&info_a, &info_b] {
        let backend = info.backend.clone().unwrap_or_default();
        println!("{}: pid {}, {backend}", info.name, info.pid);
        assert!(
            backend.starts_with("xdp native"),
            "mode auto on veth should give native XDP, got {backend:?}"
        );
    }
    b.register("oping");
    b.register("operf");
    let _oping_server = b.server("oping", "oping");
    let _operf_server = b.server("operf", "operf");
    println!("setup: {:.2} s", started.elapsed().as_secs_f64());

    let t = Instant::now();
    let ping = a
        .tool("oping", &["-n", "oping", "-c", "20", "-i", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oping");
    let out = wait_output(ping, TIMEOUT);
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "oping failed ({}): {stdout}{}\nA: {}\nB: {}",
        out.status,
        text(&out.stderr),
        a.log(),
        b.log()
    );
    assert!(
        stdout.contains("20 packets transmitted, 20 received"),
        "not 20/20: {stdout}"
    );
    println!("oping: {:.2} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let perf = a
        .tool("operf", &["-n", "operf", "-d", "2", "-s", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn operf");
    let out = wait_output(perf, TIMEOUT);
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "operf failed ({}): {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("sent "), "no operf figures: {stdout}");
    println!("operf: {:.2} s", t.elapsed().as_secs_f64());
    for (host, ipcp) in [(&a, "eth-a"), (&b, "eth-b")] {
        let counters: Vec<String> = host
            .stats(ipcp)
            .into_iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!("{ipcp}: {}", counters.join(", "));
    }

    // Teardown: hosts first (their IPCPs go with the IRMds), then the namespaces.
    let pids: Vec<u32> = [&a, &b]
        .iter()
        .flat_map(|h| {
            let mut p = h.ipcp_pids();
            p.push(h.irmd.id());
            p
        })
        .collect();
    let prefixes = [a.shm_prefix(), b.shm_prefix()];
    drop(a);
    drop(b);
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} survived the teardown");
    }
    for (ns, veth) in pair.ns.iter().zip(&pair.veth) {
        let link = net::run(&["ip", "-n", ns, "-d", "link", "show", veth]);
        let link = text(&link.stdout);
        assert!(
            !link.contains("xdp"),
            "an XDP program is still attached: {link}"
        );
    }
    let names = pair.ns.clone();
    drop(pair);
    let list = text(&net::run(&["ip", "netns", "list"]).stdout);
    for ns in &names {
        assert!(!list.contains(ns.as_str()), "namespace {ns} left behind");
    }
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !prefixes.iter().any(|p| name.starts_with(p.as_str())),
                "shared memory {name} left behind"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    println!("total: {:.2} s", started.elapsed().as_secs_f64());
}
