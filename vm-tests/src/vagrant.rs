//! The `vagrant` backend: hosts are the running VMs (`a`, `b`, `c`) of the top-level
//! `Vagrantfile`, reached over ssh.
//!
//! * **Hosts and links.** A scenario host is the Vagrant machine of the same name. Each scenario
//!   link must join two hosts that a link of the Vagrantfile joins ([`VAGRANT_LINKS`]: `ab`,
//!   `bc`, a line a – b – c); anything else (a link with three ends, a link a – c, a host `d`) is
//!   skipped with the reason, as are machines that are not running.
//! * **ssh.** `vagrant status --machine-readable` and `vagrant ssh-config` run once (their
//!   answers are kept for the backend's life); then one ssh control master per VM, and every
//!   command is a plain `ssh -F <that config>` session over it. Commands run as root
//!   (`sudo -n`), each under `timeout` in the VM and a deadline here.
//! * **Interfaces.** The scenario contract says a host's interfaces are `eth0`, `eth1`, … in
//!   the order of its links, but in a VM `eth0` is the provider's management NIC (ssh). So each
//!   run creates a network namespace `o7svt` in every VM, moves the VM's private NICs (found by
//!   the Vagrantfile's addresses) into it renamed `eth0`, `eth1`, … with the scenario's
//!   addresses, and runs every step (and spawned process) inside it. The management NIC, ssh and
//!   the VM's own routes stay untouched, and the namespace has no route but the scenario's.
//! * **Payload and environment.** The scenario's payload (stripped of debug information) is
//!   copied with scp into `/var/tmp/o7svt/run-…/bin` of each VM; `$IP`, `$TC`, `$O7S_BIN`,
//!   `$O7S_LOG`, `$O7S_RUNDIR`, `$O7S_HOST` and `PATH` are set as on the other backends.
//! * **Clean-up on every exit path.** Before it touches a NIC, a run writes
//!   `/var/tmp/o7svt/restore.sh` in the VM: stop every process in the namespace, give each NIC
//!   its name and Vagrantfile address back, delete the namespace, remove the shared-memory
//!   objects the run created and its directory. A drop guard runs it at the end (also after a
//!   failure, an error or Ctrl-C); a run that was killed is undone by the next one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::TempDir;
use crate::scenario::{self, Action, Expect, Requirement, Scenario, shell_quote};
use crate::util::{self, GroupChild};
use crate::{Backend, Verdict};

/// The machines the Vagrantfile defines (`c` only with `O7S_VAGRANT_HOSTS=3`).
pub const VAGRANT_HOSTS: &[&str] = &["a", "b", "c"];

/// One private link of the Vagrantfile: its name and, per end, the machine and the address the
/// Vagrantfile gives it (which is how the backend finds that NIC in the VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VagrantLink {
    pub name: &'static str,
    pub ends: [(&'static str, &'static str); 2],
}

/// The Vagrantfile's `LINKS` (a unit test checks that the two agree).
pub const VAGRANT_LINKS: &[VagrantLink] = &[
    VagrantLink {
        name: "ab",
        ends: [("a", "10.77.1.11/24"), ("b", "10.77.1.12/24")],
    },
    VagrantLink {
        name: "bc",
        ends: [("b", "10.77.2.12/24"), ("c", "10.77.2.13/24")],
    },
];

/// Where a run lives in each VM (one run per VM at a time).
pub const VM_BASE: &str = "/var/tmp/o7svt";
/// The network namespace each VM runs the scenario in.
pub const VM_NETNS: &str = "o7svt";

/// One host's NIC for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Its name inside the run's namespace: `eth{i}` for the host's i-th link.
    pub dev: String,
    /// The scenario's address for it.
    pub addr: String,
    /// The Vagrantfile link it is on.
    pub vagrant_link: &'static str,
    /// The Vagrantfile's address on it: finds the NIC, and is given back afterwards.
    pub vagrant_addr: &'static str,
}

/// Each scenario host's NICs, in link order, or why the scenario does not fit the Vagrantfile.
pub fn map_topology(s: &Scenario) -> Result<BTreeMap<String, Vec<Nic>>, String> {
    for h in &s.hosts {
        if !VAGRANT_HOSTS.contains(&h.as_str()) {
            return Err(format!(
                "host {h} is not a machine of the Vagrantfile (a, b, c)"
            ));
        }
    }
    // Scenario link name -> the Vagrantfile link joining the same two machines.
    let mut chosen: BTreeMap<&str, &VagrantLink> = BTreeMap::new();
    for link in &s.links {
        let [x, y] = link.ends.as_slice() else {
            return Err(format!(
                "link {} has {} ends; the Vagrantfile's links (ab, bc) join two machines each",
                link.name,
                link.ends.len()
            ));
        };
        let Some(v) = VAGRANT_LINKS.iter().find(|v| {
            let [(p, _), (q, _)] = v.ends;
            (x.host == p && y.host == q) || (x.host == q && y.host == p)
        }) else {
            return Err(format!(
                "link {} joins {} and {}; the Vagrantfile links only a - b (ab) and b - c (bc)",
                link.name, x.host, y.host
            ));
        };
        if let Some((other, _)) = chosen.iter().find(|(_, c)| c.name == v.name) {
            return Err(format!(
                "links {other} and {} would both need the Vagrantfile's link {}",
                link.name, v.name
            ));
        }
        chosen.insert(&link.name, v);
    }
    let mut out = BTreeMap::new();
    for h in &s.hosts {
        let mut nics = Vec::new();
        for (i, link) in s.links_of(h) {
            let v = chosen[link.name.as_str()];
            let end = link.ends.iter().find(|e| e.host == *h).expect("on link");
            let (_, vagrant_addr) = *v.ends.iter().find(|(m, _)| m == h).expect("same machines");
            nics.push(Nic {
                dev: format!("eth{i}"),
                addr: end.addr.clone(),
                vagrant_link: v.name,
                vagrant_addr,
            });
        }
        out.insert(h.clone(), nics);
    }
    Ok(out)
}

/// Machine states from `vagrant status --machine-readable` (`timestamp,target,type,data`
/// lines; `state` lines carry e.g. `running`, `shutoff`, `not_created`).
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    let mut states = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.trim_end_matches('\r').splitn(4, ',');
        let (Some(_), Some(target), Some(kind), Some(data)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if kind == "state" && !target.is_empty() {
            states.insert(target.to_string(), data.replace("%!(VAGRANT_COMMA)", ","));
        }
    }
    states
}

/// The global machine-index ids of the Vagrantfile's machines that exist, by machine name
/// (`<dotdir>/machines/NAME/PROVIDER/index_uuid`, 32 hex digits).
///
/// The backend addresses machines by these ids, never by name: Vagrant 2.3.4 first looks a
/// name up in its global machine index *as an id prefix*, so `vagrant ssh b` (and even a plain
/// `vagrant status`) reaches whichever machine's id starts with `b` (seen here: machine `a`,
/// id `bce058ba…`). The names `a`, `b`, `c` are hex digits, so this hits one run in a few.
pub fn machine_ids(dotdir: &Path) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for h in VAGRANT_HOSTS {
        let Ok(providers) = std::fs::read_dir(dotdir.join("machines").join(h)) else {
            continue;
        };
        for p in providers.flatten() {
            let Ok(id) = std::fs::read_to_string(p.path().join("index_uuid")) else {
                continue;
            };
            let id = id.trim();
            if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                ids.insert((*h).to_string(), id.to_string());
                break;
            }
        }
    }
    ids
}

/// One `Host` block of an ssh configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshHost {
    pub name: String,
    /// Options in order, keys lower-cased (ssh keywords are case-insensitive), values unquoted.
    pub options: Vec<(String, String)>,
}

impl SshHost {
    /// The first value of an option (ssh uses the first one it reads).
    pub fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What is wrong with an ssh configuration (lines count from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshConfigError {
    /// An option before the first `Host` line.
    OptionOutsideHost { line: usize, key: String },
    /// A keyword without a value.
    MissingValue { line: usize, key: String },
    /// A value that opens a double quote and does not close it.
    UnterminatedQuote { line: usize },
    /// A line that starts with `=`: a value without a keyword.
    MissingKey { line: usize },
}

impl fmt::Display for SshConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OptionOutsideHost { line, key } => {
                write!(f, "line {line}: option {key} before any Host line")
            }
            Self::MissingValue { line, key } => write!(f, "line {line}: {key} has no value"),
            Self::UnterminatedQuote { line } => write!(f, "line {line}: unterminated quote"),
            Self::MissingKey { line } => write!(f, "line {line}: a value without a keyword"),
        }
    }
}

