//! A real `irmd` on a temporary run directory.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_pool::{Access, Pool, pool_name};
use o7s_proto::dix::DEFAULT_ETHERTYPE;
use o7s_proto::irm::{
    BootstrapIpcp, CreateIpcp, EthConfig, EthMode, HashAlgo, IpcpConfig, IpcpInfo, IpcpStats,
    IpcpType, IpcpTypeConfig, ListFlows, ListIpcps, RegisterName, RegisterTarget, ResponseKind,
};

use crate::TIMEOUT;
use crate::process::Lines;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory name under the system's temporary directory:
/// `o7s-<tag>-test-<pid>-<n>`.
pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "o7s-{tag}-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// How a dropped [`Irmd`] stops the IRMd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL.
    Kill,
    /// SIGKILL to the IPCPs it lists (they are not our children), then SIGKILL to it.
    KillIpcps,
    /// SIGTERM (the IRMd stops its IPCPs on the way out), SIGKILL after 10 s.
    Term,
}

/// How to start an IRMd.
#[derive(Clone, Debug)]
pub struct Options {
    binary: PathBuf,
    netns: Option<String>,
    rust_log: String,
    path: Option<String>,
    stop: Stop,
    args: Vec<OsString>,
}

impl Options {
    /// The `irmd` at `binary`, with `RUST_LOG=debug`, stopped with [`Stop::Kill`].
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            netns: None,
            rust_log: "debug".into(),
            path: None,
            stop: Stop::Kill,
            args: Vec::new(),
        }
    }

    /// Runs the IRMd, and the tools of [`Irmd::tool`], in network namespace `ns` (through
    /// `ip netns exec`, which execs the program: the child's pid is the IRMd's).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_owned());
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// The IRMd's PATH.
    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    pub fn stop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// One more argument of the IRMd (after `--rundir DIR`), e.g. `--config`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn command(&self, program: &OsStr) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// One IRMd on its own directory (`<dir>/run`, its log in `<dir>/irmd.log`); dropping it
/// kills every process started through it, stops the IRMd (see [`Stop`]), and removes the
/// directory and the shared memory.
pub struct Irmd {
    pub dir: PathBuf,
    pub rundir: PathBuf,
    options: Options,
    irmd: Child,
    children: Vec<Child>,
}

impl Irmd {
    /// Starts the IRMd on a fresh `dir` and waits until its socket answers.
    pub fn start(dir: PathBuf, options: Options) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let rundir = dir.join("run");
        let log = std::fs::File::create(dir.join("irmd.log")).expect("log");
        let mut cmd = options.command(options.binary.as_os_str());
        cmd.arg("--rundir")
            .arg(&rundir)
            .args(&options.args)
            .env("RUST_LOG", &options.rust_log)
            .env_remove("O7S_SHM_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(path) = &options.path {
            cmd.env("PATH", path);
        }
        let irmd = cmd.spawn().expect("spawn irmd");
        let host = Self {
            dir,
            rundir,
            options,
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

    /// The IRMd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("irmd.log")).unwrap_or_default()
    }

    /// A management client, with [`TIMEOUT`] on its calls.
    pub fn client(&self) -> o7s::irm::Client {
        let c = o7s::irm::Client::connect(&self.rundir).expect("connect");
        c.set_timeout(Some(TIMEOUT)).expect("timeout");
        c
    }

    /// A tool run against this IRMd (through O7S_RUNDIR; in its namespace if it has one).
    pub fn tool(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut c = self.options.command(program.as_ref());
        c.args(args)
            .env("O7S_RUNDIR", &self.rundir)
            .stdin(Stdio::null());
        c
    }

