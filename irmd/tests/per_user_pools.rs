//! Per-user pools (PUPs) with a real unprivileged uid: `oping` processes run as uid 65534
//! (`nobody`, dropped to with setuid/setgid by the root test harness) against a root IRMd.
//!
//! * Two processes of one unprivileged uid talk over a direct flow whose rings are in their
//!   uid's pool (`<prefix>.pup.65534`, mode 0600, owned by 65534); the shared pool is not used.
//! * Between the shared pool and a PUP a direct flow is refused at once (`PoolMismatch`, with
//!   what to do) in both directions; through `ipcpd-local` the same flows work, the IPCP
//!   copying each SDU between the pools.
//! * A PUP is destroyed once its uid's last process is gone, whether that process exited or
//!   was SIGKILLed, and every block of it was back on its free lists by then (`verify` on a
//!   mapping kept by the test); a new process of the uid gets a new one.
//! * Another uid can neither open the PUP nor share a direct flow with it.
//! * An IRMd run by an ordinary user (65534) gives its own uid's processes the shared pool,
//!   and refuses another uid's announce with an error that says why and what to do, since it
//!   cannot give a pool away.
//!
//! Root only (setuid, chown): skips with a reason otherwise. `ipcpd-local` and `oping` belong
//! to other packages, so the test builds them next to `irmd`; `oping` is linked into a
//! directory everyone may enter, since the build tree may not be. Teardown leaves no process
//! or shared memory behind.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_pool::Pool;
use o7s_proto::irm::{ErrorCode, IpcpType};
use o7s_testkit::{
    AnyoneBin, Irmd, Lines, Options, Stop, TIMEOUT, build_bins, run, temp_dir, text,
};

const IRMD: &str = env!("CARGO_BIN_EXE_irmd");
const NOBODY: u32 = 65534;
const OTHER: u32 = 65533;
const LAYER: &str = "pup-layer";

/// The directory of `irmd`, with `ipcpd-local` and `oping` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IRMD).parent().expect("irmd has a directory");
        build_bins(dir, &[("o7s-ipcpd", "ipcpd-local"), ("o7s-cli", "oping")])
    })
}

fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root (to run processes as uid {NOBODY})");
        return false;
    }
    true
}

/// `oping`, and the other programs of [`bin_dir`] named in `more`, where any uid may run them.
fn anyone_bin(more: &[&str]) -> AnyoneBin {
    let programs: Vec<(PathBuf, &str)> = ["oping"]
        .iter()
        .chain(more)
        .map(|&name| (bin_dir().join(name), name))
        .collect();
    AnyoneBin::new("pup-bin", &programs)
}

/// An IRMd (root) whose run directory anyone can reach, and `oping` for anyone.
struct Host {
    // Dropped first: its processes and shared memory go before the binary's directory.
    irmd: Irmd,
    bin: AnyoneBin,
}