impl std::error::Error for SshConfigError {}

/// Parses `vagrant ssh-config` output (the subset of ssh_config(5) it uses: `Host` blocks of
/// `Keyword value` or `Keyword=value` lines, `#` comments, double-quoted values).
pub fn parse_ssh_config(text: &str) -> Result<Vec<SshHost>, SshConfigError> {
    let mut hosts: Vec<SshHost> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        let (key, rest) = line.split_at(split);
        if key.is_empty() {
            return Err(SshConfigError::MissingKey { line: line_no });
        }
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
        let value = if let Some(inner) = rest.strip_prefix('"') {
            inner
                .strip_suffix('"')
                .ok_or(SshConfigError::UnterminatedQuote { line: line_no })?
        } else {
            rest
        };
        if value.is_empty() {
            return Err(SshConfigError::MissingValue {
                line: line_no,
                key: key.to_string(),
            });
        }
        let key = key.to_ascii_lowercase();
        if key == "host" {
            hosts.push(SshHost {
                name: value.to_string(),
                options: Vec::new(),
            });
        } else {
            let Some(host) = hosts.last_mut() else {
                return Err(SshConfigError::OptionOutsideHost { line: line_no, key });
            };
            host.options.push((key, value.to_string()));
        }
    }
    Ok(hosts)
}

/// Writes hosts as an ssh configuration that [`parse_ssh_config`] reads back as the same hosts
/// (values with whitespace, or starting with `"` or `=`, are double-quoted).
pub fn render_ssh_config(hosts: &[SshHost]) -> String {
    let value = |v: &str| {
        if v.starts_with(['"', '=']) || v.contains(char::is_whitespace) {
            format!("\"{v}\"")
        } else {
            v.to_string()
        }
    };
    let mut out = String::new();
    for h in hosts {
        out += &format!("Host {}\n", value(&h.name));
        for (k, v) in &h.options {
            out += &format!("  {k} {}\n", value(v));
        }
    }
    out
}

/// Oracles for the fuzz targets in `vm-tests/fuzz` (and the property tests).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// `vagrant ssh-config` output: parsing never panics, and whatever parses renders and
    /// parses back to the same hosts.
    pub fn ssh_config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(hosts) = parse_ssh_config(text) {
            let again = parse_ssh_config(&render_ssh_config(&hosts));
            assert_eq!(again.as_ref(), Ok(&hosts), "render/parse round trip");
        }
    }

    /// `vagrant status --machine-readable` output: parsing never panics, and every state it
    /// finds, written back as a `state` line (commas escaped as Vagrant does), reads the same.
    pub fn status(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let states = parse_status(&text);
        let lines: String = states
            .iter()
            .map(|(m, s)| format!("0,{m},state,{}\n", s.replace(',', "%!(VAGRANT_COMMA)")))
            .collect();
        assert_eq!(parse_status(&lines), states, "status round trip");
    }
}

/// Where one run lives in a VM, and the names it uses there.
#[derive(Clone, Debug)]
pub struct Layout {
    /// [`VM_BASE`] in the VMs.
    pub base: String,
    /// `run-<unique>`.
    pub run: String,
    /// [`VM_NETNS`] in the VMs.
    pub netns: String,
    /// Where NICs go back to: `1` (the namespace of pid 1) in the VMs.
    pub home: String,
}

impl Layout {
    pub fn new(run: &str) -> Self {
        Self {
            base: VM_BASE.into(),
            run: run.into(),
            netns: VM_NETNS.into(),
            home: "1".into(),
        }
    }

    pub fn dir(&self) -> String {
        format!("{}/{}", self.base, self.run)
    }

    pub fn bin(&self) -> String {
        format!("{}/bin", self.dir())
    }

    /// The wrapper every step goes through ([`in_script`]).
    pub fn in_path(&self) -> String {
        format!("{}/in", self.dir())
    }

    /// The command line (for the ssh user's login shell) that runs `script` as root with
    /// `sh -c` inside the run's namespace, with the scenario environment.
    pub fn remote(&self, script: &str) -> String {
        format!("sudo -n {} {}", self.in_path(), shell_quote(script))
    }

    /// The command line that runs `script` as root with `sh -c`, outside the namespace.
    pub fn remote_root(script: &str) -> String {
        format!("sudo -n sh -c {}", shell_quote(script))
    }
}

/// The wrapper a host's steps run through: root, the scenario environment, the namespace.
pub fn in_script(l: &Layout, host: &str) -> String {
    let dir = l.dir();
    format!(
        "#!/bin/sh\n\
         # o7s vm-test ({run}, host {host}): runs \"$1\" with sh inside the network namespace\n\
         # {ns}, with the scenario environment.\n\
         export IP=ip TC=tc O7S_HOST={host}\n\
         export O7S_BIN={dir}/bin O7S_LOG={dir}/log O7S_RUNDIR={dir}/run\n\
         export PATH=\"$O7S_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         cd \"$O7S_LOG\" || exit 125\n\
         exec ip netns exec {ns} sh -c \"$1\"\n",
        run = l.run,
        ns = l.netns,
    )
}

/// Undoes a run on a VM (written before the run touches anything, run as root at the end, or
/// by the next run when this one could not finish).
pub fn restore_script(l: &Layout) -> String {
    format!(
        r#"#!/bin/sh
# o7s vm-test: undoes a run on this machine (the vagrant backend runs it at the end of a run,
# or the next run does when this one could not).
base={base}
ns={ns}
# Every process of the run is in its namespace: TERM (an irmd then removes its pool), 5 s, KILL.
pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null
    i=0
    while [ $i -lt 50 ]; do
        alive=
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL $pids 2>/dev/null
fi
# Each NIC back to its own name and the Vagrantfile's address.
# Renamed inside the namespace first: the VM's udev and systemd see the move back as a rename
# from the old name, and from `eth0` systemd takes it for the management NIC leaving (Debian 12:
# ifup@eth0 stopped, the DHCP lease released, ssh gone).
if [ -f "$base/nics" ]; then
    n=0
    while read -r nsdev dev addr; do
        tmp=o7svtnic$n
        n=$((n + 1))
        ip -n "$ns" link set dev "$nsdev" xdp off 2>/dev/null
        tc -n "$ns" qdisc del dev "$nsdev" root 2>/dev/null
        ip -n "$ns" link set dev "$nsdev" down 2>/dev/null
        ip -n "$ns" link set dev "$nsdev" name "$tmp" 2>/dev/null
        ip -n "$ns" link set dev "$tmp" netns {home} name "$dev" 2>/dev/null
        {{ ip addr replace "$addr" dev "$dev" && ip link set dev "$dev" up; }} ||
            echo "o7s-vm-test: could not give $dev its address $addr back" >&2
    done <"$base/nics"
fi
ip netns del "$ns" 2>/dev/null
# Shared-memory objects the run created (pools, event sets).
if [ -f "$base/shm.before" ]; then
    for f in /dev/shm/o7s*; do
        [ -e "$f" ] || continue
        grep -qxF "${{f##*/}}" "$base/shm.before" || rm -f "$f"
    done
fi
rm -rf "$base"
"#,
        base = l.base,
        ns = l.netns,
        home = l.home,
    )
}

/// Prepares a VM for a run (as root, outside the namespace): undoes a run that did not finish,
/// creates the run's directories (`bin` writable by the ssh user, for scp), writes
/// `restore.sh` and the `in` wrapper, and checks the tools the backend needs.
pub fn prepare_script(l: &Layout, host: &str) -> String {
    let base = &l.base;
    let dir = l.dir();
    format!(
        "set -eu\n\
         for t in ip tc timeout setsid awk; do\n\
         \x20   command -v $t >/dev/null || {{ echo \"o7s-vm-test: $t is missing on {host}\"; exit 3; }}\n\
         done\n\
         if [ -f {base}/restore.sh ]; then\n\
         \x20   echo 'o7s-vm-test: undoing an earlier run that did not finish'\n\
         \x20   sh {base}/restore.sh || true\n\
         fi\n\
         ip netns del {ns} 2>/dev/null || true\n\
         rm -rf {base}\n\
         mkdir -p {dir}/bin {dir}/log {dir}/run\n\
         chown \"${{SUDO_UID:-0}}:${{SUDO_GID:-0}}\" {dir}/bin\n\
         ls /dev/shm >{base}/shm.before\n\
         cat >{base}/restore.sh <<'O7S_EOF'\n{restore}O7S_EOF\n\
         cat >{dir}/in <<'O7S_EOF'\n{wrapper}O7S_EOF\n\
         chmod 0755 {dir}/in\n",
        ns = l.netns,
        restore = restore_script(l),
        wrapper = in_script(l, host),
    )
}

