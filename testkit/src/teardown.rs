//! Checks that a test's teardown left nothing behind: no process of its hosts, no network
//! namespace, no shared-memory object.

use std::path::Path;
use std::process::Command;

use crate::Irmd;
use crate::netns::VethPair;

/// Whether process `pid` still exists (has a `/proc/<pid>`).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The objects in /dev/shm whose names start with `prefix`.
pub fn shm_objects(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `ip netns list` names none of the namespaces `names`.
pub fn assert_no_netns(names: &[String]) {
    let netns = Command::new("ip").args(["netns", "list"]).output();
    let netns = String::from_utf8_lossy(&netns.expect("ip netns list").stdout).into_owned();
    for ns in names {
        assert!(!netns.contains(ns.as_str()), "namespace {ns} left behind");
    }
}

/// The processes and shared memory of some hosts, noted while they run, to check once they
/// are dropped that none of it is left.
#[must_use = "check it once the hosts are dropped"]
pub struct Leftovers {
    pub pids: Vec<u32>,
    pub shm_prefixes: Vec<String>,
}

impl Leftovers {
    /// Notes, for each IRMd, the pids of the IPCPs it lists and its own, and the prefix of its
    /// shared-memory names.
    pub fn of<'a>(hosts: impl IntoIterator<Item = &'a Irmd>) -> Self {
        let mut leftovers = Self {
            pids: Vec::new(),
            shm_prefixes: Vec::new(),
        };
        for host in hosts {
            leftovers.pids.extend(host.ipcps().iter().map(|i| i.pid));
            leftovers.pids.push(host.pid());
            leftovers.shm_prefixes.push(host.shm_prefix());
        }
        leftovers
    }

    /// Notes more processes that must be gone with the hosts (e.g. programs an IRMd started).
    pub fn and_pids(mut self, pids: impl IntoIterator<Item = u32>) -> Self {
        self.pids.extend(pids);
        self
    }

    /// Asserts that no noted process exists any more.
    pub fn assert_no_process(&self) {
        for pid in &self.pids {
            assert!(!alive(*pid), "process {pid} survived the teardown");
        }
    }

    /// Asserts that /dev/shm holds nothing under a noted prefix.
    pub fn assert_no_shm(&self) {
        for prefix in &self.shm_prefixes {
            if let Some(name) = shm_objects(prefix).first() {
                panic!("shared memory {name} left behind");
            }
        }
    }

    /// Deletes `pair`'s namespaces (drops it; the hosts in them must be dropped already), then
    /// asserts that none of it is left: no noted process, neither namespace, no shared memory.
    pub fn assert_none_left(&self, pair: VethPair) {
        let netns = pair.ns.clone();
        drop(pair);
        self.assert_no_process();
        assert_no_netns(&netns);
        self.assert_no_shm();
    }
}
