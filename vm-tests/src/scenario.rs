//! The scenario model every backend runs: hosts, links between them, and an ordered list of steps.
//!
//! Steps run in order across the whole scenario (a step on host B starts only after the previous
//! step, wherever it ran, has finished). Each step names the host it runs on. Commands are POSIX
//! shell run on that host with these variables set, so one scenario works on every backend:
//!
//! * `$IP`, `$TC`: iproute2's `ip` and `tc` (in QEMU guests busybox would otherwise run its own
//!   `ip` applet instead of iproute2's);
//! * `$O7S_BIN`: the directory holding the scenario's payload files (also on `PATH`);
//! * `$O7S_LOG`: a writable directory of the host's own; a spawned process `NAME` logs to
//!   `$O7S_LOG/NAME.log`;
//! * `$O7S_RUNDIR`: the host's own o7s run directory (IRMd socket, pool name), so hosts that
//!   share one machine (the netns backend) keep separate IRMds.
//!
//! A host's interfaces are named `eth0`, `eth1`, … in the order of the links it is on.

use std::path::PathBuf;
use std::time::Duration;

/// One link: an Ethernet segment joining two or more hosts, each with one address on it.
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub ends: Vec<LinkEnd>,
}

/// One host's attachment to a link.
#[derive(Clone, Debug)]
pub struct LinkEnd {
    pub host: String,
    /// An address with its prefix length, e.g. `10.77.0.1/24`.
    pub addr: String,
}

/// What a step checks about a command's result. Every assertion of a step must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exit status 0.
    Success,
    /// A non-zero exit status.
    Failure,
    /// The combined stdout and stderr contain this text.
    Contains(String),
    /// The combined stdout and stderr do not contain this text.
    Lacks(String),
    /// The output, trimmed, is an integer of at least this value (counters, statistics).
    AtLeast(u64),
}

/// What a step does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Run a shell command to completion (killed after `timeout`) and check its result.
    Run {
        cmd: String,
        expect: Vec<Expect>,
        timeout: Duration,
    },
    /// Run a shell command every 200 ms until it succeeds; fail after `timeout`.
    WaitFor { cmd: String, timeout: Duration },
    /// Start a shell command in the background under a name; its output goes to
    /// `$O7S_LOG/NAME.log`.
    Spawn { name: String, cmd: String },
    /// Send a signal (`TERM`, `KILL`, `INT`, …) to a process started by [`Action::Spawn`].
    Kill { name: String, signal: String },
    /// Take this host's interface on a link down.
    LinkDown { link: String },
    /// Bring this host's interface on a link back up.
    LinkUp { link: String },
    /// Replace the root qdisc of this host's interface on a link with `netem SPEC`
    /// (e.g. `delay 50ms loss 10%`).
    Netem { link: String, spec: String },
    /// Remove a netem qdisc set by [`Action::Netem`].
    ClearNetem { link: String },
}

/// One step: an action on one host.
#[derive(Clone, Debug)]
pub struct Step {
    pub host: String,
    pub action: Action,
}

/// A file every host gets under `$O7S_BIN` (a binary, an XDP object, a config file).
#[derive(Clone, Debug)]
pub struct Payload {
    pub name: String,
    pub src: PathBuf,
}

/// A kernel or tool feature a scenario needs; a backend that lacks it skips the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// The netem qdisc (`CONFIG_NET_SCH_NETEM`).
    Netem,
    /// AF_XDP zero-copy on the hosts' NICs: the qemu backend boots its 7.x guest kernel with
    /// `iommu_platform=on` virtio-net for these; veth has no zero-copy mode.
    ZeroCopyXdp,
}

/// A whole scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub hosts: Vec<String>,
    pub links: Vec<Link>,
    pub steps: Vec<Step>,
    pub payload: Vec<Payload>,
    /// Notes printed with the result (e.g. a part that was skipped and why).
    pub notes: Vec<String>,
    /// Set when the scenario could not be prepared (a payload failed to build): it fails
    /// with this reason on every backend.
    pub broken: Option<String>,
    pub requires: Vec<Requirement>,
    /// Commands every host runs when the scenario fails there, their output shown in the
    /// failure report (e.g. `irm ipcp stats`).
    pub diagnostics: Vec<String>,
}

/// How long a [`Action::Run`] may take unless the scenario says otherwise.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