/// Moves a host's private NICs into the run's namespace under their scenario names, with the
/// scenario's addresses; records each one in `nics` first so `restore.sh` can undo it. Prints
/// one `o7s-vm-test: NIC eth0 = <VM name>` line per NIC.
pub fn network_script(l: &Layout, host: &str, nics: &[Nic]) -> String {
    let base = &l.base;
    let mut out = format!(
        "set -eu\n\
         chmod 0755 {bin}/* 2>/dev/null || true\n\
         ip netns add {ns}\n\
         ip -n {ns} link set lo up\n\
         nic() {{\n\
         \x20   dev=$(ip -o -4 addr show | awk -v a=\"$2\" '$4 == a {{ sub(/@.*/, \"\", $2); print $2; exit }}')\n\
         \x20   if [ -z \"$dev\" ]; then\n\
         \x20       echo \"o7s-vm-test: no interface of {host} has $2 ($4)\" >&2\n\
         \x20       exit 3\n\
         \x20   fi\n\
         \x20   echo \"$1 $dev $2\" >>{base}/nics\n\
         \x20   ip link set dev \"$dev\" down\n\
         \x20   ip link set dev \"$dev\" netns {ns} name \"$1\"\n\
         \x20   ip -n {ns} addr add \"$3\" dev \"$1\"\n\
         \x20   ip -n {ns} link set dev \"$1\" up\n\
         \x20   echo \"o7s-vm-test: NIC $1 = $dev\"\n\
         }}\n",
        bin = l.bin(),
        ns = l.netns,
    );
    for n in nics {
        out += &format!(
            "nic {} {} {} {}\n",
            n.dev,
            n.vagrant_addr,
            n.addr,
            shell_quote(&format!(
                "the Vagrantfile's address of {host} on link {}",
                n.vagrant_link
            ))
        );
    }
    out
}

/// Steps the VM's clock by `offset` seconds (as root, outside the namespace).
pub fn clock_step_script(offset: f64) -> String {
    format!("date -s @$(date +%s.%N | awk '{{ printf \"%.6f\", $1 + ({offset:.6}) }}') >/dev/null")
}

/// A [`Action::Run`] step: `cmd` under `timeout` (then SIGKILL 5 s later).
pub fn run_script(cmd: &str, timeout: Duration) -> String {
    format!(
        "exec timeout -k 5 {} sh -c {} </dev/null",
        timeout.as_secs().max(1),
        shell_quote(cmd)
    )
}

/// A [`Action::WaitFor`] step: `cmd` every 200 ms (each try at most 5 s) until it succeeds;
/// exit status 1 and the last try's output after `timeout`.
pub fn wait_script(cmd: &str, timeout: Duration) -> String {
    let secs = timeout.as_secs().max(1);
    format!(
        "end=$(( $(date +%s) + {secs} ))\n\
         while :; do\n\
         \x20   out=$(timeout -k 2 {try_secs} sh -c {cmd} </dev/null 2>&1) && exit 0\n\
         \x20   if [ \"$(date +%s)\" -ge \"$end\" ]; then printf '%s\\n' \"$out\"; exit 1; fi\n\
         \x20   sleep 0.2\n\
         done\n",
        try_secs = secs.min(5),
        cmd = shell_quote(cmd)
    )
}

/// A [`Action::Spawn`] step: `cmd` in a session of its own, output in `$O7S_LOG/NAME.log`,
/// pid (which is also its process group) in `$O7S_LOG/NAME.pid`. Returns once the process
/// leads its session (up to 2 s), so a later `Kill` reaches its whole group and nothing that
/// kills the step's own process group (a timeout) takes it along.
pub fn spawn_script(name: &str, cmd: &str) -> String {
    let log = shell_quote(&format!("{name}.log"));
    let pid = shell_quote(&format!("{name}.pid"));
    format!(
        "setsid sh -c {} </dev/null >\"$O7S_LOG\"/{log} 2>&1 &\n\
         echo $! >\"$O7S_LOG\"/{pid}\n\
         i=0\n\
         while [ $i -lt 100 ] && [ -e /proc/$! ] &&\n\
         \x20   [ \"$(cut -d' ' -f6 /proc/$!/stat 2>/dev/null)\" != \"$!\" ]; do\n\
         \x20   sleep 0.02\n\
         \x20   i=$((i + 1))\n\
         done\n",
        shell_quote(cmd)
    )
}

/// A [`Action::Kill`] step: the signal to the spawned process's group (else the process); with
/// `KILL`, also waits (up to 5 s) until it is gone. `Err` for a signal name that is not one.
pub fn kill_script(name: &str, signal: &str) -> Result<String, String> {
    let sig = signal.trim_start_matches("SIG");
    if sig.is_empty() || !sig.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("unknown signal {signal}"));
    }
    let pid = shell_quote(&format!("{name}.pid"));
    let mut out = format!(
        "pid=$(cat \"$O7S_LOG\"/{pid} 2>/dev/null) || {{ echo 'no process {name} on this host'; exit 3; }}\n\
         kill -{sig} -\"$pid\" 2>/dev/null || kill -{sig} \"$pid\" || {{ echo \"kill -{sig} {name} ($pid) failed\"; exit 4; }}\n"
    );
    if sig == "KILL" || sig == "9" {
        out += "i=0\n\
                while kill -0 \"$pid\" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done\n";
    }
    Ok(out)
}

/// What a failed scenario shows from each host: the tail of every spawned process's log, then
/// the scenario's diagnostics commands (each under a timeout).
pub fn diagnostics_script(host: &str, diagnostics: &[String]) -> String {
    let mut out = format!(
        "for f in \"$O7S_LOG\"/*.log; do\n\
         \x20   [ -f \"$f\" ] || continue\n\
         \x20   echo \"--- {host}: tail of ${{f##*/}}\"\n\
         \x20   tail -n 12 \"$f\"\n\
         done\n"
    );
    for d in diagnostics {
        out += &format!(
            "echo {}\ntimeout -k 2 20 sh -c {} </dev/null 2>&1 | tail -n 60\n",
            shell_quote(&format!("--- {host}: {d}")),
            shell_quote(d)
        );
    }
    out
}

/// The result of a local command run with a deadline.
#[derive(Debug)]
struct Ran {
    /// Exit status; -1 when killed (timeout, interrupt) or ended by a signal.
    status: i32,
    /// stdout, with stderr too when merged.
    out: String,
    /// stderr when not merged.
    err: String,
    timed_out: bool,
}

