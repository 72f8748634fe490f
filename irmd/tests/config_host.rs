//! Hosts configured entirely from `irmd.conf` (`irmd --config FILE`), with no `irm` command:
//!
//! * one host: a `[local.X]` IPCP bootstrapped with `autobind` and `reg`, a name bound to
//!   `oping` with auto-start arguments; `oping -n NAME -c 3` reaches the server the IRMd starts
//!   for it, through the local IPCP;
//! * two hosts (root: two network namespaces joined by a veth pair), each IRMd with its own run
//!   directory and an `[eth-dix.X]` table on its veth end; host B registers `oping` (auto-started)
//!   and host A's `oping` reaches it across the link;
//! * bad configurations (an unknown key, a missing interface, an IPCP executable that cannot be
//!   found, an unsupported table, a missing file): the IRMd exits non-zero with an error naming
//!   the key, and leaves no process, socket, lockfile or shared memory behind.
//!
//! `ipcpd-local`, `ipcpd-eth-dix` and `oping` belong to other packages, so the tests build them
//! (`cargo build`, a no-op when up to date) next to `irmd`, where the IRMd looks for IPCPs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use o7s_proto::irm::{IpcpState, ListNames, ListProcesses, ResponseKind};
use o7s_testkit::netns::VethPair;
use o7s_testkit::{
    Irmd, Leftovers, Options, Stop, TIMEOUT, alive, build_bins, shm_objects, temp_dir, text,
};

const IRMD: &str = env!("CARGO_BIN_EXE_irmd");

/// The directory of `irmd`, with the IPCPs and `oping` built next to it (`eth`: with
/// `ipcpd-eth-dix` too).
fn bin_dir(eth: bool) -> &'static Path {
    static LOCAL: OnceLock<PathBuf> = OnceLock::new();
    static ETH: OnceLock<PathBuf> = OnceLock::new();
    let dir = Path::new(IRMD).parent().expect("irmd has a directory");
    if eth {
        ETH.get_or_init(|| {
            build_bins(
                dir,
                &[
                    ("o7s-ipcpd", "ipcpd-local"),
                    ("o7s-xdp-ipcp", "ipcpd-eth-dix"),
                    ("o7s-cli", "oping"),
                ],
            )
        })
    } else {
        LOCAL.get_or_init(|| build_bins(dir, &[("o7s-ipcpd", "ipcpd-local"), ("o7s-cli", "oping")]))
    }
}

/// An `irmd.conf` in a temporary file, removed on drop.
struct ConfFile(PathBuf);

impl ConfFile {
    fn new(text: &str) -> Self {
        let path = temp_dir("config-host").with_extension("conf");
        std::fs::write(&path, text).expect("write irmd.conf");
        Self(path)
    }
}

impl Drop for ConfFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

o7s_testkit::irmd_host!(
    /// One IRMd started with `--config`; dropped with SIGTERM, so it stops its IPCPs and the
    /// programs it auto-started.
    Host
);

impl Host {
    /// Starts the IRMd (in namespace `ns` if given) with `conf`, and waits until it has applied
    /// the whole file.
    fn start(conf: &ConfFile, ns: Option<&str>) -> Self {
        let mut options = Options::new(IRMD)
            .rust_log("info")
            .stop(Stop::Term)
            .arg("--config")
            .arg(&conf.0);
        if let Some(ns) = ns {
            options = options.netns(ns);
        }
        let host = Self(Irmd::start(temp_dir("config-host"), options));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = host.log();
            if log.contains("irmd.conf applied") {
                break;
            }
            assert!(
                !log.contains("irmd.conf cannot be applied") && Instant::now() < deadline,
                "irmd.conf not applied:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// `oping -n name -c 3` from a client of this host; its stdout.
    fn ping(&self, name: &str) -> String {
        let out = o7s_testkit::run(self.tool(
            bin_dir(false).join("oping"),
            &["-n", name, "-c", "3", "-i", "20"],
        ));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "oping failed ({}): {stdout}{}\n{}",
            out.status,
            text(&out.stderr),
            self.log()
        );
        assert!(
            stdout.contains("3 packets transmitted, 3 received"),
            "not 3/3: {stdout}"
        );
        stdout
    }

    /// The pids of the announced processes running `program` (by file name).
    fn processes_of(&self, program: &str) -> Vec<u32> {
        match self.client().call_ok(ListProcesses {}) {
            Ok(ResponseKind::Processes(l)) => l
                .processes
                .into_iter()
                .filter(|p| {
                    Path::new(&p.program)
                        .file_name()
                        .is_some_and(|f| f == program)
                })
                .map(|p| p.pid)
                .collect(),
            other => panic!("list processes: {other:?}"),
        }
    }
}

fn is_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (network namespaces, raw sockets, XDP)");
    false
}