impl Scenario {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            hosts: Vec::new(),
            links: Vec::new(),
            steps: Vec::new(),
            payload: Vec::new(),
            notes: Vec::new(),
            requires: Vec::new(),
            diagnostics: Vec::new(),
            broken: None,
        }
    }

    pub fn host(mut self, name: &str) -> Self {
        self.hosts.push(name.into());
        self
    }

    /// A link joining `(host, address/prefix)` pairs.
    pub fn link(mut self, name: &str, ends: &[(&str, &str)]) -> Self {
        self.links.push(Link {
            name: name.into(),
            ends: ends
                .iter()
                .map(|(host, addr)| LinkEnd {
                    host: (*host).into(),
                    addr: (*addr).into(),
                })
                .collect(),
        });
        self
    }

    pub fn payload(mut self, name: &str, src: PathBuf) -> Self {
        self.payload.push(Payload {
            name: name.into(),
            src,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// A command every host runs (and shows) when the scenario fails.
    pub fn diagnose(mut self, cmd: &str) -> Self {
        self.diagnostics.push(cmd.into());
        self
    }

    pub fn requires(mut self, r: Requirement) -> Self {
        self.requires.push(r);
        self
    }

    pub fn step(mut self, host: &str, action: Action) -> Self {
        self.steps.push(Step {
            host: host.into(),
            action,
        });
        self
    }

    /// Run `cmd` on `host`; it must succeed and its output must contain every `contains`.
    pub fn run(self, host: &str, cmd: &str, contains: &[&str]) -> Self {
        let mut expect = vec![Expect::Success];
        expect.extend(contains.iter().map(|c| Expect::Contains((*c).into())));
        self.run_expect(host, cmd, expect)
    }

    pub fn run_expect(self, host: &str, cmd: &str, expect: Vec<Expect>) -> Self {
        self.step(
            host,
            Action::Run {
                cmd: cmd.into(),
                expect,
                timeout: DEFAULT_RUN_TIMEOUT,
            },
        )
    }

    pub fn wait_for(self, host: &str, cmd: &str, timeout: Duration) -> Self {
        self.step(
            host,
            Action::WaitFor {
                cmd: cmd.into(),
                timeout,
            },
        )
    }

    /// The links `host` is on, in order; the i-th is its interface `eth{i}`.
    pub fn links_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = (usize, &'a Link)> + 'a {
        self.links
            .iter()
            .filter(move |l| l.ends.iter().any(|e| e.host == host))
            .enumerate()
    }

    /// `host`'s interface name on `link`.
    pub fn ifname(&self, host: &str, link: &str) -> Option<String> {
        self.links_of(host)
            .find(|(_, l)| l.name == link)
            .map(|(i, _)| format!("eth{i}"))
    }

    /// Checks that steps and links name declared hosts and links; returns a description of the
    /// first problem.
    pub fn validate(&self) -> Result<(), String> {
        for link in &self.links {
            if link.ends.len() < 2 {
                return Err(format!("link {} has fewer than two ends", link.name));
            }
            for end in &link.ends {
                if !self.hosts.contains(&end.host) {
                    return Err(format!(
                        "link {} names unknown host {}",
                        link.name, end.host
                    ));
                }
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if !self.hosts.contains(&step.host) {
                return Err(format!("step {i} names unknown host {}", step.host));
            }
            if let Some(link) = step.action.link()
                && self.ifname(&step.host, link).is_none()
            {
                return Err(format!(
                    "step {i}: host {} is not on link {link}",
                    step.host
                ));
            }
        }
        Ok(())
    }

    /// The shell command that performs a link action (`None` for other actions).
    pub fn link_command(&self, step: &Step) -> Option<String> {
        let dev = self.ifname(&step.host, step.action.link()?)?;
        Some(match &step.action {
            Action::LinkDown { .. } => format!("$IP link set dev {dev} down"),
            Action::LinkUp { .. } => format!("$IP link set dev {dev} up"),
            Action::Netem { spec, .. } => format!("$TC qdisc replace dev {dev} root netem {spec}"),
            Action::ClearNetem { .. } => format!("$TC qdisc del dev {dev} root"),
            _ => return None,
        })
    }
}

impl Action {
    /// The link a link action acts on.
    pub fn link(&self) -> Option<&str> {
        match self {
            Action::LinkDown { link }
            | Action::LinkUp { link }
            | Action::Netem { link, .. }
            | Action::ClearNetem { link } => Some(link),
            _ => None,
        }
    }
}

/// Checks a finished command against its assertions; `Err` says which one failed.
pub fn check(expect: &[Expect], status: i32, output: &str) -> Result<(), String> {
    for e in expect {
        let ok = match e {
            Expect::Success => status == 0,
            Expect::Failure => status != 0,
            Expect::Contains(s) => output.contains(s.as_str()),
            Expect::Lacks(s) => !output.contains(s.as_str()),
            Expect::AtLeast(n) => output.trim().parse::<u64>().is_ok_and(|v| v >= *n),
        };
        if !ok {
            return Err(format!("{e:?} does not hold (exit status {status})"));
        }
    }
    Ok(())
}

/// Quotes a string for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_quoting() {
        assert!(
            check(
                &[Expect::Success, Expect::Contains("0%".into())],
                0,
                "x 0% y"
            )
            .is_ok()
        );
        assert!(check(&[Expect::Failure], 0, "").is_err());
        assert!(check(&[Expect::AtLeast(5)], 0, " 7\n").is_ok());
        assert!(check(&[Expect::AtLeast(5)], 0, "4").is_err());
        assert!(check(&[Expect::Lacks("err".into())], 0, "error").is_err());
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn interface_names_follow_link_order() {
        let s = Scenario::new("t")
            .host("a")
            .host("b")
            .host("c")
            .link("ab", &[("a", "10.0.0.1/24"), ("b", "10.0.0.2/24")])
            .link("bc", &[("b", "10.0.1.1/24"), ("c", "10.0.1.2/24")]);
        assert_eq!(s.ifname("b", "ab").as_deref(), Some("eth0"));
        assert_eq!(s.ifname("b", "bc").as_deref(), Some("eth1"));
        assert_eq!(s.ifname("c", "bc").as_deref(), Some("eth0"));
        assert_eq!(s.ifname("a", "bc"), None);
        assert!(s.validate().is_ok());
        let bad = s.step("a", Action::LinkDown { link: "bc".into() });
        assert!(bad.validate().is_err());
    }
}