impl Host {
    fn start() -> Self {
        let bin = anyone_bin(&[]);
        let irmd = Irmd::start(
            temp_dir("pup"),
            Options::new(bin_dir().join("irmd"))
                .rust_log("info")
                .stop(Stop::Term),
        );
        // The IRMd creates `<dir>/run` itself; the test directory above it must be enterable.
        std::fs::set_permissions(&irmd.dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        Self { irmd, bin }
    }

    /// `oping ARGS` against this IRMd, as `uid` (`None`: root).
    fn oping(&self, uid: Option<u32>, args: &[&str]) -> Command {
        let mut c = self.irmd.tool(self.bin.path("oping"), args);
        if let Some(uid) = uid {
            // As root, std drops the supplementary groups when it sets a uid.
            c.uid(uid).gid(uid);
        }
        c
    }

    /// `oping -l -n NAME` as `uid`, once it listens: its pid and stdout.
    fn server(&mut self, uid: Option<u32>, name: &str) -> (u32, Lines) {
        let cmd = self.oping(uid, &["-l", "-n", name]);
        self.irmd.spawn(cmd, "listening")
    }

    /// `oping -n NAME -c COUNT -i 10` as `uid`, to its end.
    fn ping(&self, uid: Option<u32>, name: &str, count: u32) -> Output {
        run(self.oping(uid, &["-n", name, "-c", &count.to_string(), "-i", "10"]))
    }

    /// Asserts that `oping` got every reply.
    fn assert_pinged(&self, out: &Output, count: u32) {
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("{count} received")),
            "oping failed ({}): {stdout}{}\n{}",
            out.status,
            text(&out.stderr),
            self.irmd.log()
        );
    }

    /// The name of `uid`'s per-user pool.
    fn pup(&self, uid: u32) -> String {
        format!("{}pup.{uid}", self.irmd.shm_prefix())
    }

    fn pup_exists(&self, uid: u32) -> bool {
        Path::new("/dev/shm").join(self.pup(uid)).exists()
    }

    /// Waits until `uid`'s per-user pool is gone from /dev/shm.
    fn wait_pup_gone(&self, uid: u32) {
        let deadline = Instant::now() + TIMEOUT;
        while self.pup_exists(uid) {
            assert!(
                Instant::now() < deadline,
                "{} still there:\n{}",
                self.pup(uid),
                self.irmd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates and bootstraps `ipcpd-local` and registers `names` in its layer.
    fn local_ipcp(&self, names: &[&str]) {
        self.irmd.ipcp(IpcpType::Local, "local", LAYER, None);
        for name in names {
            self.irmd.register_in(LAYER, name);
        }
    }
}

fn sigkill(pid: u32) {
    let _ = kill(
        Pid::from_raw(i32::try_from(pid).expect("pid")),
        Signal::SIGKILL,
    );
}

/// Every block of `pool` is free, and its invariants hold.
fn assert_all_free(pool: &Pool) {
    let report = pool.verify();
    assert!(report.is_ok(), "{}: {:?}", pool.name(), report.problems);
    assert_eq!(
        report.free,
        report.total(),
        "{}: blocks still in use: {report:?}",
        pool.name()
    );
}

#[test]
fn same_uid_flows_are_direct_and_stay_in_the_users_pool() {
    if !can_run("same_uid_flows_are_direct_and_stay_in_the_users_pool") {
        return;
    }
    let mut host = Host::start();
    let shared = host.irmd.pool();
    let (server, _) = host.server(Some(NOBODY), "pupsrv");
    let pup = host.pup(NOBODY);
    let meta = std::fs::metadata(Path::new("/dev/shm").join(&pup)).expect("the pup exists");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (NOBODY, 0o600),
        "owned by the uid, 0600"
    );
    // Kept mapped to check its blocks after the IRMd destroyed it.
    let pup_pool = Pool::open(&pup).expect("root opens the pup");

    let cmd = host.oping(Some(NOBODY), &["-n", "pupsrv", "-c", "30", "-i", "10"]);
    let (client, mut lines) = host.irmd.spawn(cmd, "bytes from");
    let flows = host.irmd.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let f = &flows[0];
    assert_eq!(
        (f.n_pid, f.n_1_pid, f.pool.as_str(), f.uid),
        (client, server, pup.as_str(), NOBODY),
        "a direct flow with its rings in the pup"
    );
    let done = lines.wait_for("packets transmitted", TIMEOUT);
    assert!(done.contains("30 received"), "{done}");
    assert_all_free(&shared);

    // The server is the uid's last process: the pool goes with it.
    sigkill(server);
    host.wait_pup_gone(NOBODY);
    assert_all_free(&pup_pool);
    assert!(
        host.irmd
            .log()
            .contains("per-user pool destroyed with its last process"),
        "{}",
        host.irmd.log()
    );
    assert_all_free(&shared);
}

#[test]
fn the_pool_goes_with_the_last_process_also_after_a_sigkill() {
    if !can_run("the_pool_goes_with_the_last_process_also_after_a_sigkill") {
        return;
    }
    let mut host = Host::start();
    let (server, _) = host.server(Some(NOBODY), "pupsrv");
    let pup_pool = Pool::open(&host.pup(NOBODY)).expect("root opens the pup");
    // A client in mid-flow when its server is SIGKILLed: it reads the end of the flow and
    // exits on its own (saying goodbye), the uid's last process.
    let mut child = host
        .oping(Some(NOBODY), &["-n", "pupsrv", "-c", "100000", "-i", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn oping");
    let client = child.id();
    let mut out = Lines::new(child.stdout.take().expect("stdout"));
    out.wait_for("bytes from", TIMEOUT);
    sigkill(server);
    out.wait_for("Flow ended", TIMEOUT);
    let deadline = Instant::now() + TIMEOUT;
    while matches!(child.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the client does not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    host.wait_pup_gone(NOBODY);
    let log = host.irmd.log();
    assert!(
        log.contains(&format!("process said goodbye pid={client}")),
        "{log}"
    );
    assert_all_free(&pup_pool);
    assert!(report_ok(&host.irmd.pool()));

    // A new process of the uid gets a new pool, of the same name.
    let (server, _) = host.server(Some(NOBODY), "pupsrv");
    assert!(host.pup_exists(NOBODY));
    let out = host.ping(Some(NOBODY), "pupsrv", 5);
    host.assert_pinged(&out, 5);
    sigkill(server);
    host.wait_pup_gone(NOBODY);
}

fn report_ok(pool: &Pool) -> bool {
    let r = pool.verify();
    r.is_ok() && r.free == r.total()
}

#[test]
fn flows_across_pools_are_refused_at_once_unless_an_ipcp_copies() {
    if !can_run("flows_across_pools_are_refused_at_once_unless_an_ipcp_copies") {
        return;
    }
    let mut host = Host::start();
    host.server(Some(NOBODY), "pupsrv");
    host.server(None, "rootsrv");
    let pup_pool = Pool::open(&host.pup(NOBODY)).expect("root opens the pup");

    // Root (this process, the shared pool) to the unprivileged server: refused at once.
    let me = o7s::Client::connect_to(&host.irmd.rundir).expect("connect");
    assert_eq!((me.pool_uid(), me.pool()), (0, host.irmd.pool().name()));
    let started = Instant::now();
    let e = me
        .flow_alloc("pupsrv", None, Some(Duration::from_secs(10)))
        .map(drop)
        .expect_err("no direct flow across pools");
    assert_eq!(e.code(), Some(ErrorCode::PoolMismatch), "{e}");
    assert!(e.to_string().contains("local IPCP"), "says what to do: {e}");
    assert!(started.elapsed() < Duration::from_secs(2), "not a time-out");

    // The unprivileged client to the root server: the same.
    let started = Instant::now();
    let out = host.ping(Some(NOBODY), "rootsrv", 1);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PoolMismatch"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not a time-out");
    assert!(host.irmd.flows().is_empty());

    // An allocation already waiting when a server of another pool comes to accept: refused
    // then, not left to time out.
    host.irmd
        .client()
        .call_ok(o7s_proto::irm::CreateName {
            name: "latesrv".into(),
            lb: 0,
        })
        .expect("create the name");
    let started = Instant::now();
    let e = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            me.flow_alloc("latesrv", None, Some(Duration::from_secs(20)))
                .map(drop)
                .expect_err("no direct flow across pools")
        });
        std::thread::sleep(Duration::from_millis(500));
        host.server(Some(NOBODY), "latesrv");
        waiting.join().expect("the allocating thread")
    });
    assert_eq!(e.code(), Some(ErrorCode::PoolMismatch), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not a time-out"
    );
    assert!(host.irmd.flows().is_empty());

    // Through the local IPCP both work: it copies between the pools.
    host.local_ipcp(&["pupsrv", "rootsrv"]);
    let out = host.ping(Some(NOBODY), "rootsrv", 20);
    host.assert_pinged(&out, 20);
    let flow = me
        .flow_alloc("pupsrv", None, Some(TIMEOUT))
        .expect("root to the pup server through the IPCP");
    let mut buf = [0u8; 64];
    flow.set_read_timeout(Some(TIMEOUT));
    for i in 0..20u32 {
        // An oping request (type 0, id i): the server echoes it as a reply (type 1).
        let mut req = [0u8; 64];
        req[4..8].copy_from_slice(&i.to_be_bytes());
        flow.write(&req).expect("write");
        let n = flow.read(&mut buf).expect("the reply");
        assert_eq!(n, 64);
        assert_eq!(
            &buf[0..8],
            [&1u32.to_be_bytes()[..], &i.to_be_bytes()].concat()
        );
    }
    let flows = host.irmd.flows();
    let pools: Vec<(&str, u32)> = flows.iter().map(|f| (f.pool.as_str(), f.uid)).collect();
    assert!(
        pools.contains(&(host.irmd.pool().name(), 0))
            && pools.contains(&(host.pup(NOBODY).as_str(), NOBODY)),
        "one flow in each pool, joined by the IPCP: {flows:?}"
    );
    assert!(
        host.irmd.log().contains("copying between the pools"),
        "the IPCP copies: {}",
        host.irmd.log()
    );
    flow.dealloc().expect("dealloc");
    drop(me);
    let deadline = Instant::now() + TIMEOUT;
    while !host.irmd.flows().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", host.irmd.flows());
        std::thread::sleep(Duration::from_millis(20));
    }
    let shared = host.irmd.pool();
    for pool in [&shared, &pup_pool] {
        let r = pool.verify();
        assert!(r.is_ok(), "{}: {:?}", pool.name(), r.problems);
        assert_eq!(
            (r.owned, r.queued, r.held, r.lent),
            (0, 0, 0, 0),
            "{}: {r:?}",
            pool.name()
        );
    }
}