    /// Starts `command` with piped stdout, killed when the IRMd goes; waits for a line
    /// containing `ready`. Returns its pid and its stdout.
    pub fn spawn(&mut self, mut command: Command, ready: &str) -> (u32, Lines) {
        let mut child = command
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

    /// The IRMd's pid.
    pub fn pid(&self) -> u32 {
        self.irmd.id()
    }

    /// The pids of the processes started through [`Irmd::spawn`], in order.
    pub fn child_pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn flows(&self) -> Vec<o7s::FlowInfo> {
        match self.client().call_ok(ListFlows {}) {
            Ok(ResponseKind::Flows(f)) => f.flows,
            other => panic!("list flows: {other:?}"),
        }
    }

    pub fn ipcps(&self) -> Vec<IpcpInfo> {
        match self.client().call_ok(ListIpcps {}) {
            Ok(ResponseKind::Ipcps(l)) => l.ipcps,
            other => panic!("list ipcps: {other:?}"),
        }
    }

    /// Creates an IPCP of `ipcp_type` named `name` and bootstraps it into `layer` (SHA3-256,
    /// with `type_config` for the types that take one, e.g. [`eth_dix`]); returns it as the
    /// IRMd lists it after the bootstrap (its pid, state, the data path it reported). Panics,
    /// with the IRMd's log, if either step fails.
    pub fn ipcp(
        &self,
        ipcp_type: IpcpType,
        name: &str,
        layer: &str,
        type_config: Option<IpcpTypeConfig>,
    ) -> IpcpInfo {
        let mut c = self.client();
        match c.call_ok(CreateIpcp {
            ipcp_type: ipcp_type.into(),
            name: name.into(),
        }) {
            Ok(ResponseKind::Ipcp(_)) => {}
            other => panic!("create IPCP {name:?}: {other:?}\n{}", self.log()),
        }
        c.call_ok(BootstrapIpcp {
            name: name.into(),
            config: Some(IpcpConfig {
                layer: layer.into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config,
            }),
        })
        .unwrap_or_else(|e| panic!("bootstrap IPCP {name:?}: {e}\n{}", self.log()));
        self.ipcps()
            .into_iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("IPCP {name:?} not listed after its bootstrap"))
    }

    /// Registers `name` in `layer`; panics, with the IRMd's log, if that is refused.
    pub fn register_in(&self, layer: &str, name: &str) {
        self.client()
            .call_ok(RegisterName {
                name: name.into(),
                target: Some(RegisterTarget::Layer(layer.into())),
            })
            .unwrap_or_else(|e| panic!("register {name:?} in {layer:?}: {e}\n{}", self.log()));
    }

    /// The counters of the IPCP named `ipcp` (`irm ipcp stats`), in its order.
    pub fn ipcp_stats(&self, ipcp: &str) -> Vec<(String, u64)> {
        match self.client().call_ok(IpcpStats { name: ipcp.into() }) {
            Ok(ResponseKind::Stats(s)) => {
                s.counters.into_iter().map(|c| (c.name, c.value)).collect()
            }
            other => panic!("stats of IPCP {ipcp:?}: {other:?}"),
        }
    }

    /// One counter of the IPCP named `ipcp`; panics if it has none of that name.
    pub fn ipcp_counter(&self, ipcp: &str, counter: &str) -> u64 {
        let stats = self.ipcp_stats(ipcp);
        stats
            .iter()
            .find(|(name, _)| name == counter)
            .map(|&(_, value)| value)
            .unwrap_or_else(|| panic!("IPCP {ipcp:?} has no counter {counter:?}: {stats:?}"))
    }

    /// Waits until counter `counter` of the IPCP named `ipcp` is `value`; panics, with `what`
    /// and the IRMd's log, if it is not within [`TIMEOUT`].
    pub fn wait_ipcp_counter(&self, ipcp: &str, counter: &str, value: u64, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.ipcp_counter(ipcp, counter);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: IPCP {ipcp:?} counts {now} {counter}, not {value}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The IRMd's packet pool, opened by name.
    pub fn pool(&self) -> Pool {
        Pool::open(&pool_name(
            &o7s::rundir::shm_prefix_for(&self.rundir),
            Access::Shared,
        ))
        .expect("open the IRMd's pool")
    }

    /// The prefix (with its final dot) of the IRMd's shared-memory names in /dev/shm.
    pub fn shm_prefix(&self) -> String {
        format!("{}.", o7s::rundir::shm_prefix_for(&self.rundir))
    }
}

/// The configuration of an eth-dix IPCP on `dev` in `mode`, with the reference's default
/// ethertype ([`DEFAULT_ETHERTYPE`], 0xA000), for [`Irmd::ipcp`].
pub fn eth_dix(dev: &str, mode: EthMode) -> Option<IpcpTypeConfig> {
    Some(IpcpTypeConfig::Eth(EthConfig {
        dev: dev.into(),
        ethertype: DEFAULT_ETHERTYPE.into(),
        mode: mode.into(),
    }))
}

impl Drop for Irmd {
    fn drop(&mut self) {
        if self.options.stop == Stop::KillIpcps {
            // IPCPs the IRMd spawned are not our children: stop them before the IRMd.
            if let Ok(mut c) = o7s::irm::Client::connect(&self.rundir) {
                let _ = c.set_timeout(Some(Duration::from_secs(2)));
                if let Ok(ResponseKind::Ipcps(l)) = c.call_ok(ListIpcps {}) {
                    for i in l.ipcps {
                        if let Ok(pid) = i32::try_from(i.pid) {
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.options.stop == Stop::Term {
            // SIGTERM: the IRMd stops its IPCPs on the way out.
            if let Ok(pid) = i32::try_from(self.irmd.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.irmd.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
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
