//! Two fresh network namespaces joined by a veth pair, threads entered into a namespace, and
//! a capture of the eth-dix frames on a namespace's links.
//!
//! All traffic the tests make stays on the veth pair between the namespaces created here.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use o7s_proto::dix;

/// Whether a test needing root (for `why`, e.g. "network namespaces, raw sockets") and
/// iproute2's `ip` can run here; when not, prints one line saying why `test` is skipped.
pub fn can_run(test: &str, why: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root ({why})");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping {test}: iproute2 `ip` not found");
        return false;
    }
    true
}

/// Runs `args`, panicking with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two fresh network namespaces `<ns_tag>-<pid>-<n>{a,b}` joined by a veth pair
/// `<veth_tag><pid><n>{a,b}` (end `i` in namespace `i`), both ends up, IPv6 off (so the kernel
/// sends nothing by itself). Dropping it deletes both namespaces, which also destroys the pair.
pub struct VethPair {
    pub ns: [String; 2],
    pub veth: [String; 2],
    created: Vec<String>,
}

impl VethPair {
    /// Creates the pair with the given MTU on both ends.
    pub fn new(ns_tag: &str, veth_tag: &str, mtu: u32) -> Self {
        Self::with_queues(ns_tag, veth_tag, mtu, 1)
    }

    /// Like [`VethPair::new`], each end with `queues` RX and TX queues.
    pub fn with_queues(ns_tag: &str, veth_tag: &str, mtu: u32, queues: u32) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut pair = Self {
            ns: ["a", "b"].map(|side| format!("{ns_tag}-{pid}-{n}{side}")),
            // At most 15 bytes: the tag + pid (≤ 7 digits) + n + side.
            veth: ["a", "b"].map(|side| format!("{veth_tag}{pid}{n}{side}")),
            created: Vec::new(),
        };
        assert!(pair.veth[0].len() <= 15, "interface name too long");
        for ns in pair.ns.clone() {
            run(&["ip", "netns", "add", &ns]);
            pair.created.push(ns.clone());
            in_netns(&ns, || {
                for knob in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                    // Kernels without IPv6 have no such file: nothing to silence then.
                    let _ = std::fs::write(path, "1");
                }
            });
        }
        let ([na, nb], [va, vb]) = (&pair.ns, &pair.veth);
        let q = queues.to_string();
        let queues = ["numrxqueues", &q, "numtxqueues", &q];
        let link = ["ip", "link", "add", va, "netns", na];
        let peer = ["type", "veth", "peer", "name", vb, "netns", nb];
        run(&[&link[..], &queues, &peer, &queues].concat());
        let mtu = mtu.to_string();
        for (ns, veth) in pair.ns.iter().zip(&pair.veth) {
            run(&["ip", "-n", ns, "link", "set", veth, "mtu", &mtu, "up"]);
        }
        pair
    }

    /// Gives end `i` the IPv4 address `addrs[i]` (/24).
    pub fn with_addresses(self, addrs: [&str; 2]) -> Self {
        for ((ns, veth), addr) in self.ns.iter().zip(&self.veth).zip(addrs) {
            let addr = format!("{addr}/24");
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", veth]);
        }
        self
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            match Command::new("ip").args(["netns", "del", &ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns` (other threads keep theirs) and waits for it.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_netns(ns, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts `f` on a new thread inside namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({path}): {e}"));
        f()
    })
}

/// An eth-dix frame a [`Capture`] saw, with when it read it (since the capture started).
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// Every eth-dix frame (EtherType 0xA000, [`dix::DEFAULT_ETHERTYPE`]) on a namespace's links,
/// both ways, read by a raw socket on a thread inside the namespace until dropped.
pub struct Capture {
    frames: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing in namespace `ns`; returns once the socket is open.
    pub fn start(ns: &str) -> Self {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (frames, stop) = (frames.clone(), stop.clone());
            spawn_in_netns(ns, move || {
                let fd = socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
                .expect("raw socket");
                setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))
                    .expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = vec![0u8; 65536];
                let start = Instant::now();
                while !stop.load(Ordering::Acquire) {
                    let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                        continue;
                    };
                    let at = start.elapsed();
                    if n >= dix::HEADER_LEN && buf[12..14] == dix::DEFAULT_ETHERTYPE.to_be_bytes() {
                        frames.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                            at,
                            bytes: buf[..n].to_vec(),
                        });
                    }
                }
            })
        };
        ready_rx.recv().expect("capture started");
        Self {
            frames,
            stop,
            thread: Some(thread),
        }
    }

    /// The frames seen so far, in order.
    pub fn frames(&self) -> Vec<Seen> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many frames were seen so far.
    pub fn mark(&self) -> usize {
        self.frames.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