#[test]
fn another_uid_cannot_use_the_pool() {
    if !can_run("another_uid_cannot_use_the_pool") {
        return;
    }
    let mut host = Host::start();
    host.server(Some(NOBODY), "pupsrv");
    host.server(Some(OTHER), "othersrv");
    assert!(
        host.pup_exists(NOBODY) && host.pup_exists(OTHER),
        "one pool each"
    );
    let read_as = |uid: u32, name: &str| {
        Command::new("cat")
            .arg(Path::new("/dev/shm").join(name))
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run cat")
    };
    let denied = read_as(OTHER, &host.pup(NOBODY));
    assert!(
        !denied.status.success() && text(&denied.stderr).contains("Permission denied"),
        "{}",
        text(&denied.stderr)
    );
    assert!(read_as(NOBODY, &host.pup(NOBODY)).status.success());
    let denied = read_as(NOBODY, host.irmd.pool().name());
    assert!(!denied.status.success(), "nor the shared pool");

    let out = host.ping(Some(OTHER), "pupsrv", 1);
    assert!(
        !out.status.success() && text(&out.stderr).contains("PoolMismatch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_irmd_of_an_ordinary_user_cannot_make_pools_for_others_and_says_so() {
    if !can_run("an_irmd_of_an_ordinary_user_cannot_make_pools_for_others_and_says_so") {
        return;
    }
    // The IRMd as uid 65534: a wrapper that gives it its run directory, then drops to it.
    let bin = anyone_bin(&["irmd"]);
    let irmd = bin.path("irmd");
    let wrapper = bin.path("irmd-as-nobody");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# irmd --rundir DIR ...\nmkdir -p \"$2\" && chown {NOBODY}:{NOBODY} \"$2\" && \
             exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups '{}' \"$@\"\n",
            irmd.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let irmd = Irmd::start(
        temp_dir("pup-nobody-irmd"),
        Options::new(&wrapper).rust_log("info").stop(Stop::Term),
    );
    let mut host = Host { irmd, bin };
    let shared = Path::new("/dev/shm").join(format!("{}pool", host.irmd.shm_prefix()));
    assert_eq!(
        std::fs::metadata(&shared).expect("the shared pool").uid(),
        NOBODY,
        "made by the IRMd's uid"
    );

    // Its own uid's processes share its pool.
    host.server(Some(NOBODY), "mine");
    let out = host.ping(Some(NOBODY), "mine", 5);
    host.assert_pinged(&out, 5);
    assert!(
        !host.pup_exists(NOBODY),
        "no per-user pool for the IRMd's own uid"
    );

    // Another uid's announce is refused, clearly.
    let out = host.ping(Some(OTHER), "mine", 1);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    for words in [
        "is not privileged",
        "cannot create the per-user pool",
        "run the irmd as root",
        "PermissionDenied",
    ] {
        assert!(err.contains(words), "{words:?} not in: {err}");
    }
    assert!(!host.pup_exists(OTHER), "nothing half made");
}