#[test]
fn one_host_from_irmd_conf_serves_oping_through_the_local_ipcp() {
    let oping = bin_dir(false).join("oping");
    let conf = ConfFile::new(&format!(
        r#"
# No irm command: the name, its auto-started server and the layer all come from here.
[name.pinger]
prog = ["{oping}"]
args = ["-l -n pinger"]

[local.local0]
bootstrap = "config-local"
hash = "SHA3_384"
autobind = true
reg = ["pinger"]
"#,
        oping = oping.display()
    ));
    let host = Host::start(&conf, None);
    let ipcps = host.ipcps();
    assert_eq!(ipcps.len(), 1, "{ipcps:?}");
    let ipcp = &ipcps[0];
    assert_eq!(ipcp.name, "local0");
    assert_eq!(ipcp.state(), IpcpState::Operational);
    assert_eq!(ipcp.layer.as_deref(), Some("config-local"));
    assert_eq!(ipcp.hash(), o7s_proto::irm::HashAlgo::Sha3_384);
    let names = match host.client().call_ok(ListNames {}) {
        Ok(ResponseKind::Names(n)) => n.names,
        other => panic!("list names: {other:?}"),
    };
    let find = |n: &str| {
        names
            .iter()
            .find(|i| i.name == n)
            .unwrap_or_else(|| panic!("no name {n:?} in {names:?}"))
    };
    assert_eq!(find("pinger").ipcps, ["local0"]);
    assert_eq!(find("pinger").programs, [oping.display().to_string()]);
    // autobind: the IPCP process is bound to its own name and to its layer's.
    assert_eq!(find("local0").processes, [ipcp.pid]);
    assert_eq!(find("config-local").processes, [ipcp.pid]);
    assert!(
        host.processes_of("oping").is_empty(),
        "nothing serves pinger yet"
    );

    let out = host.ping("pinger");
    println!("{out}");
    let log = host.log();
    for line in [
        "irmd.conf: IPCP \"local0\" created",
        "irmd.conf: IPCP \"local0\" bootstrapped",
        "irmd.conf: IPCP process bound to \"config-local\"",
        "irmd.conf: \"pinger\" registered in \"local0\"",
        "auto-started",
        "allocating through the IPCP",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    let servers = host.processes_of("oping");
    assert_eq!(servers.len(), 1, "one auto-started server: {servers:?}");
    // A second client finds the server running: no second start.
    host.ping("pinger");
    assert_eq!(host.processes_of("oping"), servers);
    assert_eq!(log.matches("auto-started").count(), 1, "{log}");

    let prefix = host.shm_prefix();
    drop(host);
    for pid in servers.iter().chain([&ipcp.pid]) {
        assert!(!alive(*pid), "process {pid} survived the IRMd");
    }
    assert_eq!(shm_objects(&prefix), Vec::<String>::new());
}

#[test]
fn two_hosts_from_irmd_conf_ping_over_eth_dix() {
    if !is_root("two_hosts_from_irmd_conf_ping_over_eth_dix") {
        return;
    }
    let bin = bin_dir(true);
    let pair = VethPair::new("o7s-cfg", "o7c", 1500);
    let conf_a = ConfFile::new(&format!(
        r#"
[eth-dix.eth-a]
bootstrap = "config-eth"
dev = "{dev}"
mode = "auto"        # o7s extension: the data path
"#,
        dev = pair.veth[0]
    ));
    let conf_b = ConfFile::new(&format!(
        r#"
[eth-dix.eth-b]
bootstrap = "config-eth"
dev = "{dev}"
ethertype = 0xA000
reg = ["oping"]

[name.oping]
prog = ["{oping}"]
args = ["-l"]
"#,
        dev = pair.veth[1],
        oping = bin.join("oping").display()
    ));
    let a = Host::start(&conf_a, Some(&pair.ns[0]));
    let b = Host::start(&conf_b, Some(&pair.ns[1]));
    for host in [&a, &b] {
        let ipcps = host.ipcps();
        assert_eq!(ipcps.len(), 1, "{ipcps:?}");
        assert_eq!(ipcps[0].state(), IpcpState::Operational);
        println!(
            "{}: pid {}, {}",
            ipcps[0].name,
            ipcps[0].pid,
            ipcps[0].backend.clone().unwrap_or_default()
        );
    }
    let out = a.ping("oping");
    println!("{out}");
    assert!(b.log().contains("auto-started"), "{}", b.log());
    let servers = b.processes_of("oping");
    assert_eq!(servers.len(), 1, "{servers:?}");

    let leftovers = Leftovers::of([&*a, &*b]).and_pids(servers);
    drop(a);
    drop(b);
    leftovers.assert_no_process();
    leftovers.assert_no_shm();
    for (ns, veth) in pair.ns.iter().zip(&pair.veth) {
        let link = o7s_testkit::netns::run(&["ip", "-n", ns, "-d", "link", "show", veth]);
        let link = text(&link.stdout);
        assert!(
            !link.contains("prog/xdp"),
            "an XDP program is still attached: {link}"
        );
    }
}

/// Runs `irmd --config` on a fresh run directory to its end (it must fail); checks that it
/// left nothing behind and returns its stderr.
fn refused(conf_text: Option<&str>, irmd: &Path, path_env: Option<&str>) -> String {
    let dir = temp_dir("config-refused");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let rundir = dir.join("run");
    let conf = dir.join("irmd.conf");
    if let Some(t) = conf_text {
        std::fs::write(&conf, t).expect("write irmd.conf");
    }
    let mut cmd = Command::new(irmd);
    cmd.arg("--rundir")
        .arg(&rundir)
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "info")
        .env_remove("O7S_SHM_PREFIX")
        .stdin(Stdio::null());
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let started = Instant::now();
    let Output { status, stderr, .. } = o7s_testkit::run(cmd);
    let err = text(&stderr);
    assert!(!status.success(), "irmd accepted it:\n{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "irmd took {:?} to give up",
        started.elapsed()
    );
    // Whatever it started is gone.
    for line in err.lines().filter(|l| l.contains("IPCP spawned")) {
        let pid = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        assert!(!alive(pid), "IPCP {pid} survived the failed start:\n{err}");
    }
    for f in ["irmd.sock", "irmd.lock"] {
        assert!(!rundir.join(f).exists(), "{f} left behind:\n{err}");
    }
    let prefix = format!("{}.", o7s::rundir::shm_prefix_for(&rundir));
    let left = shm_objects(&prefix);
    for name in &left {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
    }
    assert!(
        left.is_empty(),
        "shared memory left behind: {left:?}\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[test]
fn bad_configurations_fail_naming_the_key_and_leave_nothing_behind() {
    let irmd = Path::new(IRMD);
    bin_dir(false);
    let err = refused(
        Some("[local.l]\nbootstrap = \"x\"\nlayer = \"y\"\n"),
        irmd,
        None,
    );
    assert!(err.contains("unknown field `layer`"), "{err}");

    let err = refused(Some("[unicast.u]\nbootstrap = \"x\"\n"), irmd, None);
    assert!(err.contains("not supported yet: unicast.u"), "{err}");
    let err = refused(
        Some("[local.l]\nbootstrap = \"x\"\nenrol = \"y\"\n"),
        irmd,
        None,
    );
    assert!(err.contains("not supported yet: local.l.enrol"), "{err}");

    // Applied in file order: the local IPCP is up when the eth-dix table fails, and is stopped.
    let err = refused(
        Some(
            "[local.first]\nbootstrap = \"x\"\nreg = [\"n\"]\n\
             [eth-dix.e]\nbootstrap = \"y\"\ndev = \"o7s-nope0\"\n",
        ),
        irmd,
        None,
    );
    assert!(
        err.contains("eth-dix.e.dev: no network interface \"o7s-nope0\""),
        "{err}"
    );
    assert!(
        err.contains("IPCP spawned"),
        "the local IPCP came first:\n{err}"
    );
    assert!(err.contains("irmd stopped"), "{err}");

    // An IPCP executable it cannot find (an irmd with no ipcpd-local beside it or in PATH).
    let lone = temp_dir("config-lone");
    std::fs::create_dir_all(&lone).expect("dir");
    let lone_irmd = lone.join("irmd");
    std::fs::copy(irmd, &lone_irmd).expect("copy irmd");
    let err = refused(
        Some("[local.l]\nbootstrap = \"x\"\n"),
        &lone_irmd,
        Some("/nonexistent"),
    );
    let _ = std::fs::remove_dir_all(&lone);
    assert!(
        err.contains("local.l: cannot create the IPCP: cannot find the ipcpd-local executable"),
        "{err}"
    );

    let err = refused(None, irmd, None);
    assert!(err.contains("cannot read "), "{err}");
    assert!(err.contains("No such file"), "{err}");
}
