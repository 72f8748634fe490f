//! The `netns` backend: every host is a network namespace on this machine.
//!
//! A two-ended link is a veth pair created directly between the two host namespaces (no name
//! ever appears in the caller's namespace); a link with more ends is a bridge in a namespace of
//! its own with one veth pair per end. Namespaces, spawned processes and the scratch directory
//! are removed by drop guards on every exit path.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::scenario::{self, Action, Requirement, Scenario};
use crate::util::{self, GroupChild};
use crate::{Backend, Verdict};

/// The network-namespace backend.
#[derive(Default)]
pub struct Netns {
    /// Print every step and its output as it runs.
    pub verbose: bool,
}

/// A network namespace deleted on drop (which also deletes its interfaces).
pub struct NsGuard {
    pub name: String,
}

impl NsGuard {
    pub fn new(name: String) -> Result<Self> {
        util::run(Command::new("ip").args(["netns", "add", &name]))?;
        let guard = Self { name };
        guard.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        util::run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A directory removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(util::unique(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything one run created; fields drop in order: processes first, then namespaces.
struct World {
    procs: HashMap<(String, String), GroupChild>,
    hosts: HashMap<String, NsGuard>,
    _switches: Vec<NsGuard>,
    bin: PathBuf,
    /// Per-host `log` and `run` directories (`$O7S_LOG`, `$O7S_RUNDIR`).
    host_dirs: PathBuf,
    _scratch: TempDir,
}

impl Drop for World {
    /// SIGTERM first, so daemons clean up after themselves (an `irmd` removes its shared pool,
    /// an IPCP its XDP program); whatever is left after 5 s gets the guards' SIGKILL.
    fn drop(&mut self) {
        for p in self.procs.values() {
            p.signal(rustix::process::Signal::TERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        for p in self.procs.values_mut() {
            while Instant::now() < end && matches!(p.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl World {
    fn build(s: &Scenario) -> Result<Self> {
        let scratch = TempDir::new(util::NS_PREFIX)?;
        let bin = scratch.0.join("bin");
        let host_dirs = scratch.0.join("hosts");
        std::fs::create_dir_all(&bin)?;
        for h in &s.hosts {
            std::fs::create_dir_all(host_dirs.join(h).join("log"))?;
            std::fs::create_dir_all(host_dirs.join(h).join("run"))?;
        }
        for p in &s.payload {
            std::os::unix::fs::symlink(&p.src, bin.join(&p.name))?;
        }
        let mut hosts = HashMap::new();
        for h in &s.hosts {
            hosts.insert(
                h.clone(),
                NsGuard::new(util::unique(util::NS_PREFIX) + "-" + h)?,
            );
        }
        let mut switches = Vec::new();
        for link in &s.links {
            let ends: Vec<(&NsGuard, String, &str)> = link
                .ends
                .iter()
                .map(|e| {
                    let dev = s.ifname(&e.host, &link.name).expect("validated");
                    (&hosts[&e.host], dev, e.addr.as_str())
                })
                .collect();
            if let [(a, da, _), (b, db, _)] = ends.as_slice() {
                a.ip(&[
                    "link", "add", da, "type", "veth", "peer", "name", db, "netns", &b.name,
                ])?;
            } else {
                let sw = NsGuard::new(util::unique(util::NS_PREFIX) + "-sw-" + &link.name)?;
                sw.ip(&["link", "add", "br0", "type", "bridge"])?;
                sw.ip(&["link", "set", "br0", "up"])?;
                for (k, (ns, dev, _)) in ends.iter().enumerate() {
                    let port = format!("p{k}");
                    sw.ip(&["link", "add", &port, "type", "veth", "peer", "name", dev])?;
                    sw.ip(&["link", "set", dev, "netns", &ns.name])?;
                    sw.ip(&["link", "set", &port, "master", "br0", "up"])?;
                }
                switches.push(sw);
            }
            for (ns, dev, addr) in &ends {
                ns.ip(&["addr", "add", addr, "dev", dev])?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
        }
        Ok(Self {
            procs: HashMap::new(),
            hosts,
            _switches: switches,
            bin,
            host_dirs,
            _scratch: scratch,
        })
    }

    /// `sh -c CMD` on a host, with the scenario environment.
    fn shell(&self, host: &str, cmd: &str) -> Command {
        let mut c = self.hosts[host].exec("sh");
        let path = std::env::var("PATH").unwrap_or_default();
        c.arg("-c")
            .arg(cmd)
            .env("IP", "ip")
            .env("TC", "tc")
            .env("O7S_BIN", &self.bin)
            .env("O7S_HOST", host)
            .env("O7S_LOG", self.host_dirs.join(host).join("log"))
            .env("O7S_RUNDIR", self.host_dirs.join(host).join("run"))
            .env("PATH", format!("{}:{path}", self.bin.display()));
        c
    }
}

fn signal_by_name(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    Some(match name.trim_start_matches("SIG") {
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "INT" => Signal::INT,
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        _ => return None,
    })
}

fn tail(out: &str, lines: usize) -> String {
    let all: Vec<&str> = out.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Netns {
    fn step(&self, w: &mut World, s: &Scenario, i: usize) -> Result<Result<(), String>> {
        let step = &s.steps[i];
        let host = step.host.as_str();
        if let Some(cmd) = s.link_command(step) {
            let (status, out) = util::run_timeout(w.shell(host, &cmd), Duration::from_secs(10))?;
            return Ok(scenario::check(&[scenario::Expect::Success], status, &out)
                .map_err(|e| format!("`{cmd}`: {e}: {}", tail(&out, 10))));
        }
        Ok(match &step.action {
            Action::Run {
                cmd,
                expect,
                timeout,
            } => {
                let (status, out) = util::run_timeout(w.shell(host, cmd), *timeout)?;
                if self.verbose {
                    println!("[{host}] $ {cmd}\n{}", out.trim_end());
                }
                scenario::check(expect, status, &out)
                    .map_err(|e| format!("`{cmd}`: {e}; output:\n{}", tail(&out, 20)))
            }
            Action::WaitFor { cmd, timeout } => {
                let start = Instant::now();
                loop {
                    let left = timeout.saturating_sub(start.elapsed());
                    let (status, out) =
                        util::run_timeout(w.shell(host, cmd), left.min(Duration::from_secs(5)))?;
                    if status == 0 {
                        break Ok(());
                    }
                    if start.elapsed() >= *timeout {
                        break Err(format!(
                            "`{cmd}` did not succeed within {timeout:?}: {}",
                            tail(&out, 10)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Action::Spawn { name, cmd } => {
                let log = File::create(w.host_dirs.join(host).join(format!("log/{name}.log")))?;
                let mut c = w.shell(host, cmd);
                c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
                let child = GroupChild::spawn(&mut c)?;
                // As in the guests: `$O7S_LOG/NAME.pid` names the process for later steps.
                std::fs::write(
                    w.host_dirs.join(host).join(format!("log/{name}.pid")),
                    format!("{}\n", child.child.id()),
                )?;
                w.procs.insert((host.into(), name.clone()), child);
                Ok(())
            }
            Action::Kill { name, signal } => {
                let Some(sig) = signal_by_name(signal) else {
                    return Ok(Err(format!("unknown signal {signal}")));
                };
                let Some(child) = w.procs.get_mut(&(host.into(), name.clone())) else {
                    return Ok(Err(format!("no process {name} on {host}")));
                };
                child.signal(sig);
                if matches!(signal_by_name(signal), Some(s) if s == rustix::process::Signal::KILL) {
                    let _ = child.child.wait();
                }
                Ok(())
            }
            Action::LinkDown { .. }
            | Action::LinkUp { .. }
            | Action::Netem { .. }
            | Action::ClearNetem { .. } => unreachable!("link actions handled above"),
        })
    }
}

impl Backend for Netns {
    fn name(&self) -> &'static str {
        "netns"
    }

    fn run(&mut self, s: &Scenario) -> Result<Verdict> {
        if !crate::is_root() {
            return Ok(Verdict::Skip(
                "the netns backend needs root (network namespaces, veth pairs)".into(),
            ));
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Ok(Verdict::Skip("iproute2's `ip` is not installed".into()));
        }
        util::sweep_stale();
        for r in &s.requires {
            if let Some(why) = missing(*r)? {
                return Ok(Verdict::Skip(why));
            }
        }
        let mut world = World::build(s)?;
        for i in 0..s.steps.len() {
            if util::interrupted() {
                return Ok(Verdict::Fail(format!("interrupted before step {i}")));
            }
            if let Err(reason) = self.step(&mut world, s, i)? {
                return Ok(Verdict::Fail(format!(
                    "step {i} on {}: {reason}",
                    s.steps[i].host
                )));
            }
        }
        Ok(Verdict::Pass)
    }
}

/// Why this machine cannot meet a requirement, if it cannot.
fn missing(r: Requirement) -> Result<Option<String>> {
    match r {
        Requirement::ZeroCopyXdp => Ok(Some(
            "veth has no AF_XDP zero-copy mode; the qemu backend runs this on virtio-net with a \
             7.x guest kernel"
                .into(),
        )),
        Requirement::Netem => {
            let ns = NsGuard::new(util::unique(util::NS_PREFIX) + "-probe")?;
            let ok = Command::new("ip")
                .args(["netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", "lo"])
                .args(["root", "netem", "delay", "1ms"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Ok((!ok).then(|| {
                "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); the qemu backend's \
                 guest kernel has it"
                    .into()
            }))
        }
    }
}