/// Runs `cmd` (stdin closed) in a process group of its own, killed after `timeout` (or at
/// Ctrl-C when `interruptible`; clean-up commands are not). With `merge`, stderr goes into
/// `out`.
fn run_for(mut cmd: Command, timeout: Duration, interruptible: bool, merge: bool) -> Result<Ran> {
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    cmd.stdin(Stdio::null()).stdout(out_w.try_clone()?);
    if merge {
        cmd.stderr(out_w);
        drop(err_w);
    } else {
        cmd.stderr(err_w);
        drop(out_w);
    }
    let mut child = GroupChild::spawn(&mut cmd)?;
    // Drop the write ends `cmd` holds, so EOF comes when the child (group) is done.
    drop(cmd);
    let collect = |mut r: std::io::PipeReader| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_t = collect(out_r);
    let err_t = collect(err_r);
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.child.try_wait()? {
            break (status.code().unwrap_or(-1), false);
        }
        if start.elapsed() > timeout || (interruptible && util::interrupted()) {
            child.signal(rustix::process::Signal::KILL);
            let _ = child.child.wait();
            break (-1, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    // A grandchild that left the group may hold a pipe open: do not wait for it after a kill.
    let join = |t: std::thread::JoinHandle<String>| {
        if !timed_out || t.is_finished() {
            t.join().unwrap_or_default()
        } else {
            String::new()
        }
    };
    Ok(Ran {
        status,
        out: join(out_t),
        err: join(err_t),
        timed_out,
    })
}

fn tail(out: &str, lines: usize) -> String {
    let all: Vec<&str> = out.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// ssh connections to the VMs: one config file, one control master per VM.
struct Conn {
    /// `vagrant ssh-config`'s output, as a file for `ssh -F`.
    config: PathBuf,
    /// Control sockets (`%n`: the machine name).
    control: PathBuf,
    masters: BTreeMap<String, GroupChild>,
    _scratch: TempDir,
}

impl Conn {
    fn new(config_text: &str) -> Result<Self> {
        let scratch = TempDir::new(util::NS_PREFIX)?;
        let config = scratch.0.join("ssh_config");
        std::fs::write(&config, config_text)?;
        let control = scratch.0.join("cm");
        std::fs::create_dir_all(&control)?;
        Ok(Self {
            config,
            control,
            masters: BTreeMap::new(),
            _scratch: scratch,
        })
    }

    fn base(&self, program: &str, master: bool) -> Command {
        let mut c = Command::new(program);
        c.arg("-F")
            .arg(&self.config)
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=30"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"])
            .arg("-o")
            .arg(format!("ControlPath={}/%n", self.control.display()))
            .args([
                "-o",
                if master {
                    "ControlMaster=yes"
                } else {
                    "ControlMaster=no"
                },
            ]);
        c
    }

    /// `ssh HOST REMOTE` over the host's control master (a plain connection when it has none).
    fn ssh(&self, host: &str, remote: &str) -> Command {
        let mut c = self.base("ssh", false);
        c.arg(host).arg(remote);
        c
    }

    /// Starts (or restarts, if it died) the control master of `host` and waits for its socket.
    fn ensure_master(&mut self, host: &str, timeout: Duration) -> Result<()> {
        let socket = self.control.join(host);
        if let Some(m) = self.masters.get_mut(host)
            && m.child.try_wait()?.is_none()
            && socket.exists()
        {
            return Ok(());
        }
        self.masters.remove(host);
        let _ = std::fs::remove_file(&socket);
        let errlog = self.control.join(format!("{host}.err"));
        let mut c = self.base("ssh", true);
        c.args(["-o", "ControlPersist=no", "-N"])
            .arg(host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&errlog)?);
        let mut master = GroupChild::spawn_tied(&mut c)?;
        let start = Instant::now();
        loop {
            if socket.exists() {
                self.masters.insert(host.into(), master);
                return Ok(());
            }
            if let Some(status) = master.child.try_wait()? {
                let err = std::fs::read_to_string(&errlog).unwrap_or_default();
                bail!("ssh to {host} failed ({status}): {}", err.trim());
            }
            if start.elapsed() > timeout || util::interrupted() {
                bail!("ssh to {host}: no connection within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies files into `dir` on `host` (scp over the control master).
    fn upload(&self, host: &str, files: &[PathBuf], dir: &str, timeout: Duration) -> Result<()> {
        let mut c = self.base("scp", false);
        c.args(["-q", "-p"])
            .args(files)
            .arg(format!("{host}:{dir}/"));
        let ran = run_for(c, timeout, true, true)?;
        if ran.status != 0 {
            bail!(
                "scp to {host}:{dir} failed ({}): {}",
                if ran.timed_out {
                    format!("killed after {timeout:?}")
                } else {
                    format!("exit status {}", ran.status)
                },
                tail(&ran.out, 10)
            );
        }
        Ok(())
    }
}

/// What `vagrant` said about the machines (kept for the backend's life).
struct Machines {
    states: BTreeMap<String, String>,
    /// The machines `ssh_config` covers.
    configured: Vec<String>,
    conn: Conn,
}

/// The Vagrant backend.
pub struct Vagrant {
    /// Print every step and its output as it runs.
    pub verbose: bool,
    /// The directory holding the Vagrantfile (`VAGRANT_CWD`): `$O7S_VAGRANT_DIR`, else the
    /// workspace root.
    pub dir: PathBuf,
    /// Deadline of each `vagrant` command (Ruby start-up and libvirt: seconds each).
    pub vagrant_timeout: Duration,
    /// How long an ssh connection may take to come up (TCG guests are slow).
    pub connect_timeout: Duration,
    machines: Option<Machines>,
    notes: Vec<String>,
}

impl Default for Vagrant {
    fn default() -> Self {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::var_os("O7S_VAGRANT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate_dir.parent().unwrap_or(crate_dir).to_path_buf());
        Self {
            verbose: false,
            dir,
            vagrant_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(60),
            machines: None,
            notes: Vec::new(),
        }
    }
}

/// Time allowed beyond a step's own timeout for ssh itself.
const SSH_MARGIN: Duration = Duration::from_secs(30);
/// Deadline of set-up and clean-up commands in a VM.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one VM's payload upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How far (seconds) a VM's clock may be from this machine's before a run sets it.
const CLOCK_SLACK: f64 = 0.03;

/// Seconds since the Unix epoch on this machine.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The per-run state in the VMs; dropping it undoes the run on every VM it prepared.
struct Run<'a> {
    conn: &'a Conn,
    layout: Layout,
    prepared: Vec<String>,
    problems: Vec<String>,
}

impl Run<'_> {
    /// Runs `remote` on `host`; `Ok` even when the command fails (the caller checks).
    fn exec(&self, host: &str, remote: &str, timeout: Duration) -> Result<Ran> {
        run_for(self.conn.ssh(host, remote), timeout, true, true)
    }

    /// Runs a set-up script as root; fails with its output.
    fn setup(&self, host: &str, script: &str) -> Result<String> {
        let ran = self.exec(host, &Layout::remote_root(script), SETUP_TIMEOUT)?;
        if ran.status != 0 {
            bail!(
                "setting up {host} failed ({}): {}",
                if ran.timed_out {
                    format!("killed after {SETUP_TIMEOUT:?}")
                } else {
                    format!("exit status {}", ran.status)
                },
                tail(&ran.out, 20)
            );
        }
        Ok(ran.out)
    }

    /// This machine's time minus the VM's, from `date +%s.%N` over ssh (against the round
    /// trip's middle; the sample with the shortest of three round trips).
    fn clock_offset(&self, host: &str) -> Result<f64> {
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..3 {
            let t0 = unix_now();
            let ran = self.exec(host, "date +%s.%N", SETUP_TIMEOUT)?;
            let t1 = unix_now();
            let vm: f64 = ran
                .out
                .trim()
                .parse()
                .with_context(|| format!("reading {host}'s clock: {:?}", ran.out.trim()))?;
            let sample = ((t0 + t1) / 2.0 - vm, t1 - t0);
            if best.is_none_or(|(_, rtt)| sample.1 < rtt) {
                best = Some(sample);
            }
        }
        Ok(best.map_or(0.0, |(offset, _)| offset))
    }

    /// Moves the VM's clock to this machine's when they differ by more than [`CLOCK_SLACK`]:
    /// VMs without NTP drift apart (their clocks start from a one-second RTC), and OAP refuses
    /// flow requests stamped more than 100 ms away from the receiver's clock (seen: 312 ms
    /// between two VMs). The step is relative (the VM adds the offset to its own clock), so
    /// however long ssh and sudo take does not matter. Returns a note when it moved the clock.
    fn sync_clock(&self, host: &str) -> Result<Option<String>> {
        let before = self.clock_offset(host)?;
        if before.abs() <= CLOCK_SLACK {
            return Ok(None);
        }
        self.setup(host, &clock_step_script(before))?;
        let after = self.clock_offset(host)?;
        Ok(Some(format!(
            "{host}: clock was {:+.0} ms off this machine's, stepped ({:+.0} ms after)",
            -before * 1e3,
            -after * 1e3
        )))
    }

    fn clean_up(&mut self) {
        let restore = Layout::remote_root(&format!("sh {}/restore.sh", self.layout.base));
        for host in std::mem::take(&mut self.prepared) {
            match run_for(self.conn.ssh(&host, &restore), SETUP_TIMEOUT, false, true) {
                Ok(r) if r.status == 0 && r.out.trim().is_empty() => {}
                Ok(r) => self.problems.push(format!(
                    "clean-up on {host}: exit status {}: {}",
                    r.status,
                    tail(&r.out, 5)
                )),
                Err(e) => self.problems.push(format!("clean-up on {host}: {e:#}")),
            }
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.clean_up();
    }
}

impl Vagrant {
    /// Vagrant's data directory for the Vagrantfile: `$VAGRANT_DOTFILE_PATH` (relative to
    /// [`Vagrant::dir`] unless absolute), else `.vagrant` there.
    fn dotdir(&self) -> PathBuf {
        match std::env::var_os("VAGRANT_DOTFILE_PATH") {
            Some(p) => self.dir.join(p),
            None => self.dir.join(".vagrant"),
        }
    }

    /// A `vagrant` command in the Vagrantfile's directory.
    fn vagrant(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("vagrant");
        c.args(args)
            .env("VAGRANT_CWD", &self.dir)
            .env("VAGRANT_NO_COLOR", "1");
        let ran = run_for(c, self.vagrant_timeout, true, false)?;
        if ran.status != 0 {
            bail!(
                "`vagrant {}` failed ({}): {}",
                args.join(" "),
                if ran.timed_out {
                    format!("killed after {:?}", self.vagrant_timeout)
                } else {
                    format!("exit status {}", ran.status)
                },
                // With --machine-readable, Vagrant reports errors on stdout (`error-exit`).
                tail(
                    if ran.err.trim().is_empty() {
                        ran.out.trim()
                    } else {
                        ran.err.trim()
                    },
                    10
                )
            );
        }
        Ok(ran.out)
    }

    /// The machines' states and an ssh connection covering `hosts`; `Err(Skip reason)` when
    /// one of them is not running.
    fn machines(&mut self, hosts: &[String]) -> Result<Result<(), String>> {
        let fresh = match &self.machines {
            Some(m) => !hosts.iter().all(|h| m.configured.contains(h)),
            None => true,
        };
        if fresh {
            let start = Instant::now();
            let ids = machine_ids(&self.dotdir());
            for h in hosts {
                if !ids.contains_key(h) {
                    return Ok(Err(format!(
                        "Vagrant machine {h} has not been created in {}{}",
                        self.dir.display(),
                        if h == "c" {
                            " (O7S_VAGRANT_HOSTS=3 defines c; then `vagrant up --no-provision`)"
                        } else {
                            " (`vagrant up --no-provision` first)"
                        }
                    )));
                }
            }
            // By id, never by name (see `machine_ids`); only the machines this scenario uses, so
            // another machine's trouble (say, one being created) does not stop it.
            let mut args = vec!["status", "--machine-readable"];
            args.extend(hosts.iter().filter_map(|h| ids.get(h)).map(String::as_str));
            let states = parse_status(&self.vagrant(&args)?);
            for h in hosts {
                match states.get(h).map(String::as_str) {
                    Some("running") => {}
                    Some(state) => {
                        return Ok(Err(format!(
                            "Vagrant machine {h} is not running (state {state}); \
                             `vagrant up --no-provision {h}` first"
                        )));
                    }
                    None => bail!("`vagrant status` says nothing about machine {h}"),
                }
            }
            let running: Vec<String> = hosts.to_vec();
            let mut args = vec!["ssh-config"];
            args.extend(
                running
                    .iter()
                    .filter_map(|h| ids.get(h))
                    .map(String::as_str),
            );
            let text = self.vagrant(&args)?;
            let parsed = parse_ssh_config(&text).context("parsing `vagrant ssh-config`")?;
            for h in &running {
                let Some(block) = parsed.iter().find(|b| b.name == *h) else {
                    bail!("`vagrant ssh-config` has no Host {h}");
                };
                if block.get("HostName").is_none() {
                    bail!("`vagrant ssh-config` gives no HostName for {h}");
                }
            }
            self.notes.push(format!(
                "vagrant status + ssh-config: {:.1} s",
                start.elapsed().as_secs_f64()
            ));
            self.machines = Some(Machines {
                states,
                configured: running,
                conn: Conn::new(&text)?,
            });
        }
        let m = self.machines.as_mut().expect("set above");
        for h in hosts {
            if m.states.get(h).map(String::as_str) != Some("running") {
                return Ok(Err(format!("Vagrant machine {h} is not running")));
            }
        }
        let conn = &mut m.conn;
        let start = Instant::now();
        for h in hosts {
            conn.ensure_master(h, self.connect_timeout)?;
        }
        let secs = start.elapsed().as_secs_f64();
        if secs > 0.5 {
            self.notes.push(format!("ssh connections: {secs:.1} s"));
        }
        Ok(Ok(()))
    }
}

impl Backend for Vagrant {
    fn name(&self) -> &'static str {
        "vagrant"
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn run(&mut self, s: &Scenario) -> Result<Verdict> {
        if image_which("vagrant").is_none() {
            return Ok(Verdict::Skip(
                "vagrant is not installed (`apt-get install vagrant vagrant-libvirt`)".into(),
            ));
        }
        for tool in ["ssh", "scp"] {
            if image_which(tool).is_none() {
                return Ok(Verdict::Skip(format!(
                    "{tool} is not installed (openssh-client)"
                )));
            }
        }
        if !self.dir.join("Vagrantfile").is_file() {
            return Ok(Verdict::Skip(format!(
                "no Vagrantfile in {} (O7S_VAGRANT_DIR)",
                self.dir.display()
            )));
        }
        let nics = match map_topology(s) {
            Ok(n) => n,
            Err(why) => {
                return Ok(Verdict::Skip(format!(
                    "does not fit the Vagrantfile: {why}"
                )));
            }
        };
        if s.requires.contains(&Requirement::ZeroCopyXdp) {
            return Ok(Verdict::Skip(
                "AF_XDP zero-copy on virtio-net needs a 7.x guest kernel and iommu_platform=on \
                 NICs; the Vagrantfile's VMs have neither (the qemu backend runs this)"
                    .into(),
            ));
        }
        // One run at a time on these VMs (each run owns their namespace and NICs).
        let lock_path = self.dotdir().join("o7s-vm-test.lock");
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let lock = File::create(&lock_path)?;
        if lock.try_lock().is_err() {
            return Ok(Verdict::Fail(format!(
                "another vm-test run is using these VMs ({} is locked)",
                lock_path.display()
            )));
        }
        let verbose = self.verbose;
        let start = Instant::now();
        if let Err(why) = self.machines(&s.hosts)? {
            return Ok(Verdict::Skip(why));
        }
        let Some(conn) = self.machines.as_ref().map(|m| &m.conn) else {
            bail!("no ssh connection after set-up");
        };
        let mut notes = Vec::new();
        // Requirements the VMs' kernels may lack.
        if s.requires.contains(&Requirement::Netem) {
            for h in &s.hosts {
                let probe =
                    Layout::remote_root("unshare --net tc qdisc add dev lo root netem delay 1ms");
                let ran = run_for(conn.ssh(h, &probe), SETUP_TIMEOUT, true, true)?;
                if ran.status != 0 {
                    return Ok(Verdict::Skip(format!(
                        "{h} has no netem qdisc: {}",
                        tail(&ran.out, 3)
                    )));
                }
            }
        }
        let scratch = TempDir::new(util::NS_PREFIX)?;
        let mut files = Vec::new();
        let mut bytes = 0;
        for p in &s.payload {
            let src = crate::image::stripped(&p.src, &scratch.0)?;
            // Payload names are the names in `$O7S_BIN`: copy under that name.
            let named = scratch.0.join("payload").join(&p.name);
            std::fs::create_dir_all(scratch.0.join("payload"))?;
            std::fs::copy(&src, &named)
                .with_context(|| format!("copying {} for upload", src.display()))?;
            bytes += std::fs::metadata(&named)?.len();
            files.push(named);
        }

        let layout = Layout::new(&util::unique("run-"));
        let mut run = Run {
            conn,
            layout,
            prepared: Vec::new(),
            problems: Vec::new(),
        };
        for h in &s.hosts {
            run.prepared.push(h.clone());
            let out = run.setup(h, &prepare_script(&run.layout, h))?;
            if out.contains("undoing an earlier run") {
                notes.push(format!("{h}: undid an earlier run that did not finish"));
            }
        }
        let t_upload = Instant::now();
        if !files.is_empty() {
            for h in &s.hosts {
                conn.upload(h, &files, &run.layout.bin(), UPLOAD_TIMEOUT)?;
            }
            notes.push(format!(
                "payload: {:.1} MB to each of {} VMs in {:.1} s",
                bytes as f64 / 1e6,
                s.hosts.len(),
                t_upload.elapsed().as_secs_f64()
            ));
        }
        for h in &s.hosts {
            let out = run.setup(h, &network_script(&run.layout, h, &nics[h]))?;
            let map: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("o7s-vm-test: NIC "))
                .collect();
            if !map.is_empty() {
                notes.push(format!("{h}: {}", map.join(", ")));
            }
            if let Some(note) = run.sync_clock(h)? {
                notes.push(note);
            }
        }
        notes.push(format!(
            "VMs ready for the steps in {:.1} s",
            start.elapsed().as_secs_f64()
        ));

        let mut verdict = Verdict::Pass;
        for i in 0..s.steps.len() {
            if util::interrupted() {
                verdict = Verdict::Fail(format!("interrupted before step {i}"));
                break;
            }
            if let Err(reason) = step(&run, s, i, verbose)? {
                let mut report = format!("step {i} on {}: {reason}", s.steps[i].host);
                for h in &s.hosts {
                    let script = diagnostics_script(h, &s.diagnostics);
                    match run.exec(
                        h,
                        &run.layout.remote(&script),
                        Duration::from_secs(60 + 25 * s.diagnostics.len() as u64),
                    ) {
                        Ok(r) if !r.out.trim().is_empty() => {
                            report += &format!(
                                "\n  {h}:\n    {}",
                                tail(&r.out, 80).replace('\n', "\n    ")
                            );
                        }
                        Ok(_) => {}
                        Err(e) => report += &format!("\n  {h}: no diagnostics: {e:#}"),
                    }
                }
                verdict = Verdict::Fail(report);
                break;
            }
        }
        let t_clean = Instant::now();
        run.clean_up();
        notes.push(format!(
            "clean-up: {:.1} s",
            t_clean.elapsed().as_secs_f64()
        ));
        let problems = std::mem::take(&mut run.problems);
        drop(run);
        self.notes.extend(notes);
        if !problems.is_empty() {
            let text = problems.join("; ");
            return Ok(match verdict {
                Verdict::Pass => Verdict::Fail(format!("the run passed but {text}")),
                Verdict::Fail(r) => Verdict::Fail(format!("{r}\n  also: {text}")),
                skip => skip,
            });
        }
        Ok(verdict)
    }
}

fn image_which(program: &str) -> Option<PathBuf> {
    crate::image::which(program)
}

/// Runs step `i`; `Ok(Err(reason))` when it fails.
fn step(run: &Run<'_>, s: &Scenario, i: usize, verbose: bool) -> Result<Result<(), String>> {
    let step = &s.steps[i];
    let host = step.host.as_str();
    let l = &run.layout;
    let show = |cmd: &str, out: &str| {
        if verbose {
            println!("[{host}] $ {cmd}\n{}", out.trim_end());
        }
    };
    let ssh_failed = |ran: &Ran, timeout: Duration| -> Option<String> {
        if ran.timed_out {
            Some(format!(
                "ssh to {host} did not return within {timeout:?}: {}",
                tail(&ran.out, 10)
            ))
        } else if ran.status == 255 {
            Some(format!("ssh to {host} failed: {}", tail(&ran.out, 10)))
        } else {
            None
        }
    };
    if let Some(cmd) = s.link_command(step) {
        let t = Duration::from_secs(10);
        let ran = run.exec(host, &l.remote(&run_script(&cmd, t)), t + SSH_MARGIN)?;
        show(&cmd, &ran.out);
        if let Some(e) = ssh_failed(&ran, t + SSH_MARGIN) {
            return Ok(Err(e));
        }
        return Ok(scenario::check(&[Expect::Success], ran.status, &ran.out)
            .map_err(|e| format!("`{cmd}`: {e}: {}", tail(&ran.out, 10))));
    }
    Ok(match &step.action {
        Action::Run {
            cmd,
            expect,
            timeout,
        } => {
            let local = *timeout + SSH_MARGIN;
            let ran = run.exec(host, &l.remote(&run_script(cmd, *timeout)), local)?;
            show(cmd, &ran.out);
            if let Some(e) = ssh_failed(&ran, local) {
                return Ok(Err(e));
            }
            let status = if ran.status == 124 {
                // `timeout` killed it: say so.
                return Ok(Err(format!(
                    "`{cmd}` did not finish within {timeout:?}: {}",
                    tail(&ran.out, 20)
                )));
            } else {
                ran.status
            };
            scenario::check(expect, status, &ran.out)
                .map_err(|e| format!("`{cmd}`: {e}; output:\n{}", tail(&ran.out, 20)))
        }
        Action::WaitFor { cmd, timeout } => {
            let local = *timeout + SSH_MARGIN;
            let ran = run.exec(host, &l.remote(&wait_script(cmd, *timeout)), local)?;
            show(cmd, &ran.out);
            if let Some(e) = ssh_failed(&ran, local) {
                return Ok(Err(e));
            }
            if ran.status == 0 {
                Ok(())
            } else {
                Err(format!(
                    "`{cmd}` did not succeed within {timeout:?}: {}",
                    tail(&ran.out, 10)
                ))
            }
        }
        Action::Spawn { name, cmd } => {
            let t = Duration::from_secs(10);
            let ran = run.exec(host, &l.remote(&spawn_script(name, cmd)), t + SSH_MARGIN)?;
            show(&format!("spawn {name}: {cmd}"), &ran.out);
            if let Some(e) = ssh_failed(&ran, t + SSH_MARGIN) {
                return Ok(Err(e));
            }
            if ran.status == 0 {
                Ok(())
            } else {
                Err(format!(
                    "could not start {name} (exit status {}): {}",
                    ran.status,
                    tail(&ran.out, 10)
                ))
            }
        }
        Action::Kill { name, signal } => {
            let script = match kill_script(name, signal) {
                Ok(script) => script,
                Err(e) => return Ok(Err(e)),
            };
            let t = Duration::from_secs(10);
            let ran = run.exec(host, &l.remote(&script), t + SSH_MARGIN)?;
            show(&format!("kill -{signal} {name}"), &ran.out);
            if let Some(e) = ssh_failed(&ran, t + SSH_MARGIN) {
                return Ok(Err(e));
            }
            if ran.status == 0 {
                Ok(())
            } else {
                Err(tail(&ran.out, 5))
            }
        }
        Action::LinkDown { .. }
        | Action::LinkUp { .. }
        | Action::Netem { .. }
        | Action::ClearNetem { .. } => unreachable!("link actions handled above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios;

    const SSH_CONFIG: &str = "Host a\n  HostName 192.168.121.45\n  User vagrant\n  Port 22\n  \
        UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n  \
        IdentityFile /root/.vagrant.d/insecure_private_key\n  IdentitiesOnly yes\n  \
        LogLevel FATAL\n  PubkeyAcceptedKeyTypes +ssh-rsa\n  HostKeyAlgorithms +ssh-rsa\n\n\
        Host b\n  HostName 192.168.121.77\n  User vagrant\n  Port 22\n  \
        IdentityFile \"/home/me/my dir/.vagrant/machines/b/libvirt/private_key\"\n";

    #[test]
    fn ssh_config_of_two_machines() {
        let hosts = parse_ssh_config(SSH_CONFIG).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, "a");
        assert_eq!(hosts[0].get("hostname"), Some("192.168.121.45"));
        assert_eq!(hosts[0].get("HostName"), Some("192.168.121.45"));
        assert_eq!(hosts[0].get("loglevel"), Some("FATAL"));
        assert_eq!(hosts[1].get("port"), Some("22"));
        assert_eq!(
            hosts[1].get("identityfile"),
            Some("/home/me/my dir/.vagrant/machines/b/libvirt/private_key")
        );
        assert_eq!(hosts[1].get("LogLevel"), None);
    }

    #[test]
    fn ssh_config_errors_and_forms() {
        assert_eq!(
            parse_ssh_config("HostName x\nHost a\n"),
            Err(SshConfigError::OptionOutsideHost {
                line: 1,
                key: "hostname".into()
            })
        );
        assert_eq!(
            parse_ssh_config("Host a\n  Port\n"),
            Err(SshConfigError::MissingValue {
                line: 2,
                key: "Port".into()
            })
        );
        assert_eq!(
            parse_ssh_config("Host a\n  IdentityFile \"/x y\n"),
            Err(SshConfigError::UnterminatedQuote { line: 2 })
        );
        let h = parse_ssh_config("# vagrant\nHost=a\n\tPort=2222\n  User  =  v\n").unwrap();
        assert_eq!(h[0].name, "a");
        assert_eq!(h[0].get("port"), Some("2222"));
        assert_eq!(h[0].get("user"), Some("v"));
        assert_eq!(parse_ssh_config("").unwrap(), vec![]);
        assert_eq!(
            parse_ssh_config("Host a\n=x\n"),
            Err(SshConfigError::MissingKey { line: 2 })
        );
        // What renders reads back, quotes and `=` included.
        let hosts = parse_ssh_config(SSH_CONFIG).unwrap();
        assert_eq!(parse_ssh_config(&render_ssh_config(&hosts)).unwrap(), hosts);
        let odd = vec![SshHost {
            name: "x y".into(),
            options: vec![("k".into(), "=v".into()), ("q".into(), "\"v\"".into())],
        }];
        assert_eq!(parse_ssh_config(&render_ssh_config(&odd)).unwrap(), odd);
    }

    /// The fuzz seeds (real output of Vagrant 2.3.4 + vagrant-libvirt) pass the oracles and
    /// parse to what they say.
    #[test]
    fn fuzz_seeds() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let read = |p: &str| std::fs::read(seeds.join(p)).unwrap();
        let config = read("ssh_config/libvirt-two-machines.txt");
        fuzzing::ssh_config(&config);
        let hosts = parse_ssh_config(std::str::from_utf8(&config).unwrap()).unwrap();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(hosts.iter().all(|h| h.get("HostName").is_some()));
        let status = read("vagrant_status/libvirt-two-running.txt");
        fuzzing::status(&status);
        let states = parse_status(&String::from_utf8_lossy(&status));
        assert_eq!(states.get("a").map(String::as_str), Some("running"));
        assert_eq!(states.get("b").map(String::as_str), Some("running"));
    }

    proptest::proptest! {
        #[test]
        fn ssh_config_parser_never_panics_and_round_trips(text in "(?s).{0,400}") {
            fuzzing::ssh_config(text.as_bytes());
        }

        #[test]
        fn ssh_config_lines_parse(
            lines in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9]{0,12}", "[ \t=]{1,3}", "[ -~]{0,20}"),
                0..12,
            )
        ) {
            let text: String = std::iter::once("Host a\n".to_string())
                .chain(lines.iter().map(|(k, sep, v)| format!("{k}{sep}{v}\n")))
                .collect();
            fuzzing::ssh_config(text.as_bytes());
        }

        #[test]
        fn status_parser_never_panics_and_round_trips(text in "(?s).{0,400}") {
            fuzzing::status(text.as_bytes());
        }

        #[test]
        fn status_lines_are_found(
            machines in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,6}", "[ -~]{0,30}", 0..5)
        ) {
            let text: String = machines
                .iter()
                .map(|(m, s)| format!("1700000000,{m},state,{}\n", s.replace(',', "%!(VAGRANT_COMMA)")))
                .collect();
            let states = parse_status(&text);
            let want: BTreeMap<String, String> = machines
                .into_iter()
                .map(|(m, s)| (m, s.replace("%!(VAGRANT_COMMA)", ",")))
                .collect();
            proptest::prop_assert_eq!(states, want);
        }

        #[test]
        fn topology_mapping_is_consistent(
            hosts in proptest::sample::subsequence(vec!["a", "b", "c", "d"], 0..=4),
            links in proptest::collection::vec(
                proptest::collection::vec(0usize..4, 1..4),
                0..4,
            )
        ) {
            let mut s = Scenario::new("p");
            for h in &hosts {
                s = s.host(h);
            }
            if hosts.is_empty() {
                return Ok(());
            }
            for (i, ends) in links.iter().enumerate() {
                let ends: Vec<(&str, String)> = ends
                    .iter()
                    .enumerate()
                    .map(|(j, h)| (hosts[h % hosts.len()], format!("10.9.{i}.{j}/24")))
                    .collect();
                let refs: Vec<(&str, &str)> = ends.iter().map(|(h, a)| (*h, a.as_str())).collect();
                s = s.link(&format!("l{i}"), &refs);
            }
            if let Ok(m) = map_topology(&s) {
                let mut used = Vec::new();
                for h in &s.hosts {
                    let nics = &m[h];
                    proptest::prop_assert_eq!(nics.len(), s.links_of(h).count());
                    for (i, n) in nics.iter().enumerate() {
                        proptest::prop_assert_eq!(&n.dev, &format!("eth{i}"));
                        proptest::prop_assert_eq!(Some(n.dev.clone()), s.ifname(h, &s.links_of(h).nth(i).unwrap().1.name));
                        let v = VAGRANT_LINKS.iter().find(|v| v.name == n.vagrant_link).unwrap();
                        proptest::prop_assert!(v.ends.contains(&(h.as_str(), n.vagrant_addr)));
                        used.push((h.clone(), n.vagrant_link));
                    }
                }
                used.sort();
                let before = used.len();
                used.dedup();
                proptest::prop_assert_eq!(before, used.len());
            }
        }
    }

    #[test]
    fn status_lines() {
        let text = "1700000000,a,metadata,provider,libvirt\n\
                    1700000000,b,metadata,provider,libvirt\n\
                    1700000001,,ui,info,Current machine states:\n\
                    1700000001,a,provider-name,libvirt\n\
                    1700000001,a,state,running\n\
                    1700000001,a,state-human-short,running\n\
                    1700000001,b,state,shutoff\r\n\
                    1700000001,c,state,not_created\n\
                    1700000001,,ui,info,a%!(VAGRANT_COMMA) b\n\
                    garbage\n";
        let s = parse_status(text);
        assert_eq!(s.get("a").map(String::as_str), Some("running"));
        assert_eq!(s.get("b").map(String::as_str), Some("shutoff"));
        assert_eq!(s.get("c").map(String::as_str), Some("not_created"));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn topology_maps_to_the_vagrantfile_links() {
        let s = scenarios::by_name("three-host-line").unwrap();
        let m = map_topology(&s).unwrap();
        assert_eq!(m["a"].len(), 1);
        assert_eq!(m["a"][0].dev, "eth0");
        assert_eq!(m["a"][0].vagrant_addr, "10.77.1.11/24");
        assert_eq!(m["a"][0].addr, "10.77.0.1/24");
        let b: Vec<(&str, &str, &str)> = m["b"]
            .iter()
            .map(|n| (n.dev.as_str(), n.vagrant_link, n.vagrant_addr))
            .collect();
        assert_eq!(
            b,
            [
                ("eth0", "ab", "10.77.1.12/24"),
                ("eth1", "bc", "10.77.2.12/24")
            ]
        );
        assert_eq!(m["c"][0].vagrant_addr, "10.77.2.13/24");
        assert_eq!(m["c"][0].addr, "10.77.1.2/24");

        // A link listed b-first still finds ab; the order of a host's NICs is the scenario's.
        let s = Scenario::new("t")
            .host("b")
            .host("a")
            .host("c")
            .link("x", &[("c", "10.0.1.3/24"), ("b", "10.0.1.2/24")])
            .link("y", &[("b", "10.0.0.2/24"), ("a", "10.0.0.1/24")]);
        let m = map_topology(&s).unwrap();
        assert_eq!(m["b"][0].vagrant_link, "bc");
        assert_eq!(m["b"][1].vagrant_link, "ab");
        assert_eq!(m["b"][1].dev, "eth1");
    }

    #[test]
    fn topologies_that_do_not_fit() {
        let lan = scenarios::by_name("three-host-lan").unwrap();
        let why = map_topology(&lan).unwrap_err();
        assert!(why.contains("lan has 3 ends"), "{why}");
        let ac = Scenario::new("t")
            .host("a")
            .host("c")
            .link("ac", &[("a", "10.0.0.1/24"), ("c", "10.0.0.3/24")]);
        assert!(map_topology(&ac).unwrap_err().contains("joins a and c"));
        let d = Scenario::new("t").host("a").host("d");
        assert!(map_topology(&d).unwrap_err().contains("host d"));
        let twice = Scenario::new("t")
            .host("a")
            .host("b")
            .link("one", &[("a", "10.0.0.1/24"), ("b", "10.0.0.2/24")])
            .link("two", &[("a", "10.0.1.1/24"), ("b", "10.0.1.2/24")]);
        assert!(map_topology(&twice).unwrap_err().contains("both need"));
    }

    #[test]
    fn machine_ids_come_from_the_dot_directory() {
        let dir = scratch();
        let put = |host: &str, provider: &str, id: &str| {
            let d = dir.0.join("machines").join(host).join(provider);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("index_uuid"), id).unwrap();
        };
        put("a", "libvirt", "bce058ba953b401d9686ef3fc376c99e\n");
        put("b", "libvirt", "not-an-id");
        put("c", "virtualbox", "0a1cd943fdd44395b286298ed7700c23");
        put("d", "libvirt", "0a1cd943fdd44395b286298ed7700c24");
        std::fs::create_dir_all(dir.0.join("machines/b/other")).unwrap();
        let ids = machine_ids(&dir.0);
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids["a"], "bce058ba953b401d9686ef3fc376c99e");
        assert_eq!(ids["c"], "0a1cd943fdd44395b286298ed7700c23");
        assert!(machine_ids(&dir.0.join("nowhere")).is_empty());
    }

    /// [`VAGRANT_LINKS`] is what the Vagrantfile says.
    #[test]
    fn links_agree_with_the_vagrantfile() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Vagrantfile");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("netmask: \"255.255.255.0\""));
        for link in VAGRANT_LINKS {
            let [(h1, a1), (h2, a2)] = link.ends;
            let (net1, o1) = a1.strip_suffix("/24").unwrap().rsplit_once('.').unwrap();
            let (net2, o2) = a2.strip_suffix("/24").unwrap().rsplit_once('.').unwrap();
            assert_eq!(net1, net2);
            let ruby = format!(
                "[\"{}\", \"{net1}\", [[\"{h1}\", {o1}], [\"{h2}\", {o2}]]]",
                link.name
            );
            assert!(text.contains(&ruby), "the Vagrantfile lacks {ruby}");
        }
        assert!(text.contains("%w[a b c]"));
    }

    /// Runs `script` with `sh -c` the way the `in` wrapper does, with `$O7S_LOG` set.
    fn sh(script: &str, log: &Path, timeout: Duration) -> Ran {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).env("O7S_LOG", log);
        run_for(c, timeout, false, true).unwrap()
    }

    fn scratch() -> TempDir {
        TempDir::new("o7svt-unit-").unwrap()
    }

    #[test]
    fn remote_command_lines_unquote_to_the_script() {
        // What ssh hands the login shell: `sudo -n <in> '<script>'`. A stand-in `sudo` and
        // `in` show the script arrives intact, quotes, `$` and newlines included.
        let dir = scratch();
        let l = Layout {
            base: dir.0.display().to_string(),
            run: "run-x".into(),
            netns: "unused".into(),
            home: "1".into(),
        };
        std::fs::create_dir_all(l.dir()).unwrap();
        std::fs::write(l.in_path(), "#!/bin/sh\nexec sh -c \"$1\"\n").unwrap();
        let script = "x='it'\\''s'; echo \"$x $((1 + 1))\"\necho 'second line'";
        let line = l.remote(script);
        assert!(line.starts_with(&format!("sudo -n {} '", l.in_path())));
        let ran = sh(
            &format!("sudo() {{ shift; sh \"$@\"; }}; {line}"),
            &dir.0,
            Duration::from_secs(10),
        );
        assert_eq!(ran.status, 0, "{}", ran.out);
        assert_eq!(ran.out, "it's 2\nsecond line\n");
        let root = Layout::remote_root("echo \"a'b\"");
        assert_eq!(root, r#"sudo -n sh -c 'echo "a'\''b"'"#);
    }

    #[test]
    fn in_wrapper_sets_the_scenario_environment() {
        let l = Layout::new("run-7");
        let w = in_script(&l, "b");
        for want in [
            "IP=ip TC=tc O7S_HOST=b",
            "O7S_BIN=/var/tmp/o7svt/run-7/bin",
            "O7S_LOG=/var/tmp/o7svt/run-7/log",
            "O7S_RUNDIR=/var/tmp/o7svt/run-7/run",
            "PATH=\"$O7S_BIN:",
            "exec ip netns exec o7svt sh -c \"$1\"",
        ] {
            assert!(w.contains(want), "{want} missing from\n{w}");
        }
        let p = prepare_script(&l, "b");
        assert!(p.contains(&restore_script(&l)));
        assert!(p.contains(&w));
        // The restore script is written before anything is moved, and sweeps the namespace.
        assert!(restore_script(&l).contains("ip netns pids \"$ns\""));
        let r = restore_script(&l);
        // Never moved back under its namespace name (`eth0` would look like the management NIC).
        let rename = r.find("link set dev \"$nsdev\" name \"$tmp\"").unwrap();
        assert!(
            rename
                < r.find("link set dev \"$tmp\" netns 1 name \"$dev\"")
                    .unwrap()
        );
    }

    #[test]
    fn network_script_moves_nics_by_vagrantfile_address() {
        let s = scenarios::by_name("three-host-line").unwrap();
        let m = map_topology(&s).unwrap();
        let n = network_script(&Layout::new("run-1"), "b", &m["b"]);
        assert!(n.contains("nic eth0 10.77.1.12/24 10.77.0.2/24 "));
        assert!(n.contains("nic eth1 10.77.2.12/24 10.77.1.1/24 "));
        assert!(n.contains("ip link set dev \"$dev\" netns o7svt name \"$1\""));
        // Recorded for restore.sh before the move.
        let record = n.find(">>/var/tmp/o7svt/nics").unwrap();
        assert!(record < n.find("netns o7svt name").unwrap());
    }

    #[test]
    fn clock_step_adds_the_offset_to_the_vm_clock() {
        // A stand-in `date`: `+%s.%N` prints a fixed time, `-s @T` prints T.
        let dir = scratch();
        let fake = "date() { if [ \"$1\" = -s ]; then echo \"set ${2#@}\"; \
                    else echo 1700000000.250000000; fi; }\n";
        for (offset, want) in [
            (-0.5, "set 1699999999.750000"),
            (1.125, "set 1700000001.375000"),
        ] {
            let script = clock_step_script(offset).replace(" >/dev/null", "");
            let ran = sh(&format!("{fake}{script}"), &dir.0, Duration::from_secs(10));
            assert_eq!(ran.out.trim(), want, "{script}");
        }
    }

    #[test]
    fn run_script_times_out_and_keeps_status_and_quotes() {
        let dir = scratch();
        let t = Duration::from_secs(10);
        let ran = sh(&run_script("echo \"it's\"; exit 3", t), &dir.0, t);
        assert_eq!((ran.status, ran.out.as_str()), (3, "it's\n"));
        let start = Instant::now();
        let ran = sh(
            &run_script("sleep 30", Duration::from_secs(1)),
            &dir.0,
            Duration::from_secs(20),
        );
        assert_eq!(ran.status, 124);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn wait_script_retries_until_success_or_timeout() {
        let dir = scratch();
        let flag = dir.0.join("flag");
        // Succeeds once the file appears (after about 0.6 s).
        let f = flag.display().to_string();
        let waiter = std::thread::spawn({
            let f = flag.clone();
            move || {
                std::thread::sleep(Duration::from_millis(600));
                std::fs::write(f, "").unwrap();
            }
        });
        let ran = sh(
            &wait_script(&format!("test -e {f}"), Duration::from_secs(20)),
            &dir.0,
            Duration::from_secs(30),
        );
        waiter.join().unwrap();
        assert_eq!(ran.status, 0, "{}", ran.out);
        let start = Instant::now();
        let ran = sh(
            &wait_script("echo not yet; false", Duration::from_secs(1)),
            &dir.0,
            Duration::from_secs(30),
        );
        assert_eq!(ran.status, 1);
        assert_eq!(ran.out, "not yet\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn spawned_process_logs_and_is_killed() {
        let dir = scratch();
        let t = Duration::from_secs(10);
        let ran = sh(
            &spawn_script("sleeper", "echo started; exec sleep 600"),
            &dir.0,
            t,
        );
        assert_eq!(ran.status, 0, "{}", ran.out);
        let pid: i32 = std::fs::read_to_string(dir.0.join("sleeper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
        };
        // It leads a session (and so a process group) of its own by the time the step returns,
        // so the step's own group being killed (run_for does that) cannot take it along.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        assert_eq!(fields[3], pid.to_string(), "session id");
        let start = Instant::now();
        while !std::fs::read_to_string(dir.0.join("sleeper.log"))
            .unwrap_or_default()
            .contains("started")
        {
            assert!(start.elapsed() < t, "no log line");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(alive(pid));
        let ran = sh(&kill_script("sleeper", "SIGKILL").unwrap(), &dir.0, t);
        assert_eq!(ran.status, 0, "{}", ran.out);
        // A zombie until reaped by whoever adopted it; never running.
        assert!(!alive(pid));
        let ran = sh(&kill_script("nobody", "TERM").unwrap(), &dir.0, t);
        assert_eq!(ran.status, 3);
        assert!(ran.out.contains("no process nobody"));
        assert!(kill_script("x", "TERM; rm -rf /").is_err());
        assert!(kill_script("x", "SIG").is_err());
    }

    #[test]
    fn diagnostics_show_logs_and_commands() {
        let dir = scratch();
        std::fs::write(dir.0.join("irmd.log"), "line 1\nlast line\n").unwrap();
        let ran = sh(
            &diagnostics_script("a", &["echo \"from a diagnostic\"".into()]),
            &dir.0,
            Duration::from_secs(30),
        );
        assert!(
            ran.out
                .contains("--- a: tail of irmd.log\nline 1\nlast line\n")
        );
        assert!(
            ran.out
                .contains("--- a: echo \"from a diagnostic\"\nfrom a diagnostic\n")
        );
    }
}
