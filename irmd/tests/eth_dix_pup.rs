//! Unprivileged applications over `ipcpd-eth-dix`: two hosts (network namespaces joined by a
//! veth pair, an IRMd and an eth-dix IPCP each, XDP where it attaches), `oping` clients and
//! servers running as uid 65534 (`nobody`, through `setpriv` inside the namespace).
//!
//! The IPCP's UMEM is the shared pool, the applications' rings are in their per-user pools:
//! every SDU is copied once into a frame block on the way out and once into the application's
//! pool on the way in. Checked: pings get every answer between two unprivileged processes, and
//! between an unprivileged and a root one in both directions; the IPCPs count the copies and no
//! drop for lack of a block; the RTTs of a root-to-root ping in the same run are printed beside
//! them; once the processes are gone the IPCPs have no flow left and both hosts' per-user pools
//! are gone.
//!
//! Root only (namespaces, setuid); skips with a reason otherwise. `ipcpd-eth-dix` and `oping`
//! are built next to `irmd`; `oping` is linked into a directory everyone may enter.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use o7s_proto::irm::{EthMode, IpcpType};
use o7s_testkit::netns::VethPair;
use o7s_testkit::{
    AnyoneBin, Irmd, Options, Stop, TIMEOUT, build_bins, eth_dix, run, shm_objects, temp_dir, text,
};

const IRMD: &str = env!("CARGO_BIN_EXE_irmd");
const LAYER: &str = "eth-pup";
const NOBODY: &str = "65534";

/// The directory of `irmd`, with `ipcpd-eth-dix` and `oping` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IRMD).parent().expect("irmd has a directory");
        build_bins(
            dir,
            &[("o7s-xdp-ipcp", "ipcpd-eth-dix"), ("o7s-cli", "oping")],
        )
    })
}

fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root (network namespaces, setuid)");
        return false;
    }
    for tool in ["ip", "setpriv"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("skipping {test}: `{tool}` not found");
            return false;
        }
    }
    true
}

/// One host: an IRMd in a namespace with an eth-dix IPCP `eth` on its veth end.
struct Host(Irmd);

impl Host {
    fn start(ns: &str, dev: &str) -> Self {
        let irmd = Irmd::start(
            temp_dir("eth-dix-pup"),
            Options::new(bin_dir().join("irmd"))
                .netns(ns)
                .rust_log("info")
                .stop(Stop::Term),
        );
        std::fs::set_permissions(&irmd.dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        irmd.ipcp(IpcpType::EthDix, "eth", LAYER, eth_dix(dev, EthMode::Auto));
        Self(irmd)
    }

    fn register(&self, name: &str) {
        self.0.register_in(LAYER, name);
    }

    /// `oping ARGS` in the host's namespace, as `nobody` or root.
    fn oping(&self, bin: &AnyoneBin, unprivileged: bool, args: &[&str]) -> Command {
        let oping = bin.path("oping");
        let oping = oping.to_str().expect("utf-8 path");
        let mut argv = Vec::new();
        if unprivileged {
            argv.extend([
                "--reuid",
                NOBODY,
                "--regid",
                NOBODY,
                "--clear-groups",
                oping,
            ]);
            argv.extend(args);
            self.0.tool("setpriv", &argv)
        } else {
            self.0.tool(oping, args)
        }
    }

    fn server(&mut self, bin: &AnyoneBin, unprivileged: bool, name: &str) -> u32 {
        let cmd = self.oping(bin, unprivileged, &["-l", "-n", name]);
        self.0.spawn(cmd, "listening").0
    }

    fn ping(&self, bin: &AnyoneBin, unprivileged: bool, name: &str, count: u32) -> Output {
        run(self.oping(
            bin,
            unprivileged,
            &["-n", name, "-c", &count.to_string(), "-i", "20"],
        ))
    }

    /// One counter of `irm ipcp stats eth`.
    fn counter(&self, name: &str) -> u64 {
        self.0.ipcp_counter("eth", name)
    }

    fn pups(&self) -> Vec<String> {
        shm_objects(&format!("{}pup.", self.0.shm_prefix()))
    }
}

/// The average RTT (ms) of an `oping` run that got every answer; panics otherwise.
fn average_rtt(out: &Output, count: u32, what: &str, a: &Host, b: &Host) -> f64 {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{count} received")),
        "{what}: oping failed ({}): {stdout}{}\nA: {}\nB: {}",
        out.status,
        text(&out.stderr),
        a.0.log(),
        b.0.log()
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|v| v.split('/').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no rtt line in {stdout}"))
}

#[test]
fn unprivileged_pings_over_eth_dix_copy_through_the_umem() {
    if !can_run("unprivileged_pings_over_eth_dix_copy_through_the_umem") {
        return;
    }
    // `oping` where any uid may run it.
    let bin = AnyoneBin::new("eth-pup-bin", &[(bin_dir().join("oping"), "oping")]);
    let pair = VethPair::new("o7s-h6", "h6v", 1500);
    let a = Host::start(&pair.ns[0], &pair.veth[0]);
    let mut b = Host::start(&pair.ns[1], &pair.veth[1]);
    b.register("pupsrv");
    b.register("rootsrv");
    b.server(&bin, true, "pupsrv");
    b.server(&bin, false, "rootsrv");
    assert_eq!(b.pups().len(), 1, "B's nobody server has its pool");

    let n = 50;
    let runs = [
        ("nobody -> nobody", true, "pupsrv"),
        ("nobody -> root", true, "rootsrv"),
        ("root -> nobody", false, "pupsrv"),
        ("root -> root", false, "rootsrv"),
    ];
    let mut rtts = Vec::new();
    for (what, unprivileged, name) in runs {
        let out = a.ping(&bin, unprivileged, name, n);
        rtts.push((what, average_rtt(&out, n, what, &a, &b)));
    }
    for (what, rtt) in &rtts {
        eprintln!("eth-dix oping {what}: avg rtt {rtt:.3} ms over {n} pings");
    }
    // A copied the unprivileged client's requests out and its replies in (2 x 50), and the
    // root client's SDUs went through without a copy; B the same for its nobody server.
    for (host, side) in [(&a, "A"), (&b, "B")] {
        let out = host.counter("sdus copied out of user pools");
        let into = host.counter("sdus copied into user pools");
        assert_eq!(
            (out, into),
            (2 * u64::from(n), 2 * u64::from(n)),
            "{side}: copies"
        );
        assert_eq!(host.counter("drops user pool empty"), 0, "{side}");
        assert_eq!(host.counter("tx refused"), 0, "{side}");
    }

    // Nothing left once the processes are gone: no flow in either IPCP, no per-user pool.
    for pid in b.0.child_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + TIMEOUT;
    while a.counter("flows") + b.counter("flows") > 0
        || !a.pups().is_empty()
        || !b.pups().is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "flows {} + {}, pools {:?} {:?}\nA: {}\nB: {}",
            a.counter("flows"),
            b.counter("flows"),
            a.pups(),
            b.pups(),
            a.0.log(),
            b.0.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(a);
    drop(b);
}
